"""Authorization policy: who holds which role on which project.

A TOML file (read with the standard library's tomllib) names groups of
principals and binds members to roles on projects:

    [groups]
    ops = ["user:alice@example.com", "key:0123456789abcdef"]

    [[bindings]]
    project = "billing"            # or "*": every project
    role = "editor"                # viewer | editor | admin
    members = ["group:ops", "user:bob@example.com", "san:spiffe://example.test/worker"]

Members are principal ids: `user:<email>` (an OIDC token's verified email;
`serviceAccount:<email>` is accepted as a synonym, emails compare without
case), `key:<id>` (an API key), `san:<value>` (an mTLS client certificate),
or `group:<name>` in bindings. Unknown keys, roles or member kinds make the
file invalid. `PolicyFile.reload` (on SIGHUP) keeps the old policy when the
new file is invalid, and logs why.

Every API key also carries its own binding (its project and role), added by
`PolicyAccess` from the key verifier.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from longrun_core.access import ALL_PROJECTS, Permission, current_principal, denied
from longrun_core.auth.roles import PERMISSIONS, Role

log = logging.getLogger("longrun.auth")

WILDCARD = "*"
_MEMBER_KINDS = ("user:", "serviceAccount:", "key:", "san:")


class PolicyError(ValueError):
    """The policy file cannot be used (the message says where and why)."""


def normalize_member(member: str) -> str:
    """The principal id a policy member names (`serviceAccount:` -> `user:`,
    emails lowercased)."""
    if member.startswith("serviceAccount:"):
        member = "user:" + member.removeprefix("serviceAccount:")
    if member.startswith("user:"):
        return member.lower()
    return member


def principal_for_email(email: str) -> str:
    return "user:" + email.lower()


@dataclass(frozen=True)
class Binding:
    project: str
    role: Role
    members: frozenset[str]


@dataclass(frozen=True)
class Policy:
    groups: Mapping[str, frozenset[str]] = field(default_factory=dict)
    bindings: tuple[Binding, ...] = ()
    #: principal id -> [(project or "*", role)], groups expanded.
    _index: Mapping[str, tuple[tuple[str, Role], ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @staticmethod
    def build(groups: Mapping[str, frozenset[str]], bindings: tuple[Binding, ...]) -> Policy:
        index: dict[str, list[tuple[str, Role]]] = {}
        for binding in bindings:
            for member in binding.members:
                principals = groups[member[6:]] if member.startswith("group:") else {member}
                for principal in principals:
                    index.setdefault(principal, []).append((binding.project, binding.role))
        return Policy(groups, bindings, {k: tuple(v) for k, v in index.items()})

    def roles_of(self, principal_id: str) -> tuple[tuple[str, Role], ...]:
        return self._index.get(principal_id, ())

    @staticmethod
    def parse(text: str, source: str = "the policy") -> Policy:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source} is not valid TOML: {exc}") from exc
        unknown = set(doc) - {"groups", "bindings"}
        if unknown:
            raise PolicyError(f"{source}: unknown top-level keys {sorted(unknown)}")
        groups = _groups(doc.get("groups", {}), source)
        raw_bindings = doc.get("bindings", [])
        if not isinstance(raw_bindings, list):
            raise PolicyError(f"{source}: `bindings` must be an array of tables ([[bindings]])")
        bindings = tuple(_binding(b, i, groups, source) for i, b in enumerate(raw_bindings))
        return Policy.build(groups, bindings)


def _member(value: object, where: str, *, group_ok: bool) -> str:
    if not isinstance(value, str) or not value:
        raise PolicyError(f"{where}: members must be non-empty strings, got {value!r}")
    kinds = (*_MEMBER_KINDS, "group:") if group_ok else _MEMBER_KINDS
    if not value.startswith(kinds) or value.endswith(":"):
        raise PolicyError(
            f"{where}: member {value[:100]!r} must start with one of {', '.join(kinds)}"
        )
    return normalize_member(value)


def _groups(raw: object, source: str) -> dict[str, frozenset[str]]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: `groups` must be a table of name = [members]")
    groups: dict[str, frozenset[str]] = {}
    for name, members in raw.items():
        where = f"{source}: group {name!r}"
        if not isinstance(members, list):
            raise PolicyError(f"{where} must be an array of members")
        groups[name] = frozenset(_member(m, where, group_ok=False) for m in members)
    return groups


def _binding(raw: object, i: int, groups: Mapping[str, frozenset[str]], source: str) -> Binding:
    where = f"{source}: bindings[{i}]"
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be a table")
    unknown = set(raw) - {"project", "role", "members"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    project, role, members = raw.get("project"), raw.get("role"), raw.get("members")
    if not isinstance(project, str) or not project or "/" in project:
        raise PolicyError(f'{where}: `project` must be a project id or "*"')
    if not isinstance(role, str):
        raise PolicyError(f"{where}: `role` must be one of viewer, editor, admin")
    try:
        parsed_role = Role.parse(role)
    except ValueError as exc:
        raise PolicyError(f"{where}: {exc}") from exc
    if not isinstance(members, list) or not members:
        raise PolicyError(f"{where}: `members` must be a non-empty array")
    normalized = frozenset(_member(m, where, group_ok=True) for m in members)
    for member in normalized:
        if member.startswith("group:") and member[6:] not in groups:
            raise PolicyError(f"{where}: {member!r} is not defined under [groups]")
    return Binding(project, parsed_role, normalized)


def load_policy(path: Path) -> Policy:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file {path}: {exc}") from exc
    return Policy.parse(text, str(path))


class PolicyFile:
    """The policy read from `path`; `reload` reads it again (on SIGHUP)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.policy = load_policy(path)  # invalid at start: the caller reports it
        #: Reloads that succeeded / failed (observability, tests).
        self.reloads = 0
        self.failed_reloads = 0

    def reload(self) -> bool:
        """Read the file again; on any problem keep the current policy, log
        why and return False."""
        try:
            policy = load_policy(self.path)
        except PolicyError as exc:
            self.failed_reloads += 1
            log.error("policy not reloaded, keeping the previous one: %s", exc)
            return False
        self.policy = policy
        self.reloads += 1
        log.info(
            "policy reloaded from %s: %d groups, %d bindings",
            self.path,
            len(policy.groups),
            len(policy.bindings),
        )
        return True

    def reload_on_sighup(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGHUP, self.reload)


KeyGrant = Callable[[str], "tuple[str, Role] | None"]


class PolicyAccess:
    """`Access` by roles: the policy's bindings for the principal (and its
    groups), plus an API key's own binding. AIP-211: a denial reads the same
    whether or not the resource exists."""

    def __init__(
        self,
        policy: Callable[[], Policy] | None = None,
        *,
        key_grant: KeyGrant | None = None,
    ) -> None:
        self._policy = policy or Policy
        self._key_grant = key_grant

    def _roles(self) -> list[tuple[str, Role]]:
        principal = current_principal()
        roles = list(self._policy().roles_of(principal.id))
        if self._key_grant is not None and principal.id.startswith("key:"):
            grant = self._key_grant(principal.id[4:])
            if grant is not None:
                roles.append(grant)
        return roles

    def require(self, permission: Permission, project: str) -> None:
        for bound, role in self._roles():
            if bound in (WILDCARD, project) and permission in PERMISSIONS[role]:
                return
        raise denied(permission, f"projects/{project}")

    def visible_projects(self, permission: Permission) -> frozenset[str] | None:
        projects: set[str] = set()
        for bound, role in self._roles():
            if permission not in PERMISSIONS[role]:
                continue
            if bound == WILDCARD:
                return ALL_PROJECTS
            projects.add(bound)
        return frozenset(projects)
