"""Roles and the permissions each grants (issue 10): `viewer` reads,
`editor` also changes operations, `admin` also manages API keys and queues
(issue 12: viewers may read queues and the dead letters of their projects)."""

from __future__ import annotations

import enum

from longrun_core.access import Permission


class Role(enum.StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    @staticmethod
    def parse(text: str) -> Role:
        try:
            return Role(text.strip().lower())
        except ValueError:
            names = ", ".join(r.value for r in Role)
            raise ValueError(f"unknown role {text[:50]!r}; choose one of {names}") from None


_VIEWER = frozenset(
    {
        Permission.GET,
        Permission.LIST,
        Permission.WAIT,
        Permission.QUEUES_GET,
        Permission.QUEUES_LIST,
        Permission.DEAD_LETTERS_LIST,
    }
)
_EDITOR = _VIEWER | {Permission.CREATE, Permission.CANCEL, Permission.DELETE}
_ADMIN = _EDITOR | {
    Permission.KEYS_CREATE,
    Permission.KEYS_LIST,
    Permission.KEYS_DELETE,
    Permission.QUEUES_UPDATE,
}

PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.VIEWER: _VIEWER,
    Role.EDITOR: _EDITOR,
    Role.ADMIN: _ADMIN,
}


def grants(role: Role, permission: Permission) -> bool:
    return permission in PERMISSIONS[role]
