"""Click options shared by `longrun-server` and `longrun-worker`: every
flag also reads an environment variable, and --help shows which."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from longrun_core.auth.oidc_limits import MAX_TOKEN_LIFETIME_LIMIT
from longrun_core.errors import StartupError
from longrun_core.observability.json_logs import LOG_FORMATS, configure_logging
from longrun_core.observability.queue_labels import (
    DEFAULT_MAX_QUEUE_LABELS,
    MAX_QUEUE_LABELS_LIMIT,
)
from longrun_core.observability.tracing import TRACE_EXPORTERS, TracingSettings
from longrun_core.settings import (
    CLIENT_AUTH_MODES,
    DEFAULT_TASK_MODULES,
    AuthenticationSettings,
    BackendSettings,
    TlsSettings,
)
from longrun_core.signing import SigningKeys
from longrun_core.tasks import TaskModuleError, TaskRegistry, load_tasks

F = TypeVar("F", bound=Callable[..., Any])
_D = BackendSettings()


def backend_options(fn: F) -> F:
    options = [
        click.option(
            "--store",
            type=click.Choice(["sqlite", "firestore"]),
            default=_D.store,
            envvar="LONGRUN_STORE",
            show_envvar=True,
            show_default=True,
            help="Operation store.",
        ),
        click.option(
            "--queue",
            type=click.Choice(["sqlite", "pubsub"]),
            default=_D.queue,
            envvar="LONGRUN_QUEUE",
            show_envvar=True,
            show_default=True,
            help="Task queue.",
        ),
        click.option(
            "--sqlite-path",
            type=click.Path(path_type=Path),
            default=_D.sqlite_path,
            envvar="LONGRUN_SQLITE_PATH",
            show_envvar=True,
            show_default=True,
            help="Database file of the embedded backends.",
        ),
        click.option(
            "--project",
            default=_D.project,
            envvar="GOOGLE_CLOUD_PROJECT",
            show_envvar=True,
            show_default=True,
            help="Google Cloud project id.",
        ),
        click.option(
            "--firestore-database",
            default=_D.firestore_database,
            envvar="LONGRUN_FIRESTORE_DATABASE",
            show_envvar=True,
            show_default=True,
        ),
        click.option(
            "--firestore-collection",
            default=_D.firestore_collection,
            envvar="LONGRUN_FIRESTORE_COLLECTION",
            show_envvar=True,
            show_default=True,
        ),
        click.option(
            "--firestore-timeout",
            type=click.FloatRange(min=0.1),
            default=_D.firestore_timeout,
            envvar="LONGRUN_FIRESTORE_TIMEOUT",
            show_envvar=True,
            show_default=True,
            help="Seconds one Firestore call may take before it fails UNAVAILABLE (an outage).",
        ),
        click.option(
            "--pubsub-topic",
            default=_D.pubsub_topic,
            envvar="LONGRUN_PUBSUB_TOPIC",
            show_envvar=True,
            show_default=True,
        ),
        click.option(
            "--pubsub-subscription",
            default=_D.pubsub_subscription,
            envvar="LONGRUN_PUBSUB_SUBSCRIPTION",
            show_envvar=True,
            show_default=True,
        ),
        click.option(
            "--pubsub-dead-letter-topic",
            default=_D.pubsub_dead_letter_topic,
            envvar="LONGRUN_PUBSUB_DEAD_LETTER_TOPIC",
            show_envvar=True,
            show_default=True,
        ),
        click.option(
            "--pubsub-pull",
            type=click.Choice(["streaming", "unary"]),
            default=_D.pubsub_pull,
            envvar="LONGRUN_PUBSUB_PULL",
            show_envvar=True,
            show_default=True,
            help="Pub/Sub pull style; unary suits the emulator under faults.",
        ),
        click.option(
            "--max-deliveries",
            type=int,
            default=_D.max_deliveries,
            envvar="LONGRUN_MAX_DELIVERIES",
            show_envvar=True,
            show_default=True,
            help="Deliveries of one message before it is dead-lettered.",
        ),
        click.option(
            "--visibility-timeout",
            type=float,
            default=_D.visibility_timeout,
            envvar="LONGRUN_VISIBILITY_TIMEOUT",
            show_envvar=True,
            show_default=True,
            help="Seconds a received message stays leased (extended while running).",
        ),
        click.option(
            "--cache-max-bytes",
            type=click.IntRange(min=1024 * 1024),
            default=_D.cache_max_bytes,
            envvar="LONGRUN_CACHE_MAX_BYTES",
            show_envvar=True,
            show_default=True,
            help="Bytes each in-memory cache may hold (converted records; on the server "
            "also Operation views).",
        ),
        click.option(
            "--outage-retry-max",
            type=click.FloatRange(min=0.05),
            default=_D.outage_retry_max,
            envvar="LONGRUN_OUTAGE_RETRY_MAX",
            show_envvar=True,
            show_default=True,
            help="Longest pause in seconds between retries while the store or queue is "
            "unavailable (disk full, read-only, unreachable): how soon work resumes after.",
        ),
        click.option(
            "--message-signing-keys",
            default=None,
            envvar="LONGRUN_MESSAGE_SIGNING_KEYS",
            show_envvar=True,
            help="Keys that sign task messages, as kid:secret[,kid:secret] (the first signs, "
            "all verify; secrets of 16+ bytes). Required with --queue pubsub; the SQLite queue "
            "otherwise keeps a generated key in its database. Prefer the environment variable: "
            "a flag shows in the process list.",
        ),
        click.option(
            "--task-module",
            "task_modules",
            multiple=True,
            envvar="LONGRUN_TASK_MODULES",
            show_envvar=True,
            help="Module holding `tasks = TaskSet()`, loaded beside the built-in tasks "
            f"({', '.join(DEFAULT_TASK_MODULES)}); repeat for several (env: space-separated).",
        ),
        click.option(
            "--builtin-tasks/--no-builtin-tasks",
            default=True,
            envvar="LONGRUN_BUILTIN_TASKS",
            show_envvar=True,
            show_default=True,
            help="Also load the built-in tasks (sleep, noop, fail, ...).",
        ),
        click.option(
            "--log-level",
            default="INFO",
            envvar="LONGRUN_LOG_LEVEL",
            show_envvar=True,
            show_default=True,
        ),
        click.option(
            "--log-format",
            type=click.Choice(LOG_FORMATS),
            default="text",
            envvar="LONGRUN_LOG_FORMAT",
            show_envvar=True,
            show_default=True,
            help="text: lines on stderr; json: Cloud Logging structured entries on stdout; "
            "auto: text on a terminal, json otherwise (docs/observability.md).",
        ),
        click.option(
            "--metrics-address",
            default="",
            envvar="LONGRUN_METRICS_ADDRESS",
            show_envvar=True,
            help="HOST:PORT serving /metrics in the Prometheus text format (port 0: any; "
            "default: off, and nothing is measured).",
        ),
        click.option(
            "--metrics-port-file",
            type=click.Path(path_type=Path),
            default=None,
            envvar="LONGRUN_METRICS_PORT_FILE",
            show_envvar=True,
            help="Write the bound metrics port here once it listens (for tests and scripts).",
        ),
        click.option(
            "--metrics-max-queues",
            type=click.IntRange(1, MAX_QUEUE_LABELS_LIMIT),
            default=DEFAULT_MAX_QUEUE_LABELS,
            envvar="LONGRUN_METRICS_MAX_QUEUES",
            show_envvar=True,
            show_default=True,
            help="Most queue ids given a `queue` label value of their own; the rest are "
            "`_other` (docs/observability.md).",
        ),
        click.option(
            "--trace-exporter",
            type=click.Choice(TRACE_EXPORTERS),
            default="none",
            envvar="LONGRUN_TRACE_EXPORTER",
            show_envvar=True,
            show_default=True,
            help="OpenTelemetry spans: otlp (OTLP/gRPC; endpoint from OTEL_EXPORTER_OTLP_ENDPOINT, "
            "default localhost:4317), file (JSON lines to --trace-file), none (off).",
        ),
        click.option(
            "--trace-file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            envvar="LONGRUN_TRACE_FILE",
            show_envvar=True,
            help="Where --trace-exporter file appends one JSON object per span.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def tls_options(fn: F) -> F:
    """--tls-cert, --tls-key, --tls-client-ca, --tls-client-auth and
    --allow-unauthenticated (read with `tls_settings` / kw["allow_unauthenticated"])."""
    file_type = click.Path(exists=True, dir_okay=False, path_type=Path)
    options = [
        click.option(
            "--tls-cert",
            type=file_type,
            default=None,
            envvar="LONGRUN_TLS_CERT",
            show_envvar=True,
            help="PEM certificate chain: serve TLS on the gRPC port and the HTTP gateway "
            "(with --tls-key). Replaced files are picked up by new connections.",
        ),
        click.option(
            "--tls-key",
            type=file_type,
            default=None,
            envvar="LONGRUN_TLS_KEY",
            show_envvar=True,
            help="PEM private key of --tls-cert (unencrypted).",
        ),
        click.option(
            "--tls-client-ca",
            type=file_type,
            default=None,
            envvar="LONGRUN_TLS_CLIENT_CA",
            show_envvar=True,
            help="PEM CA certificates that client certificates must chain to (mutual TLS).",
        ),
        click.option(
            "--tls-client-auth",
            type=click.Choice(CLIENT_AUTH_MODES),
            default=None,
            envvar="LONGRUN_TLS_CLIENT_AUTH",
            show_envvar=True,
            help="Client certificates: none, optional (HTTPS asks, verifies one if sent; the "
            "gRPC port does not ask) or require. Default: require with --tls-client-ca, "
            "else none.",
        ),
        click.option(
            "--allow-unauthenticated",
            is_flag=True,
            default=False,
            envvar="LONGRUN_ALLOW_UNAUTHENTICATED",
            show_envvar=True,
            help="Listen on a non-loopback address although callers are not authenticated "
            "(something in front, e.g. Cloud Run IAM, does it). Without it such a "
            "server refuses to start.",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def tls_settings(kw: dict[str, Any]) -> TlsSettings | None:
    """The TLS settings of the flags `tls_options` added (popped from `kw`);
    None when no certificate is given."""
    cert, key = kw.pop("tls_cert"), kw.pop("tls_key")
    client_ca, client_auth = kw.pop("tls_client_ca"), kw.pop("tls_client_auth")
    if cert is None and key is None:
        if client_ca is not None or client_auth not in (None, "none"):
            raise click.BadParameter(
                "client certificates need TLS: give --tls-cert and --tls-key",
                param_hint="--tls-client-ca/--tls-client-auth",
            )
        return None
    if cert is None or key is None:
        raise click.BadParameter(
            "give both --tls-cert and --tls-key", param_hint="--tls-cert/--tls-key"
        )
    if client_auth is None:
        client_auth = "require" if client_ca is not None else "none"
    settings = TlsSettings(
        cert_file=cert.absolute(),
        key_file=key.absolute(),
        client_ca_file=client_ca.absolute() if client_ca is not None else None,
        client_auth=client_auth,
    )
    try:
        settings.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--tls-client-auth") from exc
    return settings


def backend_settings(kw: dict[str, Any]) -> BackendSettings:
    return BackendSettings(
        store=kw.pop("store"),
        queue=kw.pop("queue"),
        sqlite_path=kw.pop("sqlite_path").absolute(),
        project=kw.pop("project"),
        firestore_database=kw.pop("firestore_database"),
        firestore_collection=kw.pop("firestore_collection"),
        firestore_timeout=kw.pop("firestore_timeout"),
        pubsub_topic=kw.pop("pubsub_topic"),
        pubsub_subscription=kw.pop("pubsub_subscription"),
        pubsub_dead_letter_topic=kw.pop("pubsub_dead_letter_topic"),
        pubsub_pull=kw.pop("pubsub_pull"),
        max_deliveries=kw.pop("max_deliveries"),
        visibility_timeout=kw.pop("visibility_timeout"),
        cache_max_bytes=kw.pop("cache_max_bytes"),
        outage_retry_max=kw.pop("outage_retry_max"),
        message_signing_keys=_signing_keys(kw.pop("message_signing_keys")),
    )


def _signing_keys(text: str | None) -> SigningKeys | None:
    if not text:
        return None
    try:
        return SigningKeys.parse(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--message-signing-keys") from exc


def task_registry(kw: dict[str, Any]) -> TaskRegistry:
    """The tasks named by --task-module and --builtin-tasks, imported now, so
    a module that cannot be imported is a usage error, not a traceback."""
    builtins = DEFAULT_TASK_MODULES if kw.pop("builtin_tasks") else ()
    modules = (*builtins, *kw.pop("task_modules"))
    if not modules:
        raise click.UsageError("no tasks: give --task-module or drop --no-builtin-tasks")
    try:
        return load_tasks(modules)
    except TaskModuleError as exc:
        raise click.BadParameter(str(exc), param_hint="--task-module") from exc


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's main coroutine; a configuration it cannot start with
    (StartupError) is one "Error:" line and exit 1, not a traceback."""
    try:
        asyncio.run(main)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from exc


def setup_logging(level: str, log_format: str = "text", project: str | None = None) -> None:
    configure_logging(level, log_format, project)


@dataclass(frozen=True)
class MetricsSettings:
    """--metrics-address (empty: metrics off) and --metrics-port-file."""

    address: str = ""
    port_file: Path | None = None
    #: --metrics-max-queues: the cap on `queue` label values.
    max_queues: int = DEFAULT_MAX_QUEUE_LABELS

    @property
    def enabled(self) -> bool:
        return bool(self.address)


def tracing_settings(kw: dict[str, Any]) -> TracingSettings:
    path = kw.pop("trace_file")
    settings = TracingSettings(kw.pop("trace_exporter"), path.absolute() if path else None)
    try:
        settings.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trace-exporter") from exc
    return settings


#: Metrics off (the default).
METRICS_OFF = MetricsSettings()
#: Tracing off (the default).
TRACING_OFF = TracingSettings()


def metrics_settings(kw: dict[str, Any]) -> MetricsSettings:
    address, port_file = kw.pop("metrics_address"), kw.pop("metrics_port_file")
    max_queues = int(kw.pop("metrics_max_queues"))
    if address:
        from longrun_core.observability.exposition import split_address  # aiohttp: only if on

        try:
            split_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--metrics-address") from exc
    return MetricsSettings(
        address, port_file.absolute() if port_file is not None else None, max_queues
    )


_A = AuthenticationSettings()


def _issuer_url(text: str) -> tuple[str, str]:
    issuer, sep, url = text.partition("=")
    if not sep or not issuer or not url.startswith(("https://", "http://")):
        raise click.BadParameter(
            f"expected ISSUER=URL, got {text[:100]!r}", param_hint="--oidc-jwks"
        )
    return issuer, url


def auth_options(fn: F) -> F:
    """`longrun-server`'s authentication flags (docs/security.md)."""
    options = [
        click.option(
            "--oidc-audience",
            default=None,
            envvar="LONGRUN_OIDC_AUDIENCE",
            show_envvar=True,
            help="Accept OIDC ID tokens (authorization: Bearer) minted for exactly this audience "
            "(e.g. the service URL). Default: ID tokens are not accepted.",
        ),
        click.option(
            "--oidc-issuer",
            "oidc_issuers",
            multiple=True,
            default=_A.oidc_issuers,
            envvar="LONGRUN_OIDC_ISSUERS",
            show_envvar=True,
            show_default=True,
            help="Accepted `iss` of tokens checked against --oidc-certs-url; repeatable "
            "(env: space-separated).",
        ),
        click.option(
            "--oidc-certs-url",
            default=_A.oidc_certs_url,
            envvar="LONGRUN_OIDC_CERTS_URL",
            show_envvar=True,
            show_default=True,
            help="Keys of the --oidc-issuer issuers ({kid: PEM} or a JWK set).",
        ),
        click.option(
            "--oidc-jwks",
            "oidc_jwks",
            multiple=True,
            metavar="ISSUER=URL",
            envvar="LONGRUN_OIDC_JWKS",
            show_envvar=True,
            help="Another OIDC issuer and its JWKS URL; repeatable (env: space-separated).",
        ),
        click.option(
            "--max-token-lifetime",
            type=click.IntRange(60, MAX_TOKEN_LIFETIME_LIMIT),
            default=_A.max_token_lifetime,
            envvar="LONGRUN_MAX_TOKEN_LIFETIME",
            show_envvar=True,
            show_default=True,
            help="Longest exp - iat (seconds) of an accepted ID token.",
        ),
        click.option(
            "--token-cache-entries",
            type=click.IntRange(0, 1_000_000),
            default=_A.token_cache_entries,
            envvar="LONGRUN_TOKEN_CACHE_ENTRIES",
            show_envvar=True,
            show_default=True,
            help="Verified ID tokens kept (by sha256) until they expire (0: verify every call).",
        ),
        click.option(
            "--api-keys/--no-api-keys",
            default=_A.api_keys,
            envvar="LONGRUN_API_KEYS",
            show_envvar=True,
            show_default=True,
            help="Accept API keys (x-goog-api-key or authorization: Bearer lrk_...), kept in "
            "the operation store's backend, and serve longrun.v1.ApiKeys.",
        ),
        click.option(
            "--api-key-cache-ttl",
            type=click.FloatRange(0, 300),
            default=_A.api_key_cache_ttl,
            envvar="LONGRUN_API_KEY_CACHE_TTL",
            show_envvar=True,
            show_default=True,
            help="Seconds an API key's record is reused before it is read again (how soon a "
            "revocation made through another server is seen here).",
        ),
        click.option(
            "--policy-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            default=None,
            envvar="LONGRUN_POLICY_FILE",
            show_envvar=True,
            help="TOML file of groups and role bindings; reloaded on SIGHUP (docs/security.md).",
        ),
        click.option(
            "--quota-requests-per-second",
            type=click.FloatRange(0, 1_000_000),
            default=_A.quota_requests_per_second,
            envvar="LONGRUN_QUOTA_REQUESTS_PER_SECOND",
            show_envvar=True,
            show_default=True,
            help="Requests per second each authenticated principal may make on this server "
            "(0: no limit); over it: RESOURCE_EXHAUSTED with QuotaFailure and RetryInfo.",
        ),
        click.option(
            "--quota-burst",
            type=click.IntRange(1, 10_000_000),
            default=_A.quota_burst,
            envvar="LONGRUN_QUOTA_BURST",
            show_envvar=True,
            show_default=True,
            help="Requests a principal may make at once above the per-second rate.",
        ),
        click.option(
            "--quota-open-operations",
            type=click.IntRange(0, 100_000_000),
            default=_A.quota_open_operations,
            envvar="LONGRUN_QUOTA_OPEN_OPERATIONS",
            show_envvar=True,
            show_default=True,
            help="Unfinished operations one principal may have created, counted in the store "
            "across servers (0: no limit).",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def auth_settings(kw: dict[str, Any]) -> AuthenticationSettings:
    audience = kw.pop("oidc_audience")
    return AuthenticationSettings(
        oidc_audience=audience or None,
        oidc_issuers=tuple(kw.pop("oidc_issuers")) or _A.oidc_issuers,
        oidc_certs_url=kw.pop("oidc_certs_url"),
        oidc_jwks=tuple(_issuer_url(t) for t in kw.pop("oidc_jwks")),
        max_token_lifetime=kw.pop("max_token_lifetime"),
        token_cache_entries=kw.pop("token_cache_entries"),
        api_keys=kw.pop("api_keys"),
        api_key_cache_ttl=kw.pop("api_key_cache_ttl"),
        policy_file=kw.pop("policy_file"),
        quota_requests_per_second=kw.pop("quota_requests_per_second"),
        quota_burst=kw.pop("quota_burst"),
        quota_open_operations=kw.pop("quota_open_operations"),
    )
