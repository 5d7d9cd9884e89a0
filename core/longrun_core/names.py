"""Resource names: operations live under a project,
`projects/{project}/operations/{id}` (the Google resource style).

Every name the server returns is that full form. The legacy top-level form
`operations/{id}` is still accepted as input everywhere: ids are globally
unique (uuids), so it resolves by id alone. `OperationName.project` is None
for a legacy name; a full name whose project is not the operation's names
nothing (NotFound), like any other name of an absent resource.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from longrun_core.errors import InvalidArgument

COLLECTION = "operations"
PROJECTS = "projects"
#: The project of records stored before operations had one, and of
#: documents and rows that lack the field.
DEFAULT_PROJECT = "default"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}$")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_ID_RULE = "id is 1-128 characters of letters, digits, '-', '_', '.', '~'"
_PROJECT_RULE = (
    "a project id is 1-63 characters of lowercase letters, digits and hyphens, "
    "starting with a letter or digit"
)


@dataclass(frozen=True, slots=True)
class OperationName:
    """A parsed operation name; `project` is None for the legacy form."""

    project: str | None
    id: str

    @property
    def watch_key(self) -> str:
        return watch_key(self.id)


def operation_name(project: str, op_id: str) -> str:
    """The full name of an operation: `projects/{project}/operations/{id}`."""
    return f"{PROJECTS}/{project}/{COLLECTION}/{op_id}"


def project_name(project: str) -> str:
    return f"{PROJECTS}/{project}"


def watch_key(op_id: str) -> str:
    """What change notifications are keyed by, whatever form of the name a
    caller used (`operations/{id}`: what every process, old or new, sends)."""
    return f"{COLLECTION}/{op_id}"


def check_project_id(project: str, *, field: str = "project") -> str:
    """Return `project` if it is a valid project id; INVALID_ARGUMENT otherwise."""
    if not _PROJECT.fullmatch(project):
        raise InvalidArgument(
            f"invalid {field} {project[:200]!r}: {_PROJECT_RULE}",
            reason="PROJECT_ID_INVALID",
            metadata={field: project[:200]},
        )
    return project


def parse_operation_name(name: str) -> OperationName:
    """Parse `projects/{project}/operations/{id}` (or the legacy
    `operations/{id}`); INVALID_ARGUMENT saying what is wrong otherwise."""
    if not name:
        raise InvalidArgument(
            "name is required: pass the operation name, e.g. "
            "'projects/my-project/operations/abc123'",
            reason="NAME_MISSING",
        )
    parts = name.split("/")
    if len(parts) == 2 and parts[0] == COLLECTION and _ID.fullmatch(parts[1]):
        return OperationName(None, parts[1])
    if (
        len(parts) == 4
        and parts[0] == PROJECTS
        and parts[2] == COLLECTION
        and _ID.fullmatch(parts[3])
    ):
        return OperationName(check_project_id(parts[1]), parts[3])
    raise InvalidArgument(
        f"malformed operation name {name[:200]!r}: expected "
        f"'projects/{{project}}/operations/{{id}}' (or 'operations/{{id}}') where "
        f"{_PROJECT_RULE} and {_ID_RULE}",
        reason="NAME_MALFORMED",
        metadata={"name": name[:200]},
    )


def parse_list_name(name: str) -> str | None:
    """The project a ListOperations `name` lists: `projects/{p}` or
    `projects/{p}/operations` give p; "" or `operations` give None (every
    project the caller may see). INVALID_ARGUMENT for anything else."""
    if name in ("", COLLECTION):
        return None
    parts = name.split("/")
    if parts[0] == PROJECTS and (len(parts) == 2 or (len(parts) == 3 and parts[2] == COLLECTION)):
        return check_project_id(parts[1])
    raise InvalidArgument(
        f"name must be 'projects/{{project}}' (or 'projects/{{project}}/operations'; "
        f"'{COLLECTION}' or empty for every project you may see) for ListOperations, got "
        f"{name[:200]!r}",
        reason="COLLECTION_UNKNOWN",
        metadata={"name": name[:200]},
    )


def parse_parent(parent: str) -> str:
    """The project of a CreateJob `parent` (`projects/{p}`)."""
    parts = parent.split("/")
    if len(parts) != 2 or parts[0] != PROJECTS:
        raise InvalidArgument(
            f"parent must be 'projects/{{project}}', got {parent[:200]!r}",
            reason="PARENT_MALFORMED",
            metadata={"parent": parent[:200]},
        )
    return check_project_id(parts[1], field="parent")
