"""Operation resource names: `operations/{id}`."""

from __future__ import annotations

import re

from longrun_core.errors import InvalidArgument

COLLECTION = "operations"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.~-]{0,127}$")


def operation_name(op_id: str) -> str:
    return f"{COLLECTION}/{op_id}"


def parse_operation_name(name: str) -> str:
    """Return the id in `operations/{id}`; INVALID_ARGUMENT saying what is wrong otherwise."""
    if not name:
        raise InvalidArgument(
            "name is required: pass the operation name, e.g. 'operations/abc123'",
            reason="NAME_MISSING",
        )
    prefix, sep, op_id = name.partition("/")
    if prefix != COLLECTION or not sep or not _ID.fullmatch(op_id):
        raise InvalidArgument(
            f"malformed operation name {name[:200]!r}: expected 'operations/{{id}}' where id is "
            "1-128 characters of letters, digits, '-', '_', '.', '~'",
            reason="NAME_MALFORMED",
            metadata={"name": name[:200]},
        )
    return op_id
