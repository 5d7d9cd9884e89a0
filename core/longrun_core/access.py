"""The authorization seam: who is calling (a `Principal`), what they may do
(`Permission`), and the one check every way in goes through (`Access`).

Authentication (OIDC ID tokens, API keys, mTLS) turns a call's credentials
into a Principal once, at the edge (the gRPC interceptor; the HTTP gateway
forwards its credentials over its loopback gRPC call), and binds it to the
handler's context with `acting_as`. Handlers then ask `access.require(
permission, project)` for the project the resource lives in, or
`access.visible_projects(permission)` to bound a list. `AllowAll` is the
policy of a deployment without authentication (`make run` on localhost).
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from longrun_core.errors import PermissionDenied


@dataclass(frozen=True)
class Principal:
    """A verified caller. `id` is what policies bind: `user:alice@example.com`
    (an OIDC email), `key:<key id>` (an API key), `san:<subject alt name>`
    (an mTLS client certificate), or `anonymous`."""

    id: str

    @property
    def anonymous(self) -> bool:
        return self.id == ANONYMOUS.id


ANONYMOUS = Principal("anonymous")


class Permission(enum.StrEnum):
    GET = "longrun.operations.get"
    LIST = "longrun.operations.list"
    WAIT = "longrun.operations.wait"
    CANCEL = "longrun.operations.cancel"
    DELETE = "longrun.operations.delete"
    CREATE = "longrun.jobs.create"
    KEYS_CREATE = "longrun.apiKeys.create"
    KEYS_LIST = "longrun.apiKeys.list"
    KEYS_DELETE = "longrun.apiKeys.delete"
    QUEUES_GET = "longrun.queues.get"
    QUEUES_LIST = "longrun.queues.list"
    #: Every change of a queue: create, update, delete, pause, resume, purge.
    QUEUES_UPDATE = "longrun.queues.update"
    #: ListDeadLetters: the task queue's dead letters of the project's operations.
    DEAD_LETTERS_LIST = "longrun.deadLetters.list"


#: The principal of the call being served (set by the edge for the handler's run).
_current: ContextVar[Principal] = ContextVar("longrun_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    return _current.get()


@contextlib.contextmanager
def acting_as(principal: Principal) -> Iterator[None]:
    token = _current.set(principal)
    try:
        yield
    finally:
        _current.reset(token)


#: `visible_projects` answer meaning "every project".
ALL_PROJECTS: frozenset[str] | None = None


class Access(Protocol):
    def require(self, permission: Permission, project: str) -> None:
        """Return if the current principal holds `permission` on `project`;
        raise PermissionDenied (ErrorInfo IAM_PERMISSION_DENIED naming the
        permission and resource) otherwise, whether or not it exists."""
        ...

    def visible_projects(self, permission: Permission) -> frozenset[str] | None:
        """The projects on which the current principal holds `permission`
        (None: all of them)."""
        ...


class AllowAll:
    """No authentication configured: every caller may do everything."""

    def require(self, permission: Permission, project: str) -> None:
        return None

    def visible_projects(self, permission: Permission) -> frozenset[str] | None:
        return ALL_PROJECTS


def denied(permission: Permission, resource: str) -> PermissionDenied:
    """The AIP-211 error: the same words whether or not `resource` exists."""
    return PermissionDenied(
        f"permission {permission.value!r} denied on resource {resource!r} (or it may not exist)",
        metadata={"permission": permission.value, "resource": resource},
    )
