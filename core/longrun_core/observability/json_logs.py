"""`--log-format json`: one Cloud Logging structured entry per line.

Each line is a JSON object with `severity` (Cloud Logging's LogSeverity
names), `message` (with the traceback when there is one), `time` (RFC 3339,
UTC), `logging.googleapis.com/sourceLocation`, `logger`, and the record's
extra fields (`action`, `operation`, `attempt`, ...). Inside a worker's
attempt (`bind_attempt`) every entry carries the attempt's `operation` and
`attempt` even when the call that logged did not pass them."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

#: Python levels to Cloud Logging severities (anything between rounds down).
_SEVERITIES = (
    (logging.CRITICAL, "CRITICAL"),
    (logging.ERROR, "ERROR"),
    (logging.WARNING, "WARNING"),
    (logging.INFO, "INFO"),
    (logging.DEBUG, "DEBUG"),
)
#: Attributes every LogRecord has: not copied as extra fields.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)
#: Keys the formatter writes itself; an extra field of the same name is dropped.
_OWN_KEYS = frozenset(
    {
        "severity",
        "message",
        "time",
        "logger",
        "logging.googleapis.com/sourceLocation",
        "logging.googleapis.com/trace",
        "logging.googleapis.com/spanId",
        "logging.googleapis.com/trace_sampled",
    }
)
#: Longest extra field value kept (a log line stays a log line).
MAX_FIELD_CHARS = 2000

_attempt: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar(
    "longrun_attempt", default=None
)


def bind_attempt(operation: str, attempt: int) -> None:
    """Tag every entry logged from now on in this context (an attempt's own
    asyncio task) with the operation's name and the attempt number."""
    _attempt.set((operation, attempt))


def severity(levelno: int) -> str:
    for level, name in _SEVERITIES:
        if levelno >= level:
            return name
    return "DEFAULT"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_FIELD_CHARS]


def _trace_fields(project: str | None) -> dict[str, Any]:
    """Cloud Logging's trace fields for the span current where the record
    was logged (tracing on); none without one."""
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    trace_id = f"{context.trace_id:032x}"
    return {
        "logging.googleapis.com/trace": (
            f"projects/{project}/traces/{trace_id}" if project else trace_id
        ),
        "logging.googleapis.com/spanId": f"{context.span_id:016x}",
        "logging.googleapis.com/trace_sampled": context.trace_flags.sampled,
    }


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one line of JSON (see the module docstring);
    `project` (the Google Cloud project) makes the trace field the full
    `projects/P/traces/ID` Cloud Logging links to Cloud Trace."""

    def __init__(self, project: str | None = None) -> None:
        super().__init__()
        self.project = project

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        elif record.exc_text:
            message = f"{message}\n{record.exc_text}"
        if record.stack_info:
            message = f"{message}\n{self.formatStack(record.stack_info)}"
        entry: dict[str, Any] = {
            "severity": severity(record.levelno),
            "message": message,
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="microseconds")
            .replace("+00:00", "Z"),
            "logger": record.name,
            "logging.googleapis.com/sourceLocation": {
                "file": record.pathname,
                "line": str(record.lineno),
                "function": record.funcName,
            },
        }
        bound = _attempt.get()
        if bound is not None:
            entry["operation"], entry["attempt"] = bound
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and key not in _OWN_KEYS and not key.startswith("_"):
                entry[key] = _plain(value)
        entry.update(_trace_fields(self.project))
        return json.dumps(entry, ensure_ascii=False, default=str)


LOG_FORMATS = ("text", "json", "auto")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def resolve_format(log_format: str, stream: TextIO) -> str:
    """`auto` is text on a terminal, json otherwise."""
    if log_format == "auto":
        return "text" if stream.isatty() else "json"
    return log_format


def configure_logging(level: str, log_format: str = "text", project: str | None = None) -> None:
    """The root logger at `level`: text lines on stderr (the default), or
    JSON entries on stdout (what Cloud Run and GKE pass to Cloud Logging)."""
    if resolve_format(log_format, sys.stderr) == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(CloudLoggingFormatter(project))
        logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    else:
        logging.basicConfig(level=level.upper(), format=TEXT_FORMAT)
