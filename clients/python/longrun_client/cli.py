"""`longrun`: submit jobs and manage operations from a shell.

    longrun submit sleep --param worktime=5 --wait
    longrun list --filter 'done:false'
    longrun wait operations/abc --timeout 60
    longrun submit send --queue emails --in 10m --project billing
    longrun queues pause emails --project billing

Exit codes: 0 success; 1 the operation failed (or another error); 2 usage
error; 3 NOT_FOUND; 4 INVALID_ARGUMENT / FAILED_PRECONDITION; 5 UNAVAILABLE
(cannot connect); 6 wait timed out before the operation was done; 7
UNAUTHENTICATED / PERMISSION_DENIED (credentials missing or refused); 130
interrupted (Ctrl-C: the operation goes on).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import grpc
from google.longrunning import operations_pb2
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from longrun.v1 import api_keys_pb2, jobs_pb2, queues_pb2
from longrun_client.client import DEFAULT_TARGET, Client
from longrun_client.codec import operation_to_dict, to_jsonable
from longrun_client.credentials import ChannelSecurity, CredentialsError
from longrun_client.durations import parse_duration
from longrun_client.errors import OperationError, ServiceError
from longrun_client.future import OperationFuture
from longrun_client.queues import JobOptions, LimitOptions, RetryOptions

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_INVALID = 4
EXIT_UNAVAILABLE = 5
EXIT_TIMEOUT = 6
EXIT_DENIED = 7
EXIT_INTERRUPTED = 130

_EXIT_BY_CODE = {
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INVALID,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_INVALID,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
}

_STATE = jobs_pb2.JobMetadata.State


def exit_code_for(error: ServiceError) -> int:
    return _EXIT_BY_CODE.get(error.code, EXIT_FAILED)


@dataclass
class Settings:
    target: str
    security: ChannelSecurity = field(default_factory=ChannelSecurity)
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client(self.target, security=self.security)
            except CredentialsError as exc:
                raise click.UsageError(str(exc)) from exc
            click.get_current_context().call_on_close(self._client.close)
        return self._client


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _key_value(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint=option)
    return key, value


def parse_param_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false, null, lists, objects), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_params(params_json: str | None, params: Sequence[str]) -> dict[str, Any]:
    """--params-json first, then each --param k=v on top of it."""
    result: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--params-json") from exc
        if not isinstance(loaded, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--params-json")
        result.update(loaded)
    for item in params:
        key, value = _key_value(item, "--param")
        result[key] = parse_param_value(value)
    return result


def describe_progress(metadata: jobs_pb2.JobMetadata | None) -> str:
    if metadata is None:
        return "(no metadata)"
    text = f"{_STATE.Name(metadata.state)} {metadata.progress_percent:3d}%"
    return f"{text} {metadata.progress_message}" if metadata.progress_message else text


@contextmanager
def progress_display(name: str) -> Iterator[Callable[[jobs_pb2.JobMetadata | None], None]]:
    """A sink for metadata updates: a rich progress bar on a terminal, plain
    lines on stderr otherwise (rich disables live bars when not a TTY)."""
    console = _stderr()
    if not console.is_terminal:

        def line(metadata: jobs_pb2.JobMetadata | None) -> None:
            click.echo(f"{name} {describe_progress(metadata)}", err=True)

        yield line
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task(name, total=100)

        def update(metadata: jobs_pb2.JobMetadata | None) -> None:
            if metadata is None:
                return
            state = _STATE.Name(metadata.state)
            message = f" {metadata.progress_message}" if metadata.progress_message else ""
            bar.update(
                task,
                completed=metadata.progress_percent,
                description=f"{name} {state}{message}",
            )

        yield update


def follow(future: OperationFuture[Any], timeout: float | None, as_json: bool) -> int:
    """Wait with progress, then report: the result (exit 0), the error (1) or
    the latest state when `timeout` passed first (6)."""
    try:
        with progress_display(future.name) as show:
            show(future.metadata)
            future.add_progress_callback(show)
            done = future.wait(timeout)
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped waiting; {future.name} goes on (`longrun cancel {future.name}` stops it)",
            err=True,
        )
        raise
    operation = future.operation
    if as_json:
        _emit_json(operation_to_dict(operation))
    if not done:
        click.echo(
            f"{future.name} is not done after {timeout:g}s: {describe_progress(future.metadata)}",
            err=True,
        )
        return EXIT_TIMEOUT
    try:
        result = future.result(timeout=0)
    except OperationError as exc:
        _print_error(exc)
        return EXIT_FAILED
    if not as_json:
        _emit_json(to_jsonable(result))
    return EXIT_OK


def _print_error(error: ServiceError | OperationError) -> None:
    reason = f" [{error.reason}]" if error.reason else ""
    prefix = "operation failed" if isinstance(error, OperationError) else "error"
    name = f"{error.operation.name} " if isinstance(error, OperationError) else ""
    click.echo(f"{prefix}: {name}{error.code.name}: {error.message}{reason}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--target",
    default=DEFAULT_TARGET,
    envvar="LONGRUN_TARGET",
    show_envvar=True,
    show_default=True,
    help="Server host:port.",
)
@click.option(
    "--token",
    default=None,
    envvar="LONGRUN_TOKEN",
    show_envvar=True,
    help="Sent as `authorization: Bearer TOKEN` metadata (prefer the variable: a flag "
    "shows in the process list).",
)
@click.option(
    "--api-key",
    default=None,
    envvar="LONGRUN_API_KEY",
    show_envvar=True,
    help="Sent as `x-goog-api-key` metadata.",
)
@click.option(
    "--id-token-audience",
    default=None,
    envvar="LONGRUN_ID_TOKEN_AUDIENCE",
    show_envvar=True,
    help="Send a Google ID token for this audience from Application Default Credentials, "
    "refreshed before it expires (needs `pip install 'longrun-client[google]'`).",
)
@click.option(
    "--tls/--plaintext",
    default=False,
    envvar="LONGRUN_TLS",
    show_envvar=True,
    show_default=True,
    help="Connect with TLS (system roots unless --ca-file) or in plaintext.",
)
@click.option(
    "--ca-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="LONGRUN_CA_FILE",
    show_envvar=True,
    help="PEM root certificates for TLS (implies --tls).",
)
@click.option(
    "--client-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="LONGRUN_CLIENT_CERT",
    show_envvar=True,
    help="PEM client certificate for mutual TLS (with --client-key; implies --tls).",
)
@click.option(
    "--client-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    envvar="LONGRUN_CLIENT_KEY",
    show_envvar=True,
    help="PEM private key of --client-cert.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    target: str,
    token: str | None,
    api_key: str | None,
    id_token_audience: str | None,
    tls: bool,
    ca_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
) -> None:
    """Submit jobs to a longrun server and manage their operations."""
    try:
        security = ChannelSecurity(
            tls=tls,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
            token=token or None,
            api_key=api_key or None,
            id_token_audience=id_token_audience or None,
        )
    except CredentialsError as exc:
        raise click.UsageError(str(exc)) from exc
    ctx.obj = Settings(target=target, security=security)


@cli.command()
@click.argument("task")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="K=V",
    help="A param; V is JSON if it parses, else a string. Repeatable.",
)
@click.option(
    "--params-json",
    default=None,
    metavar="JSON",
    help="All params as a JSON object (--param entries override).",
)
@click.option("--label", "labels", multiple=True, metavar="K=V", help="A label. Repeatable.")
@click.option(
    "--request-id",
    default=None,
    help="Idempotency key (UUID4): a repeat returns the same operation.",
)
@click.option(
    "--project",
    default=None,
    envvar="LONGRUN_PROJECT",
    show_envvar=True,
    help="Project to create the operation in (default: the server's choice, the only "
    "project you may create in or its --default-project).",
)
@click.option("--queue", default=None, help="Queue id (or full name) to run in (default: default).")
@click.option(
    "--at",
    "at",
    default=None,
    metavar="TIME",
    help="Run no earlier than this RFC 3339 time, e.g. 2026-12-01T18:00:00Z (at most 30 days "
    "ahead).",
)
@click.option(
    "--in",
    "in_",
    default=None,
    metavar="DURATION",
    help="Run no earlier than this long from now, e.g. 90s, 10m, 2h.",
)
@click.option(
    "--dispatch-deadline",
    default=None,
    metavar="DURATION",
    help="How long one attempt may run (e.g. 30s, 10m); past it the attempt fails.",
)
@click.option(
    "--concurrency-key", default=None, help="Key for the queue's per-key concurrency limit."
)
@click.option("--wait", "wait_", is_flag=True, help="Wait for the outcome, showing progress.")
@click.option(
    "--timeout",
    type=float,
    default=None,
    help="With --wait: give up after this many seconds (exit 6).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the Operation as JSON.")
@click.pass_obj
def submit(
    settings: Settings,
    task: str,
    params: tuple[str, ...],
    params_json: str | None,
    labels: tuple[str, ...],
    request_id: str | None,
    project: str | None,
    queue: str | None,
    at: str | None,
    in_: str | None,
    dispatch_deadline: str | None,
    concurrency_key: str | None,
    wait_: bool,
    timeout: float | None,
    as_json: bool,
) -> int:
    """Create a job running TASK. Prints the operation name (or, with --wait, the result)."""
    job_params = build_params(params_json, params)
    job_labels = dict(_key_value(item, "--label") for item in labels)
    options = job_options(queue, at, in_, dispatch_deadline, concurrency_key)
    future = settings.client().submit(
        task,
        job_params,
        request_id=request_id,
        labels=job_labels,
        project=project or None,
        options=options,
    )
    if wait_:
        return follow(future, timeout, as_json)
    if as_json:
        _emit_json(operation_to_dict(future.operation))
    else:
        click.echo(future.name)
    return EXIT_OK


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with its offset (`Z` or `+01:00`)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise click.BadParameter(
            f"expected an RFC 3339 time like 2026-12-01T18:00:00Z, got {text[:60]!r}",
            param_hint="--at",
        ) from exc
    if when.tzinfo is None:
        raise click.BadParameter("give the time's offset, e.g. Z or +01:00", param_hint="--at")
    return when


def _duration(text: str | None, hint: str) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


def job_options(
    queue: str | None,
    at: str | None,
    in_: str | None,
    dispatch_deadline: str | None,
    concurrency_key: str | None,
) -> JobOptions | None:
    """submit's queue options (None when none is given)."""
    if at is not None and in_ is not None:
        raise click.UsageError("give --at or --in, not both")
    if not any((queue, at, in_, dispatch_deadline, concurrency_key)):
        return None
    return JobOptions(
        queue=queue,
        schedule_time=parse_time(at) if at is not None else None,
        delay=_duration(in_, "--in"),
        dispatch_deadline=_duration(dispatch_deadline, "--dispatch-deadline"),
        concurrency_key=concurrency_key,
    )


@cli.command()
@click.argument("name")
@click.pass_obj
def get(settings: Settings, name: str) -> int:
    """Print operation NAME as JSON."""
    _emit_json(operation_to_dict(settings.client().get(name)))
    return EXIT_OK


def _created(metadata: jobs_pb2.JobMetadata | None) -> str:
    if metadata is None or not metadata.HasField("create_time"):
        return ""
    created = metadata.create_time.ToDatetime(tzinfo=UTC)
    return created.strftime("%Y-%m-%d %H:%M:%SZ")


def _job_metadata(operation: operations_pb2.Operation) -> jobs_pb2.JobMetadata | None:
    metadata = jobs_pb2.JobMetadata()
    if not operation.metadata.Unpack(metadata):
        return None
    return metadata


@cli.command(name="list")
@click.option(
    "--filter",
    "filter_",
    default=None,
    help="AIP-160 filter, e.g. 'done:false AND metadata.task = \"sleep\"'.",
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=None,
    help="Operations per request (all pages are read).",
)
@click.option(
    "--project",
    default=None,
    envvar="LONGRUN_PROJECT",
    show_envvar=True,
    help="List this project's operations (default: every project you may see).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of Operations.")
@click.pass_obj
def list_(
    settings: Settings,
    filter_: str | None,
    page_size: int | None,
    project: str | None,
    as_json: bool,
) -> int:
    """List operations: a table of name, task, state, progress and creation time."""
    client = settings.client()
    operations = list(client.list(filter=filter_, page_size=page_size, project=project or None))
    if as_json:
        _emit_json([operation_to_dict(op) for op in operations])
        return EXIT_OK
    table = Table("name", "task", "state", "progress", "created")
    for op in operations:
        metadata = _job_metadata(op)
        table.add_row(
            op.name,
            metadata.task if metadata else "",
            _STATE.Name(metadata.state) if metadata else ("DONE" if op.done else ""),
            f"{metadata.progress_percent}%" if metadata else "",
            _created(metadata),
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)  # no wrapping in files and pipes
    console.print(table)
    if not operations:
        click.echo("no operations", err=True)
    return EXIT_OK


@cli.command()
@click.argument("name")
@click.option(
    "--timeout", type=float, default=None, help="Give up after this many seconds (exit 6)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the Operation as JSON.")
@click.pass_obj
def wait(settings: Settings, name: str, timeout: float | None, as_json: bool) -> int:
    """Wait until operation NAME is done, showing progress; print its result."""
    client = settings.client()
    return follow(client.follow(client.get(name)), timeout, as_json)


@cli.command()
@click.argument("name")
@click.pass_obj
def cancel(settings: Settings, name: str) -> int:
    """Ask the server to cancel operation NAME (it ends CANCELLED unless it finishes first)."""
    settings.client().cancel(name)
    click.echo(f"cancel requested: {name}")
    return EXIT_OK


@cli.command()
@click.argument("name")
@click.pass_obj
def delete(settings: Settings, name: str) -> int:
    """Forget operation NAME (this does not cancel it)."""
    settings.client().delete(name)
    click.echo(f"deleted: {name}")
    return EXIT_OK


@cli.group()
def keys() -> None:
    """API keys of a project (needs the admin role on it)."""


@keys.command("create")
@click.option("--project", required=True, help="Project the key is bound to.")
@click.option(
    "--role", type=click.Choice(["viewer", "editor", "admin"]), required=True, help="Its role."
)
@click.option(
    "--expires-in", default=None, metavar="DURATION", help="e.g. 30d, 12h (default: never)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the ApiKey (with its key) as JSON.")
@click.pass_obj
def keys_create(
    settings: Settings, project: str, role: str, expires_in: str | None, as_json: bool
) -> int:
    """Mint a key; prints it once on stdout (it is never shown again)."""
    try:
        ttl = parse_duration(expires_in) if expires_in else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-in") from exc
    key = settings.client().create_api_key(project, role, ttl=ttl)
    if as_json:
        _emit_json(MessageToDict(key))
        return EXIT_OK
    click.echo(f"created {key.name} ({role}); the key is shown only now:", err=True)
    click.echo(key.key_string)
    return EXIT_OK


def _when(message: Any, field_name: str) -> str:
    if not message.HasField(field_name):
        return ""
    stamp = getattr(message, field_name).ToDatetime(tzinfo=UTC)
    return str(stamp.strftime("%Y-%m-%d %H:%M:%SZ"))


@keys.command("list")
@click.option("--project", required=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of ApiKeys.")
@click.pass_obj
def keys_list(settings: Settings, project: str, as_json: bool) -> int:
    """The project's keys (never their secrets)."""
    found = list(settings.client().list_api_keys(project))
    if as_json:
        _emit_json([MessageToDict(k) for k in found])
        return EXIT_OK
    table = Table("name", "role", "created", "expires", "last used", "revoked")
    for key in found:
        table.add_row(
            key.name,
            api_keys_pb2.ApiKey.Role.Name(key.role).lower(),
            _when(key, "create_time"),
            _when(key, "expire_time"),
            _when(key, "last_use_time"),
            _when(key, "revoke_time"),
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)
    console.print(table)
    return EXIT_OK


@keys.command("revoke")
@click.argument("name")
@click.pass_obj
def keys_revoke(settings: Settings, name: str) -> int:
    """Revoke key NAME (projects/P/apiKeys/ID): it stops working at once."""
    settings.client().revoke_api_key(name)
    click.echo(f"revoked {name}")
    return EXIT_OK


@cli.group()
def queues() -> None:
    """Queues of a project: reading needs the viewer role, changes need admin."""


def retry_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The retry_config flags of `queues create` and `queues update`."""
    for option in reversed(
        [
            click.option("--max-attempts", type=click.IntRange(1, 100), default=None),
            click.option("--max-retry-duration", default=None, metavar="DURATION"),
            click.option("--min-backoff", default=None, metavar="DURATION"),
            click.option("--max-backoff", default=None, metavar="DURATION"),
            click.option("--max-doublings", type=click.IntRange(0, 16), default=None),
            click.option(
                "--max-concurrent",
                type=click.IntRange(0, 5000),
                default=None,
                help="rate_limits.max_concurrent_dispatches: attempts running at once (0: none).",
            ),
            click.option(
                "--max-per-key",
                type=click.IntRange(0, 5000),
                default=None,
                help="rate_limits.max_concurrent_per_key: attempts running at once per "
                "concurrency key (0: none).",
            ),
            click.option(
                "--max-dispatches-per-second",
                type=click.FloatRange(0, 500),
                default=None,
                help="rate_limits.max_dispatches_per_second: attempts started per second, "
                "over every worker (0: none).",
            ),
            click.option(
                "--max-burst-size",
                type=click.IntRange(0, 500),
                default=None,
                help="rate_limits.max_burst_size: attempts that may start at once after "
                "the queue was idle (0: one second's worth of the rate).",
            ),
        ]
    ):
        f = option(f)
    return f


def _retry(kw: dict[str, Any]) -> RetryOptions:
    return RetryOptions(
        max_attempts=kw["max_attempts"],
        max_retry_duration=_duration(kw["max_retry_duration"], "--max-retry-duration"),
        min_backoff=_duration(kw["min_backoff"], "--min-backoff"),
        max_backoff=_duration(kw["max_backoff"], "--max-backoff"),
        max_doublings=kw["max_doublings"],
    )


def _limits(kw: dict[str, Any]) -> LimitOptions:
    return LimitOptions(
        max_concurrent_dispatches=kw["max_concurrent"],
        max_concurrent_per_key=kw["max_per_key"],
        max_dispatches_per_second=kw["max_dispatches_per_second"],
        max_burst_size=kw["max_burst_size"],
    )


_PROJECT = click.option(
    "--project",
    default=None,
    envvar="LONGRUN_PROJECT",
    show_envvar=True,
    help="The queue's project (or name the queue projects/P/queues/Q).",
)


def _emit_queue(queue: queues_pb2.Queue) -> int:
    _emit_json(MessageToDict(queue))
    return EXIT_OK


@queues.command("create")
@click.argument("queue_id")
@_PROJECT
@retry_options
@click.pass_obj
def queues_create(settings: Settings, /, queue_id: str, project: str | None, **kw: Any) -> int:
    """Create queue QUEUE_ID; prints it as JSON."""
    if not project:
        raise click.UsageError("give --project (or LONGRUN_PROJECT)")
    created = settings.client().create_queue(
        queue_id, project=project, retry=_retry(kw), limits=_limits(kw)
    )
    return _emit_queue(created)


@queues.command("get")
@click.argument("queue")
@_PROJECT
@click.pass_obj
def queues_get(settings: Settings, queue: str, project: str | None) -> int:
    """Print QUEUE (an id with --project, or a full name) as JSON."""
    return _emit_queue(settings.client().get_queue(queue, project=project))


@queues.command("list")
@_PROJECT
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of Queues.")
@click.pass_obj
def queues_list(settings: Settings, project: str | None, as_json: bool) -> int:
    """The project's queues, `default` included."""
    if not project:
        raise click.UsageError("give --project (or LONGRUN_PROJECT)")
    found = list(settings.client().list_queues(project))
    if as_json:
        _emit_json([MessageToDict(q) for q in found])
        return EXIT_OK
    table = Table("name", "state", "max attempts", "min backoff", "max backoff", "purged")
    for queue in found:
        retry = queue.retry_config
        table.add_row(
            queue.name,
            queues_pb2.Queue.State.Name(queue.state).lower(),
            str(retry.max_attempts or "task's"),
            f"{retry.min_backoff.ToTimedelta().total_seconds():g}s"
            if retry.HasField("min_backoff")
            else "task's",
            f"{retry.max_backoff.ToTimedelta().total_seconds():g}s"
            if retry.HasField("max_backoff")
            else "task's",
            _when(queue, "purge_time"),
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)
    console.print(table)
    return EXIT_OK


@queues.command("update")
@click.argument("queue")
@_PROJECT
@retry_options
@click.pass_obj
def queues_update(settings: Settings, /, queue: str, project: str | None, **kw: Any) -> int:
    """Change the retry and limit fields given (the others are kept); prints the queue."""
    try:
        updated = settings.client().update_queue(
            queue, _retry(kw), project=project, limits=_limits(kw)
        )
        return _emit_queue(updated)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@queues.command("delete")
@click.argument("queue")
@_PROJECT
@click.pass_obj
def queues_delete(settings: Settings, queue: str, project: str | None) -> int:
    """Delete QUEUE's configuration (its queued jobs are not cancelled: see purge)."""
    settings.client().delete_queue(queue, project=project)
    click.echo(f"deleted: {queue}")
    return EXIT_OK


@queues.command("pause")
@click.argument("queue")
@_PROJECT
@click.pass_obj
def queues_pause(settings: Settings, queue: str, project: str | None) -> int:
    """No new attempts start (within about a second); running ones finish."""
    return _emit_queue(settings.client().pause_queue(queue, project=project))


@queues.command("resume")
@click.argument("queue")
@_PROJECT
@click.pass_obj
def queues_resume(settings: Settings, queue: str, project: str | None) -> int:
    """Dispatch QUEUE's jobs again."""
    return _emit_queue(settings.client().resume_queue(queue, project=project))


@queues.command("purge")
@click.argument("queue")
@_PROJECT
@click.pass_obj
def queues_purge(settings: Settings, queue: str, project: str | None) -> int:
    """Cancel every queued job of QUEUE (they end CANCELLED, code 1)."""
    return _emit_queue(settings.client().purge_queue(queue, project=project))


@queues.command("stats")
@click.argument("queue", required=False)
@_PROJECT
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of Queues with stats.")
@click.pass_obj
def queues_stats(settings: Settings, queue: str | None, project: str | None, as_json: bool) -> int:
    """Waiting and running jobs of QUEUE, or of every queue of the project
    (read_mask `stats`; `+` marks a count the server stopped at its limit)."""
    client = settings.client()
    if queue:
        found = [client.get_queue(queue, project=project, stats=True)]
    elif project:
        found = list(client.list_queues(project, stats=True))
    else:
        raise click.UsageError("give QUEUE or --project (or LONGRUN_PROJECT)")
    if as_json:
        _emit_json([MessageToDict(q) for q in found])
        return EXIT_OK
    table = Table("name", "state", "waiting", "running")
    for q in found:
        more = "+" if q.stats.capped else ""
        table.add_row(
            q.name,
            queues_pb2.Queue.State.Name(q.state).lower(),
            f"{q.stats.waiting_count}{more}",
            f"{q.stats.running_count}{more}",
        )
    _print_table(table)
    return EXIT_OK


@cli.group("dead-letters")
def dead_letters() -> None:
    """Task messages given up on (ListDeadLetters; the viewer role)."""


@dead_letters.command("list")
@click.option(
    "--project",
    default=None,
    envvar="LONGRUN_PROJECT",
    show_envvar=True,
    help="The project, or - for every project you may see.",
)
@click.option(
    "--limit", type=click.IntRange(1, 100_000), default=100, show_default=True, help="At most."
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of DeadLetters.")
@click.pass_obj
def dead_letters_list(settings: Settings, project: str | None, limit: int, as_json: bool) -> int:
    """The project's dead letters, newest first."""
    if not project:
        raise click.UsageError("give --project (or LONGRUN_PROJECT), or --project - for all")
    found = list(
        itertools.islice(
            settings.client().list_dead_letters(project, page_size=min(limit, 200)), limit
        )
    )
    if as_json:
        _emit_json([MessageToDict(d) for d in found])
        return EXIT_OK
    table = Table("time", "operation", "task", "attempt", "deliveries", "reason")
    for d in found:
        table.add_row(
            _when(d, "dead_letter_time"),
            d.operation,
            d.task,
            str(d.attempt),
            str(d.delivery_count or ""),
            d.reason,
        )
    _print_table(table)
    return EXIT_OK


def _print_table(table: Table) -> None:
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=250)
    console.print(table)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (main() exits with it)."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="longrun",
            standalone_mode=False,
        )
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except ServiceError as exc:
        _print_error(exc)
        return exit_code_for(exc)
    return result if isinstance(result, int) else EXIT_OK


def main() -> NoReturn:
    code = run()
    if code == EXIT_INTERRUPTED:
        # Leave at once: an interrupted grpc call can keep interpreter shutdown
        # waiting on its threads, and there is nothing to clean up here.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
