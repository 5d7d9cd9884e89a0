"""Request limits (documented in the README) with errors that say what to fix."""

from __future__ import annotations

import re
import uuid

from longrun_core.errors import InvalidArgument

MAX_PARAMS_BYTES = 256 * 1024
MAX_LABELS = 64
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
MAX_LABEL_VALUE = 63


def check_params_size(params: bytes) -> None:
    if len(params) > MAX_PARAMS_BYTES:
        raise InvalidArgument(
            f"params are {len(params)} bytes serialized; at most {MAX_PARAMS_BYTES} are allowed "
            "(pass large inputs by reference, e.g. a storage URI)",
            reason="PARAMS_TOO_LARGE",
            metadata={"size": str(len(params)), "limit": str(MAX_PARAMS_BYTES)},
        )


def check_labels(labels: dict[str, str]) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(
            f"{len(labels)} labels given; at most {MAX_LABELS} are allowed",
            reason="TOO_MANY_LABELS",
        )
    for key, value in labels.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidArgument(
                f"label key {key[:80]!r} is invalid: use 1-63 characters of lowercase letters, "
                "digits, '_' or '-', starting with a letter",
                reason="LABEL_KEY_INVALID",
                metadata={"key": key[:80]},
            )
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(
                f"label {key!r} value is {len(value)} characters; at most {MAX_LABEL_VALUE}",
                reason="LABEL_VALUE_TOO_LONG",
                metadata={"key": key},
            )


def check_request_id(request_id: str) -> str | None:
    """AIP-155: request_id, when given, is a UUID4 in canonical form."""
    if not request_id:
        return None
    try:
        parsed = uuid.UUID(request_id)
    except ValueError:
        parsed = None
    if parsed is None or parsed.version != 4 or str(parsed) != request_id.lower():
        raise InvalidArgument(
            f"request_id {request_id[:80]!r} is not a UUID4 such as "
            "'3f2b8c1e-9a4d-4e6f-8b2a-1c3d5e7f9a0b'",
            reason="REQUEST_ID_INVALID",
        )
    return str(parsed)
