"""The one way this package reports a bad filter: `InvalidArgument` saying
where (1-based character column) and why."""

from __future__ import annotations

from longrun_core.errors import InvalidArgument

REASON = "FILTER_INVALID"
#: How much of the filter text is echoed back in the error metadata.
ECHO_LIMIT = 200


def filter_error(text: str, column: int, what: str, hint: str | None = None) -> InvalidArgument:
    """`filter: <what> at column <N>[; <hint>]`, reason FILTER_INVALID."""
    message = f"filter: {what} at column {column}"
    if hint:
        message += f"; {hint}"
    echoed = text if len(text) <= ECHO_LIMIT else text[: ECHO_LIMIT - 3] + "..."
    return InvalidArgument(
        message, reason=REASON, metadata={"filter": echoed, "column": str(column)}
    )
