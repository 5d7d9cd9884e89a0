"""Settings: frozen dataclasses read from flags and LONGRUN_* environment
variables (the CLIs show both in --help). Secrets never appear in repr."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from longrun_core.auth.oidc_limits import (
    DEFAULT_MAX_TOKEN_LIFETIME,
    GOOGLE_CERTS_URL,
    GOOGLE_ISSUERS,
)
from longrun_core.signing import SigningKeys
from longrun_core.stamped_cache import DEFAULT_MAX_BYTES

DEFAULT_TASK_MODULES = ("longrun_worker.builtin_tasks",)
DEFAULT_CACHE_MAX_BYTES = DEFAULT_MAX_BYTES
#: gRPC's default receive limit, so every default client takes what we send.
DEFAULT_MESSAGE_BYTES = 4 * 1024 * 1024
MIN_MESSAGE_BYTES = 256 * 1024
#: Room a ListOperations page leaves under the max send size by default (the
#: page token and framing are counted exactly; this is a margin on top).
PAGE_HEADROOM_BYTES = 64 * 1024
#: Rows one ListOperations call may scan (longrun_core.store.ScanBudget).
DEFAULT_LIST_SCAN_BUDGET = 10_000


def default_sqlite_path() -> Path:
    """One database per user whatever the current folder, so a server and a
    worker started in different folders share it: $XDG_DATA_HOME/longrun
    (~/.local/share/longrun)."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "longrun" / "longrun.db"


@dataclass(frozen=True)
class BackendSettings:
    store: str = "sqlite"  # sqlite | firestore
    queue: str = "sqlite"  # sqlite | pubsub
    sqlite_path: Path = field(default_factory=default_sqlite_path)
    project: str = "longrun-dev"
    firestore_database: str = "(default)"
    firestore_collection: str = "operations"
    #: Seconds one Firestore call may take before it counts as an outage.
    firestore_timeout: float = 10.0
    pubsub_topic: str = "longrun-tasks"
    pubsub_subscription: str = "longrun-workers"
    pubsub_dead_letter_topic: str = "longrun-dead-letters"
    #: "streaming" (production) or "unary" (synchronous pulls: immune to the
    #: emulator's habit of feeding a killed consumer's dead stream).
    pubsub_pull: str = "streaming"
    max_deliveries: int = 10
    #: Seconds a received message stays invisible to other consumers (the
    #: queue lease); workers extend it while a task runs.
    visibility_timeout: float = 30.0
    #: Bytes each in-memory cache of this process may hold (the SQLite
    #: store's converted records; the server's Operation views).
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    #: Longest pause (seconds) between retries while a backend is unavailable
    #: (start-up, the worker's receive and outcome writes): how long work may
    #: take to resume after an outage ends.
    outage_retry_max: float = 5.0
    #: Keys that sign and verify task messages (longrun_core.signing); None:
    #: the SQLite queue keeps a generated key in its database, the Pub/Sub
    #: queue refuses to start. Its repr shows the key ids only.
    message_signing_keys: SigningKeys | None = None

    def describe(self) -> str:
        """Where this process keeps operations and tasks, for the start-up log."""
        parts = []
        if "sqlite" in (self.store, self.queue):
            parts.append(f"sqlite database {self.sqlite_path.resolve()}")
        if self.store == "firestore":
            emulator = os.environ.get("FIRESTORE_EMULATOR_HOST")
            parts.append(
                f"firestore project {self.project} database {self.firestore_database} "
                f"collection {self.firestore_collection}"
                + (f" (emulator {emulator})" if emulator else "")
            )
        if self.queue == "pubsub":
            emulator = os.environ.get("PUBSUB_EMULATOR_HOST")
            parts.append(
                f"pubsub topic projects/{self.project}/topics/{self.pubsub_topic} "
                f"subscription {self.pubsub_subscription}"
                + (f" (emulator {emulator})" if emulator else "")
            )
        return f"store={self.store} queue={self.queue}: " + "; ".join(parts)

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> BackendSettings:
        e = dict(os.environ if env is None else env)
        d = BackendSettings()
        return BackendSettings(
            store=e.get("LONGRUN_STORE", d.store),
            queue=e.get("LONGRUN_QUEUE", d.queue),
            sqlite_path=Path(e.get("LONGRUN_SQLITE_PATH", str(d.sqlite_path))),
            project=e.get("GOOGLE_CLOUD_PROJECT", d.project),
            firestore_database=e.get("LONGRUN_FIRESTORE_DATABASE", d.firestore_database),
            firestore_collection=e.get("LONGRUN_FIRESTORE_COLLECTION", d.firestore_collection),
            firestore_timeout=float(e.get("LONGRUN_FIRESTORE_TIMEOUT", d.firestore_timeout)),
            pubsub_topic=e.get("LONGRUN_PUBSUB_TOPIC", d.pubsub_topic),
            pubsub_subscription=e.get("LONGRUN_PUBSUB_SUBSCRIPTION", d.pubsub_subscription),
            pubsub_dead_letter_topic=e.get(
                "LONGRUN_PUBSUB_DEAD_LETTER_TOPIC", d.pubsub_dead_letter_topic
            ),
            pubsub_pull=e.get("LONGRUN_PUBSUB_PULL", d.pubsub_pull),
            max_deliveries=int(e.get("LONGRUN_MAX_DELIVERIES", d.max_deliveries)),
            visibility_timeout=float(e.get("LONGRUN_VISIBILITY_TIMEOUT", d.visibility_timeout)),
            cache_max_bytes=int(e.get("LONGRUN_CACHE_MAX_BYTES", d.cache_max_bytes)),
            outage_retry_max=float(e.get("LONGRUN_OUTAGE_RETRY_MAX", d.outage_retry_max)),
            message_signing_keys=(
                SigningKeys.parse(e["LONGRUN_MESSAGE_SIGNING_KEYS"])
                if e.get("LONGRUN_MESSAGE_SIGNING_KEYS")
                else None
            ),
        )


#: Verified ID tokens kept (by sha256) until they expire.
DEFAULT_TOKEN_CACHE_ENTRIES = 10_000
#: Seconds an API key's record is reused before it is read again (how long a
#: revocation made through another server takes to reach this one).
DEFAULT_API_KEY_CACHE_TTL = 5.0


@dataclass(frozen=True)
class AuthenticationSettings:
    """How callers prove who they are (docs/security.md). Nothing set: no
    authentication, every caller may do everything (`make run`)."""

    #: The exact `aud` ID tokens must carry; None: ID tokens are not accepted.
    oidc_audience: str | None = None
    #: Issuers whose tokens are checked with `oidc_certs_url`.
    oidc_issuers: tuple[str, ...] = GOOGLE_ISSUERS
    oidc_certs_url: str = GOOGLE_CERTS_URL
    #: Other issuers, each with its JWKS URL: ((issuer, url), ...).
    oidc_jwks: tuple[tuple[str, str], ...] = ()
    max_token_lifetime: int = DEFAULT_MAX_TOKEN_LIFETIME
    token_cache_entries: int = DEFAULT_TOKEN_CACHE_ENTRIES
    #: Accept API keys (kept in the operation store's backend).
    api_keys: bool = False
    api_key_cache_ttl: float = DEFAULT_API_KEY_CACHE_TTL
    #: TOML file of groups and role bindings (reloaded on SIGHUP).
    policy_file: Path | None = None
    #: Requests per second each authenticated principal may make (this
    #: server's token bucket; 0: no limit), with bursts of `quota_burst`.
    quota_requests_per_second: float = 200.0
    quota_burst: int = 400
    #: Unfinished operations one principal may have created (counted in the
    #: store, so across servers; 0: no limit).
    quota_open_operations: int = 10_000

    @property
    def configured(self) -> bool:
        return bool(self.oidc_audience) or self.api_keys

    def oidc_issuer_keys(self) -> dict[str, str]:
        """issuer -> URL of its keys."""
        keys = dict.fromkeys(self.oidc_issuers, self.oidc_certs_url)
        keys.update(dict(self.oidc_jwks))
        return keys

    def check(self) -> None:
        if self.policy_file is not None and not self.configured:
            raise ValueError(
                "a policy file needs authentication: set --oidc-audience and/or --api-keys"
            )
        if self.oidc_audience is not None and not self.oidc_audience.strip():
            raise ValueError("--oidc-audience must not be empty")
        if self.token_cache_entries < 0 or self.api_key_cache_ttl < 0:
            raise ValueError("cache bounds must be >= 0")
        if self.quota_requests_per_second < 0 or self.quota_open_operations < 0:
            raise ValueError("quotas must be >= 0 (0: no limit)")
        if self.quota_requests_per_second and self.quota_burst < 1:
            raise ValueError("--quota-burst must be at least 1")


#: --tls-client-auth values: do not ask for a client certificate; ask for one
#: and verify it when sent (HTTPS only: grpcio's server API cannot make it
#: optional, so the gRPC port does not ask); require a verified one.
CLIENT_AUTH_MODES = ("none", "optional", "require")


@dataclass(frozen=True)
class TlsSettings:
    """The certificate and key files a listener serves (PEM), and the CA
    that client certificates must chain to (mTLS). The files are read again
    when they change (server/longrun_server/tls.py)."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None
    client_auth: str = "none"

    def check(self) -> None:
        """ValueError naming the flag when the settings do not fit together."""
        if self.client_auth not in CLIENT_AUTH_MODES:
            raise ValueError(
                f"--tls-client-auth must be one of {', '.join(CLIENT_AUTH_MODES)}, "
                f"got {self.client_auth!r}"
            )
        if self.client_auth != "none" and self.client_ca_file is None:
            raise ValueError(f"--tls-client-auth {self.client_auth} needs --tls-client-ca")
        if self.client_auth == "none" and self.client_ca_file is not None:
            raise ValueError("--tls-client-ca needs --tls-client-auth optional or require")


@dataclass(frozen=True)
class ServerSettings:
    address: str = "localhost:50051"
    #: TLS on the gRPC port and the HTTP gateway; None: plaintext.
    tls: TlsSettings | None = None
    #: Listen on a non-loopback address without authentication (Cloud Run's
    #: word): the operator says something else authenticates callers.
    allow_unauthenticated: bool = False
    #: Seconds after which a stored but unclaimed operation is published again.
    redispatch_after: float = 30.0
    #: How often the sweeper looks for undispatched work and expired leases.
    sweep_interval: float = 1.0
    #: How often the sweeper reads the RUNNING operations to judge their leases.
    lease_check_interval: float = 2.0
    #: How long finished operations are kept (AIP-151 suggests 30 days).
    retention: float = 30 * 86400.0
    #: Longest WaitOperation when the caller gives no timeout and no deadline.
    max_wait: float = 600.0
    page_token_secret: bytes = field(default=b"", repr=False)
    #: Let several server processes listen on the same gRPC (and HTTP) port
    #: (SO_REUSEPORT: the kernel spreads new connections over them).
    reuse_port: bool = False
    grace: float = 5.0
    max_concurrent_rpcs: int = 100_000
    #: Largest message the server sends (grpc.max_send_message_length), and
    #: so the largest response the HTTP gateway's loopback channel accepts.
    #: 4 MiB is what gRPC clients accept by default.
    max_send_message_bytes: int = DEFAULT_MESSAGE_BYTES
    #: Largest request the server accepts (grpc.max_receive_message_length);
    #: also the HTTP gateway's largest request body.
    max_receive_message_bytes: int = DEFAULT_MESSAGE_BYTES
    #: Serialized bytes of operations one ListOperations page may hold before
    #: it ends early with a next_page_token; 0: the max send size less
    #: PAGE_HEADROOM_BYTES.
    list_page_max_bytes: int = 0
    #: Bytes the server's cache of Operation views may hold.
    view_cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES
    #: Rows one ListOperations call may scan (longrun_core.store.ScanBudget).
    list_scan_budget: int = DEFAULT_LIST_SCAN_BUDGET
    #: The project a CreateJob without `parent` goes to (unless the caller
    #: may create in exactly one project: then that one).
    default_project: str = "default"
    # gRPC connections (seconds): ping an idle client this often and drop it
    # if the ping is not answered in time (a peer gone without a FIN); close
    # a connection without calls for this long, or older than this (after
    # the longest WaitOperation may finish); drop one whose HTTP/2 handshake
    # does not complete in time.
    grpc_keepalive_time: float = 120.0
    grpc_keepalive_timeout: float = 20.0
    grpc_max_connection_idle: float = 300.0
    grpc_max_connection_age: float = 1800.0
    grpc_handshake_timeout: float = 10.0
    # HTTP/JSON gateway connections (server/longrun_server/rest_connections.py).
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    http_idle_timeout: float = 60.0
    http_max_connections: int = 1000
    #: Exact origins whose pages may call the HTTP gateway (server/cors.py); empty: none.
    cors_allowed_origins: tuple[str, ...] = ()
    #: Serve the operations console at /console/ on the HTTP gateway.
    console: bool = True
    #: How often the operation store is probed for health (grpc.health.v1).
    health_interval: float = 2.0
    #: A probe taking longer than this counts as failed.
    health_timeout: float = 10.0
    #: After a storage outage, how long leases that expired are left to their
    #: workers (who could not renew them meanwhile) before they are taken back.
    outage_lease_grace: float = 15.0
    #: Furthest ahead a CreateJob schedule_time may be (Cloud Tasks: 30 days).
    max_schedule_ahead: float = 30 * 86400.0
    #: ResumeQueue republishes the queue's waiting operations at once and
    #: again this many seconds later (past the workers' --queue-refresh).
    queue_resume_repeat: float = 2.0
    #: Most on-time publish timers the dispatcher holds at once (work due
    #: within two sweep intervals); past that, the sweeper publishes it.
    dispatch_timers: int = 10_000
    #: QueueStats: each count (waiting, running) stops at this many.
    queue_stats_limit: int = 10_000
    #: ListDeadLetters reads at most this many dead letters per call.
    dead_letters_scan: int = 1_000
    auth: AuthenticationSettings = field(default_factory=AuthenticationSettings)

    @property
    def authentication_configured(self) -> bool:
        """Whether callers must authenticate: ID tokens, API keys, or a
        required client certificate (the exposure check's question,
        server/longrun_server/exposure.py)."""
        return self.auth.configured or (self.tls is not None and self.tls.client_auth == "require")

    @property
    def page_budget(self) -> int:
        """Bytes of operations a ListOperations page may hold."""
        return self.list_page_max_bytes or self.max_send_message_bytes - PAGE_HEADROOM_BYTES

    def check(self) -> None:
        """ValueError naming the setting when the limits do not fit together."""
        self.auth.check()
        if self.tls is not None:
            self.tls.check()
        if self.queue_stats_limit < 1 or self.dead_letters_scan < 1:
            raise ValueError("queue_stats_limit and dead_letters_scan must be at least 1")
        if self.max_send_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(f"max_send_message_bytes must be at least {MIN_MESSAGE_BYTES}")
        if self.max_receive_message_bytes < MIN_MESSAGE_BYTES:
            raise ValueError(f"max_receive_message_bytes must be at least {MIN_MESSAGE_BYTES}")
        if self.list_page_max_bytes < 0 or not (
            0 < self.page_budget <= self.max_send_message_bytes - PAGE_HEADROOM_BYTES
        ):
            raise ValueError(
                f"list_page_max_bytes must be at most max_send_message_bytes - "
                f"{PAGE_HEADROOM_BYTES} ({self.max_send_message_bytes - PAGE_HEADROOM_BYTES}), "
                f"got {self.list_page_max_bytes}"
            )
