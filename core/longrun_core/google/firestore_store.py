"""Firestore operation store (see longrun_core.store for the seam and its guarantees).

Layout
    `{collection}/{operation id}`: one document per operation holding every
    `OperationRecord` field (bytes as bytes, datetimes as timestamps, labels
    as a map, state as its integer) plus the query fields `done` (bool),
    `error_code` (int or null) and `label_pairs` (one "key=value" string per
    label, for `labels.KEY = "V"` filters). `expire_time` is a timestamp field, so a
    production TTL policy can use it (firestore.indexes.json declares it).
    `{collection}_request_ids/{sha256(project "/" request_id)}`: the request-id
    reservation, holding the operation id and the request fingerprint (a
    request id is unique within its project; the default project keeps the
    key `sha256(request_id)` it had before operations had a project).
    `{collection}_settings/{name}`: secrets every server on this store
    shares, e.g. the page-token key (longrun_core.shared_secrets).
    Documents without `project` (written before it existed) belong to the
    default project: `get` reads them so, and every rewrite stores the
    field. A list limited to projects finds them only once rewritten
    (lists of every project, the default without authentication, do).

Indexes and TTL (production; the emulator needs none)
    firestore.indexes.json at the repository root holds the composite indexes
    `due_for_dispatch` needs, (state, dispatch_due_time) and
    (state, lease_expire_time), and those of filtered lists: (done |
    state | task | label_pairs array-contains, create_time desc), one per
    field a list filter pushes down (longrun_core.filtering.firestore);
    unfiltered lists and `delete_expired` use single-field indexes. Lists
    limited to projects add `project ==` (one project) or `project in`
    (several, at most `MAX_IN_PROJECTS`) in front: (project, create_time
    desc) and (project, done | state | task | label_pairs, create_time desc).
    tests/integration/test_firestore_indexes.py checks, with the emulator's
    index-usage report, that every query this store runs has its index
    declared there (the emulator itself runs any query). Documents written
    before `label_pairs` existed lack it and are not found by label filters
    until rewritten. The file also enables a TTL policy on `expire_time` and
    exempts the blob fields from indexing. Deploy it with
    `firebase deploy --only firestore:indexes`, or set the TTL policy alone with
    `gcloud firestore fields ttls update expire_time --collection-group=operations
    --enable-ttl`. Rename "operations" there if `firestore_collection` differs.
    A TTL deletion can lag by days, so `delete_expired` still removes expired
    operations (with their reservations). A TTL deletion leaves the
    reservation behind; the next create with that request id takes it over
    (see request_id below).

Client
    The synchronous `google.cloud.firestore.Client`, driven from a private
    thread pool. Document listeners (`on_snapshot`) exist only on the sync
    client, and watch needs them; one client means one channel and one set of
    credentials for reads, writes and listeners. The sync client is not bound
    to an event loop (AsyncClient's grpc.aio channel is bound to the loop that
    created it). Every verb is one or two short RPCs, and the pool size bounds
    how many run at once. An awaiting coroutine that is cancelled does not
    cancel its RPC: the write may still land, like a crash just after sending
    it, which the guarantees below cover.

Guarantees
    * Conflict: every change is a single-document write guarded by a
      `last_update_time` precondition: the update_time of the snapshot whose
      `version` the transition started from. The precondition fails if anything
      wrote the document since then, so two writers never both win. The loser
      gets False from `_replace_if_version` and the `OperationStore.update` loop
      re-reads and re-applies. There are no transactions: contended
      transactions lock pessimistically and are pathological on the emulator.
    * Retries and redelivery: if a commit succeeded but its response was lost,
      the client library's retry fails the precondition; the CAS loop then
      re-reads and re-applies its transition to the record it already wrote.
      Transitions are idempotent or fenced, so nothing is applied twice.
    * request_id: the reservation and the operation are created in ONE batched
      commit (two `create` writes; a batch is atomic without being a
      transaction). Of two racing creates with one request id exactly one
      commit succeeds. The loser reads the reservation, then the operation it
      names, and returns `check_duplicate(existing, new)`. The operation
      exists whenever its reservation does, so there is no window to retry
      through. The exception is an operation removed outside this store (a
      TTL policy): then the stale reservation is taken over in another atomic
      batch, guarded by its update_time.
    * Crash: each verb is one atomic commit, so a crash leaves the old or the
      new documents and never half of a create or a delete (the operation and
      its reservation are deleted together).
    * Leases: `leased` lists RUNNING records for the sweeper, which judges
      them by their `version` on its own monotonic clock
      (longrun_core.leases); `lease_expire_time` only orders that query.
      `store_time` estimates the server's clock from the read and commit
      times of recent responses, for skew warnings only.
    * Watch: one document listener per watched operation, shared by all
      waiters in this process through `WatchHub` and stopped after the last
      waiter leaves. A listener is one target of a shared `Listen` stream
      (google/listen_stream.py), not a stream and a thread of its own: adding
      and removing one is a message on an open stream. `start_source`
      returns only once Firestore said the target is CURRENT, so a change
      made after the waiter's next read always produces a later event that
      wakes it; a broken stream is opened again and wakes every waiter to
      read again. Writes made through this store wake local waiters at
      once, and the listener's echo of such a write is suppressed. Cost
      grows with the number of operations watched at once, not with the
      number of waiters. Listen streams run on dedicated `ListenClient`s,
      each on its own connection and separate from the CRUD client, with
      at most `listeners_per_client` (90) targets each.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import functools
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, fields
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

import grpc
from google.api_core import exceptions as gexc
from google.cloud import firestore
from google.cloud.firestore_v1.base_query import FieldFilter
from google.cloud.firestore_v1.field_path import FieldPath
from google.rpc import status_pb2

from longrun_core import transitions
from longrun_core.clock import from_micros, to_micros
from longrun_core.errors import Aborted, AlreadyExists, Unavailable
from longrun_core.filtering.firestore import LABEL_PAIRS, label_pair
from longrun_core.google.collection_client import TRANSIENT
from longrun_core.google.list_values import DocValues, doc_position, value_fields
from longrun_core.google.listen_stream import ListenStream
from longrun_core.google.raw_firestore import RawFirestore
from longrun_core.model import OperationRecord, State, WaitReason, evolve
from longrun_core.names import DEFAULT_PROJECT, parse_operation_name, watch_key
from longrun_core.queue import Transition
from longrun_core.settings import BackendSettings
from longrun_core.slots import (
    admit,
    bucket_id,
    is_live,
    queue_slot_id,
    slots_of,
    without_dead,
)
from longrun_core.store import (
    CreateResult,
    Cursor,
    ListPage,
    OperationStore,
    QueueReady,
    RecordFilter,
    ScanBudget,
    Window,
    as_records,
    check_duplicate,
    in_project,
    next_version,
    not_found,
    scan_page,
    watch_key_of,
)
from longrun_core.transitions import (
    ConcurrencyLimited,
    SlotRequest,
)
from longrun_core.watch import WatchHub

log = logging.getLogger("longrun.firestore")

T = TypeVar("T")
R = TypeVar("R")

_FIELDS = [f.name for f in fields(OperationRecord)]
_DEFAULTS: dict[str, Any] = {
    f.name: (f.default_factory() if f.default_factory is not MISSING else f.default)
    for f in fields(OperationRecord)
    if f.default is not MISSING or f.default_factory is not MISSING
}
_TIME_FIELDS = frozenset(
    n for n in _FIELDS if n.endswith("_time") or n in ("run_after", "dispatch_due_time")
)
#: Durations, stored as whole microseconds (Firestore has no duration type).
_DURATION_FIELDS = frozenset({"lease_duration", "dispatch_deadline"})
_MICRO = timedelta(microseconds=1)
#: How old the last server time seen may be before `store_time` asks anew.
SERVER_TIME_MAX_AGE = 60.0
#: Claims that lost a race for a queue's rate bucket document retry after a
#: random pause of up to this many seconds times the round (at most 8).
BUCKET_BACKOFF = 0.005
#: A document id no operation has (ids are 32 hex digits), read for its read time.
CLOCK_PROBE_ID = "clock-probe"

#: Errors that mean "the backend could not be reached; retry later".
_TRANSIENT = TRANSIENT
#: A guarded write whose precondition no longer holds.
_STALE = (gexc.FailedPrecondition, gexc.NotFound, gexc.Aborted)
#: Read-change-write rounds giving back a slot before leaving it to the next claim.
RELEASE_ROUNDS = 5

#: Documents one list query reads at most (one RPC of a list scan).
SCAN_WINDOW = 300
#: List-scan windows (queries) in flight at once, over all list calls.
SCAN_CONCURRENCY = 4
#: How long one call may take before it counts as an outage (Unavailable).
CALL_TIMEOUT = 10.0
#: How long `watch` waits for a new listener's initial snapshot.
LISTEN_READY_TIMEOUT = 10.0
#: How many (version, update_time) pairs `_read` remembers for the CAS write.
SEEN_CACHE_SIZE = 10_000
#: Firestore's largest document, and its largest single field value (the
#: emulator enforces the latter; production both).
MAX_DOCUMENT_BYTES = 1_048_576
MAX_FIELD_BYTES = 1_048_487
#: Room kept for field names, the document name and what approx_bytes misses.
DOCUMENT_MARGIN = 8 * 1024
#: Listeners per listen client. Each listener is one gRPC stream, and
#: Firestore allows 100 concurrent streams per connection; past that, new
#: streams (and every other call on that connection) stall.
LISTENERS_PER_CLIENT = 90
#: gRPC options of a listen client's channel: its own connection (a local
#: subchannel pool) so that its streams count against no other channel.
_LISTEN_CHANNEL_OPTIONS = [
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]


class FirestorePushdown(Protocol):
    """What a filter's optional `to_firestore()` returns: the seam for pushing
    a ListOperations filter down into the query.

    `apply` adds `where` clauses to the query it is given (which is already
    ordered by create_time desc, __name__ desc, and must keep that order; a
    range filter on another field needs a composite index). `exact` says
    whether the pushed-down part is the whole filter; if not, the store also
    calls `matches` on every record the query returns."""

    exact: bool

    def apply(self, query: Any) -> Any: ...


def to_document(rec: OperationRecord) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(rec, name)
        if name == "labels":
            value = dict(value)
        elif name in ("state", "wait_reason"):
            value = int(value)
        elif name in _DURATION_FIELDS and value is not None:
            value = value // _MICRO
        doc[name] = value
    doc["done"] = rec.done
    doc[LABEL_PAIRS] = sorted(label_pair(k, v) for k, v in rec.labels.items())
    doc["error_code"] = (
        status_pb2.Status.FromString(rec.error).code if rec.done and rec.error else None
    )
    return doc


def from_document(doc: dict[str, Any]) -> OperationRecord:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name not in doc:
            if name not in _DEFAULTS:
                raise ValueError(f"stored operation lacks required field {name!r}")
            continue
        value = doc[name]
        if name in _TIME_FIELDS:
            value = None if value is None else _plain_datetime(value)
        elif name in _DURATION_FIELDS:
            value = None if value is None else timedelta(microseconds=int(value))
        elif name == "labels":
            value = {str(k): str(v) for k, v in (value or {}).items()}
        elif name == "state":
            value = State(int(value))
        elif name == "wait_reason":
            value = WaitReason(int(value))
        elif name == "cancel_requested":
            value = bool(value)
        elif name in ("params", "response", "error") and value is not None:
            value = bytes(value)
        values[name] = value
    return OperationRecord(**values)


def _bucket_time(snap: Any, name: str) -> datetime | None:
    """A time field of a rate bucket document (None: absent or never set)."""
    stored = snap.to_dict().get(name) if snap.exists else None
    return None if stored is None else _plain_datetime(stored)


def _plain_datetime(value: datetime) -> datetime:
    """Firestore returns DatetimeWithNanoseconds; records hold plain UTC datetimes."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return from_micros(to_micros(value))


def request_doc_id(project: str, request_id: str) -> str:
    """Request ids are client-chosen strings (UUIDs: no '/'), unique within a
    project; hash the pair into a safe document id. The default project keeps
    the id reservations had before projects existed."""
    key = request_id if project == DEFAULT_PROJECT else f"{project}/{request_id}"
    return hashlib.sha256(key.encode()).hexdigest()


class ListenClient(firestore.Client):  # type: ignore[misc]
    """A Firestore client on a gRPC connection of its own, for listeners.

    The library builds every client's channel with the same options, and gRPC
    shares one connection among channels with equal options. Listeners
    beyond 100 on that connection would stall it for everyone, CRUD
    included. This overrides the library's (private) channel factory to add
    `grpc.use_local_subchannel_pool`. If that hook ever changes, it falls
    back to the library's own channel, which still works below 100
    listeners per process."""

    def _firestore_api_helper(self, transport: Any, client_class: Any, client_module: Any) -> Any:
        try:
            if self._firestore_api_internal is None:
                if self._emulator_host is not None:
                    channel = grpc.insecure_channel(
                        self._emulator_host, options=_LISTEN_CHANNEL_OPTIONS
                    )
                else:
                    channel = transport.create_channel(
                        self._target, credentials=self._credentials, options=_LISTEN_CHANNEL_OPTIONS
                    )
                self._transport = transport(host=self._target, channel=channel)
                self._firestore_api_internal = client_class(
                    transport=self._transport, client_options=self._client_options
                )
                client_module._client_info = self._client_info
            return self._firestore_api_internal
        except AttributeError:  # the library changed: use its channel
            log.warning("cannot give the listen client its own connection", exc_info=True)
            return super()._firestore_api_helper(transport, client_class, client_module)


class _ListenChannel:
    """A listen client (its own connection) and the one Listen stream on it
    that carries its listeners' targets (google/listen_stream.py)."""

    __slots__ = ("client", "listeners", "stream")

    def __init__(self, client: Any, stream: ListenStream) -> None:
        self.client = client
        self.stream = stream
        self.listeners = 0

    @staticmethod
    def open(*, project: str, database: str) -> _ListenChannel:
        """Blocking: builds the client and its channel."""
        client = ListenClient(project=project, database=database)
        channel = client._firestore_api._transport.grpc_channel
        stream = ListenStream(channel, client._database_string, tuple(client._rpc_metadata))
        return _ListenChannel(client, stream)

    def close(self) -> None:
        self.stream.close()
        transport = getattr(getattr(self.client, "_firestore_api", None), "_transport", None)
        close = getattr(transport, "close", None)
        if callable(close):
            close()


class _Listener:
    __slots__ = ("channel", "local_version", "name", "ready", "target")

    def __init__(self, name: str, ready: asyncio.Future[None], channel: _ListenChannel) -> None:
        self.name = name
        self.ready = ready
        self.channel = channel
        #: The listen stream's target id while listening.
        self.target: int | None = None
        #: Highest version this store wrote (and announced locally) meanwhile.
        self.local_version = 0


class FirestoreOperationStore(OperationStore):
    def __init__(
        self,
        *,
        project: str,
        database: str = "(default)",
        collection: str = "operations",
        client: Any | None = None,
        hub: WatchHub | None = None,
        max_workers: int = 32,
        listeners_per_client: int = LISTENERS_PER_CLIENT,
        call_timeout: float = CALL_TIMEOUT,
    ) -> None:
        super().__init__(hub or WatchHub(self._start_listener))
        self.project = project
        #: Seconds a call may take before it raises Unavailable (an outage).
        self.call_timeout = call_timeout
        self.database = database
        self.collection = collection
        self._client: Any = client or firestore.Client(project=project, database=database)
        self._owns_client = client is None
        self._ops = self._client.collection(collection)
        #: Reads and guarded writes of operation documents on raw protobufs.
        self._raw = RawFirestore(self._client)
        self._rids = self._client.collection(f"{collection}_request_ids")
        #: Concurrency slot documents (longrun_core.slots), one per limited
        #: queue and per (queue, concurrency key).
        self._slots = self._client.collection(f"{collection}_slots")
        #: Secrets every process on this store shares (longrun_core.shared_secrets).
        self._settings = self._client.collection(f"{collection}_settings")
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="firestore")
        #: List-scan windows in flight at once, so that many slow lists never
        #: take the pool's threads from the other verbs.
        self._scan_gate = asyncio.Semaphore(SCAN_CONCURRENCY)
        self._seen: collections.OrderedDict[str, tuple[int, Any]] = collections.OrderedDict()
        self._listeners: dict[str, _Listener] = {}
        self._listen_channels: list[_ListenChannel] = []
        self.listeners_per_client = listeners_per_client
        self._closed = False
        #: How many listeners were ever started (tests check sharing with it).
        self.listeners_started = 0
        #: The latest server time a response told (read or commit time), and
        #: this process's monotonic time when it arrived.
        self._server_time: tuple[datetime, float] | None = None

    @classmethod
    def from_settings(cls, settings: BackendSettings) -> FirestoreOperationStore:
        return cls(
            project=settings.project,
            database=settings.firestore_database,
            collection=settings.firestore_collection,
            call_timeout=settings.firestore_timeout,
        )

    def max_outcome_bytes(self, rec: OperationRecord) -> int | None:
        """One document holds the whole record: the outcome gets what its
        params, labels and fields leave of Firestore's 1 MiB."""
        rest = rec.approx_bytes() - len(rec.response or b"") - len(rec.error or b"")
        return max(0, min(MAX_FIELD_BYTES, MAX_DOCUMENT_BYTES - rest - DOCUMENT_MARGIN))

    @property
    def active_listeners(self) -> int:
        """How many document listeners are open now (one per watched operation)."""
        return len(self._listeners)

    # ---- plumbing ----

    async def _call(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise Unavailable("the Firestore store is closed")
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.call_timeout):
                return await loop.run_in_executor(self._pool, fn)
        except _TRANSIENT as exc:
            raise Unavailable(f"Firestore is unavailable: {exc}") from exc
        except TimeoutError as exc:
            # The client library retries an unreachable backend for up to a
            # minute; an outage answers sooner. The call may still land later,
            # like a crash just after sending it (see Guarantees).
            raise Unavailable(f"Firestore did not answer within {self.call_timeout:g}s") from exc

    def _saw_server_time(self, value: Any) -> None:
        if isinstance(value, datetime):
            self._server_time = (_plain_datetime(value), time.monotonic())

    def _remember(self, op_id: str, version: int, update_time: Any) -> None:
        self._seen[op_id] = (version, update_time)
        self._seen.move_to_end(op_id)
        while len(self._seen) > SEEN_CACHE_SIZE:
            self._seen.popitem(last=False)

    def _wrote(self, op_id: str, version: int, update_time: Any) -> None:
        self._saw_server_time(update_time)
        self._remember(op_id, version, update_time)
        listener = self._listeners.get(watch_key(op_id))
        if listener is not None:
            listener.local_version = max(listener.local_version, version)

    async def _snapshot(self, op_id: str) -> Any:
        ref = self._ops.document(op_id)
        snap = await self._call(functools.partial(self._raw.get, ref, self.call_timeout))
        if snap.exists:
            self._remember(op_id, int(snap.get("version")), snap.update_time)
        else:
            self._seen.pop(op_id, None)
        return snap

    async def start(self) -> None:
        if self._closed:
            raise Unavailable("the Firestore store is closed; create a new one")

    async def close(self) -> None:
        if self._closed:
            return
        for listener in list(self._listeners.values()):
            self._stop_listener(listener)
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._shutdown)

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True)
        channels, self._listen_channels = self._listen_channels, []
        for channel in channels:
            channel.close()
        clients = [self._client] if self._owns_client else []
        for client in clients:
            transport = getattr(getattr(client, "_firestore_api", None), "_transport", None)
            close = getattr(transport, "close", None)
            if callable(close):
                close()

    async def shared_secret(self, name: str, fresh: bytes) -> bytes:
        """The secret kept as `{collection}_settings/{name}`, `fresh` if
        there was none (created with `create`: of racing processes one
        wins and the others read its secret)."""
        ref = self._settings.document(name)
        try:
            await self._call(functools.partial(ref.create, {"value": fresh}))
            return fresh
        except gexc.AlreadyExists:
            pass
        snap = await self._call(ref.get)
        value = snap.get("value") if snap.exists else None
        if not isinstance(value, bytes) or not value:
            raise Unavailable(f"the shared setting {name!r} is unreadable; delete it to renew it")
        return value

    async def on_written(self, name: str) -> None:
        self.hub.notify(watch_key_of(name))

    # ---- primitives ----

    async def _read(self, op_id: str) -> OperationRecord | None:
        snap = await self._snapshot(op_id)
        return from_document(snap.to_dict()) if snap.exists else None

    async def _insert(self, rec: OperationRecord) -> CreateResult:
        if rec.request_id is None:
            ref = self._ops.document(rec.id)
            doc = to_document(rec)
            try:
                written = await self._call(
                    functools.partial(self._raw.create, ref, doc, self.call_timeout)
                )
            except gexc.AlreadyExists as exc:
                raise _exists(rec) from exc
            self._wrote(rec.id, rec.version, written)
        else:
            existing = await self._insert_with_request_id(rec, rec.request_id)
            if existing is not None:
                return existing
        await self.on_written(rec.name)
        return CreateResult(rec, created=True)

    async def _insert_with_request_id(
        self, rec: OperationRecord, request_id: str
    ) -> CreateResult | None:
        """Create `rec` and its reservation atomically; None when created, else
        the duplicate's result (or AlreadyExists)."""
        op_ref = self._ops.document(rec.id)
        rid_ref = self._rids.document(request_doc_id(rec.project, request_id))
        doc = to_document(rec)
        reservation = {
            "request_id": request_id,
            "project": rec.project,
            "operation_id": rec.id,
            "request_hash": rec.request_hash,
            "create_time": rec.create_time,
        }
        takeover: Any = None  # update_time of a stale reservation to replace
        for _ in range(self.max_conflicts):
            writes = [
                self._raw.create_write(rid_ref, reservation)
                if takeover is None
                else self._raw.update_write(rid_ref, reservation, takeover),
                self._raw.create_write(op_ref, doc),
            ]
            try:
                results = await self._call(
                    functools.partial(self._raw.commit, writes, self.call_timeout)
                )
            except gexc.AlreadyExists:
                pass  # the reservation or the operation id exists: find out which
            except _STALE:
                pass  # the stale reservation changed meanwhile: look again
            else:
                self._wrote(rec.id, rec.version, results[-1])
                return None
            takeover = None
            rid_snap = await self._call(rid_ref.get)
            if not rid_snap.exists:
                if await self._read(rec.id) is not None:
                    raise _exists(rec)
                continue  # the reservation went away meanwhile: try again
            target = str(rid_snap.get("operation_id"))
            if target == rec.id:
                # Ours: a commit whose response was lost and which the client retried.
                existing = await self._read(rec.id)
                if existing is not None:
                    return CreateResult(existing, created=True)
            else:
                existing = await self._read(target)
                if existing is not None and existing.project == rec.project:
                    return check_duplicate(existing, rec)
            # The reservation names an operation that no longer exists (removed
            # by a TTL policy, say): take it over, guarded by its update_time.
            takeover = rid_snap.update_time
            await asyncio.sleep(0)
        raise Aborted(f"request_id {request_id!r} is contended; retry")

    async def _replace_if_version(
        self,
        rec: OperationRecord,
        expected_version: int,
        *,
        previous: OperationRecord | None = None,
    ) -> bool:
        seen = self._seen.get(rec.id)
        if seen is None or seen[0] != expected_version:
            snap = await self._snapshot(rec.id)
            if not snap.exists or int(snap.get("version")) != expected_version:
                return False
            update_time = snap.update_time
        else:
            update_time = seen[1]
        ref = self._ops.document(rec.id)
        write = functools.partial(
            self._raw.update, ref, to_document(rec), update_time, self.call_timeout
        )
        try:
            written = await self._call(write)
        except _STALE:
            self._seen.pop(rec.id, None)
            return False
        self._wrote(rec.id, rec.version, written)
        return True

    async def claim_slot(
        self, name: str, transition: Transition, request: SlotRequest
    ) -> OperationRecord:
        """The claim, its slot entries and its rate token in ONE batched
        commit guarded by `last_update_time` preconditions on the operation
        and on every slot and bucket document read (or `create` for one not
        there yet): if anyone wrote any of them since they were read, nothing
        lands and it starts over (after a short random pause when a rate
        bucket is involved, so claims contending for it do not retry in
        lockstep). A slot document full of holders has its entries checked
        against their operations (longrun_core.slots: dead ones are dropped
        in the same commit) before the claim is refused; a claim refused for
        concurrency takes no token. A claim that must wait for a token
        reserves it and writes the record waiting (RATE_LIMITED) in the same
        commit, then raises RateLimited."""
        parsed = parse_operation_name(name)
        for round_ in range(self.max_conflicts):
            snap = await self._snapshot(parsed.id)
            if not snap.exists:
                raise not_found(name)
            current = from_document(snap.to_dict())
            if not in_project(current, parsed):
                raise not_found(name)
            new = next_version(current, transition)
            if new is None:
                return current
            batch = self._client.batch()
            wait: transitions.RateLimited | None = None
            if new.state is State.RUNNING:
                for slot_id, limit in slots_of(request):
                    await self._take_slot(batch, slot_id, limit, new, request)
                if request.rate is not None:
                    step = await self._rate_step(batch, current, new, request)
                    new = evolve(step.record, version=current.version + 1)
                    wait = step.wait
            option = self._client.write_option(last_update_time=snap.update_time)
            batch.update(self._ops.document(current.id), to_document(new), option=option)
            try:
                results = await self._call(batch.commit)
            except (*_STALE, gexc.AlreadyExists):
                self._seen.pop(current.id, None)
                await asyncio.sleep(
                    random.uniform(0, BUCKET_BACKOFF * min(round_ + 1, 8))
                    if request.rate is not None
                    else 0
                )
                continue
            self._wrote(new.id, new.version, results[-1].update_time)
            await self.on_written(new.name)
            if wait is not None:
                raise wait
            return new
        raise Aborted(f"operation {name!r} or its queue's slots changed too often; retry")

    async def _rate_step(
        self, batch: Any, current: OperationRecord, claimed: OperationRecord, request: SlotRequest
    ) -> transitions.RateStep:
        """The claim's rate step (transitions.rate_step) on the queue's bucket
        document as read now, its write added to `batch` guarded by that
        read; RateLimited (nothing taken) when no token can be reserved."""
        ref = self._slots.document(bucket_id(request.project, request.queue))
        snap = await self._call(ref.get)
        tat, start_tat = (_bucket_time(snap, "tat"), _bucket_time(snap, "start_tat"))
        step = transitions.rate_step(current, claimed, request, tat, start_tat)
        doc = {
            "project": request.project,
            "queue": request.queue,
            "tat": step.tat,
            "start_tat": step.start_tat,
        }
        if snap.exists:
            option = self._client.write_option(last_update_time=snap.update_time)
            batch.update(ref, doc, option=option)
        else:
            batch.create(ref, doc)
        return step

    async def rate_bucket_tat(self, project: str, queue: str) -> datetime | None:
        """The `tat` of a queue's rate bucket (longrun_core.rate_bucket), for
        diagnostics and tests; None: never used."""
        snap = await self._call(self._slots.document(bucket_id(project, queue)).get)
        return _bucket_time(snap, "tat")

    async def slot_holders(self, slot_id: str) -> dict[str, int]:
        """The entries of slot document `slot_id` (longrun_core.slots), for
        diagnostics and tests."""
        snap = await self._call(self._slots.document(slot_id).get)
        return (
            {str(k): int(v) for k, v in (snap.get("holders") or {}).items()} if snap.exists else {}
        )

    async def release_slot(self, ended: OperationRecord, request: SlotRequest) -> None:
        """Drop `ended`'s entry from its slot documents (guarded by their
        update time) once its stored record no longer runs that attempt."""
        current = await self._read(ended.id)
        if is_live(ended.attempt, current):
            return
        for slot_id, _ in slots_of(request):
            ref = self._slots.document(slot_id)
            for _ in range(RELEASE_ROUNDS):
                snap = await self._call(ref.get)
                holders = dict(snap.get("holders") or {}) if snap.exists else {}
                if holders.get(ended.id) != ended.attempt:
                    break
                del holders[ended.id]
                option = self._client.write_option(last_update_time=snap.update_time)
                try:
                    await self._call(
                        functools.partial(ref.update, {"holders": holders}, option=option)
                    )
                except _STALE:
                    continue
                break

    async def _take_slot(
        self, batch: Any, slot_id: str, limit: int, new: OperationRecord, request: SlotRequest
    ) -> None:
        """Add `new`'s attempt to slot `slot_id` in `batch` (guarded by the
        slot document as read now), or raise ConcurrencyLimited."""
        ref = self._slots.document(slot_id)
        snap = await self._call(ref.get)
        holders: dict[str, int] = (
            {str(k): int(v) for k, v in (snap.get("holders") or {}).items()} if snap.exists else {}
        )
        taken = admit(holders, new.id, new.attempt, limit)
        if taken is None:
            refs = [self._ops.document(op_id) for op_id in holders if op_id != new.id]
            got = await self._call(lambda: builtins.list(self._client.get_all(refs)))
            records = {g.id: (from_document(g.to_dict()) if g.exists else None) for g in got}
            holders = without_dead(holders, records)
            taken = admit(holders, new.id, new.attempt, limit)
        if taken is None:
            what = "queue" if slot_id == queue_slot_id(request.project, request.queue) else "key"
            subject = (
                f"queue {request.queue!r}"
                if what == "queue"
                else f"concurrency key {request.key!r} of queue {request.queue!r}"
            )
            raise ConcurrencyLimited(
                f"{subject} has {len(holders)} of {limit} attempts running", full=what
            )
        doc = {"project": request.project, "queue": request.queue, "holders": taken}
        if snap.exists:
            option = self._client.write_option(last_update_time=snap.update_time)
            batch.update(ref, doc, option=option)
        else:
            batch.create(ref, doc)

    async def _delete(self, op_id: str, *, project: str | None = None) -> bool:
        for _ in range(self.max_conflicts):
            snap = await self._snapshot(op_id)
            if not snap.exists:
                return False
            if project is not None and _project_of(snap) != project:
                return False
            if await self._delete_snapshot(snap):
                return True
            await asyncio.sleep(0)
        raise Aborted(f"operation {watch_key(op_id)!r} changed concurrently too often; retry")

    async def _delete_snapshot(self, snap: Any, rid_snap: Any = None) -> bool:
        """Delete the operation if it is unchanged since `snap`, with its
        request-id reservation if that still names it. False if it changed."""
        op_id = snap.id
        request_id = snap.get("request_id")
        batch = self._client.batch()
        batch.delete(
            snap.reference, option=self._client.write_option(last_update_time=snap.update_time)
        )
        if request_id is not None:
            if rid_snap is None:
                rid_ref = self._rids.document(request_doc_id(_project_of(snap), request_id))
                rid_snap = await self._call(rid_ref.get)
            if rid_snap.exists and rid_snap.get("operation_id") == op_id:
                option = self._client.write_option(last_update_time=rid_snap.update_time)
                batch.delete(rid_snap.reference, option=option)
        try:
            await self._call(batch.commit)
        except _STALE:
            return False
        self._seen.pop(op_id, None)
        return True

    # ---- queries ----

    def _list_query(self) -> Any:
        return self._ops.order_by("create_time", direction=firestore.Query.DESCENDING).order_by(
            FieldPath.document_id(), direction=firestore.Query.DESCENDING
        )

    async def list(
        self,
        *,
        page_size: int,
        after: Cursor | None,
        flt: RecordFilter | None = None,
        budget: ScanBudget | None = None,
        projects: frozenset[str] | None = None,
    ) -> ListPage:
        """See `OperationStore.list`. The pushed-down part of the filter is in
        `longrun_core.filtering.firestore`; a filter not wholly pushed down is
        checked on light documents (a projection without the payloads), and
        the full documents of those kept are read with one batched get.
        The project constraint is a `where` on `project` (`==` for one, `in`
        for up to `MAX_IN_PROJECTS`); a larger set is checked per document."""
        if projects is not None and not projects:
            return ListPage([], None)
        query = self._list_query()
        exact = True
        if projects is not None and len(projects) <= MAX_IN_PROJECTS:
            if len(projects) == 1:
                query = query.where(filter=FieldFilter("project", "==", next(iter(projects))))
            else:
                query = query.where(filter=FieldFilter("project", "in", sorted(projects)))
        elif projects is not None:
            flt = WithinProjects(flt, projects)
        if flt is not None:
            to_firestore = getattr(flt, "to_firestore", None)
            pushdown: FirestorePushdown | None = to_firestore() if to_firestore else None
            if (
                pushdown is not None
                and projects is not None
                and len(projects) > 1
                and any(op == "in" for _, op, _ in getattr(pushdown, "wheres", ()))
            ):
                # Two disjunctions (project in, state in) multiply past
                # Firestore's limit: the projects go down, the states are checked.
                pushdown = None
            if pushdown is not None:
                if getattr(pushdown, "matches_nothing", False):
                    return ListPage([], None)
                query = pushdown.apply(query)
                exact = bool(pushdown.exact)
            else:
                exact = False
        budget = budget or ScanBudget()
        if exact or flt is None:
            return await scan_page(
                self._windows(query, from_document, exact=True),
                page_size=page_size,
                after=after,
                budget=budget,
                position=Cursor.after,
                complete=as_records,
                window=SCAN_WINDOW,
                gate=self._scan_gate,
            )
        keep: Callable[[dict[str, Any]], bool]
        matches_values = getattr(flt, "matches_values", None)
        attrs: frozenset[str] | None = getattr(flt, "attrs", None)
        if matches_values is not None and attrs is not None:
            # Only the fields the filter reads, checked without building records.
            query = query.select(value_fields(attrs))
            keep = lambda doc: bool(matches_values(DocValues(doc)))  # noqa: E731
        else:
            query = query.select(_LIGHT_FIELDS)
            keep = lambda doc: flt.matches(_from_light_document(doc))  # noqa: E731
        return await scan_page(
            self._windows(query, _identity, exact=False),
            page_size=page_size,
            after=after,
            budget=budget,
            position=doc_position,
            complete=functools.partial(self._complete, flt),
            keep=keep,
            window=SCAN_WINDOW,
            gate=self._scan_gate,
        )

    def _windows(
        self, query: Any, convert: Callable[[dict[str, Any]], R], *, exact: bool
    ) -> Callable[[Cursor | None, int, int], Awaitable[Window[R]]]:
        """Window reads of a list scan: one query each, run and converted on
        the pool (`want` bounds what an exact query reads)."""

        async def fetch(cursor: Cursor | None, limit: int, want: int) -> Window[R]:
            q = query
            if cursor is not None:
                q = q.start_after({"create_time": cursor.create_time, "__name__": cursor.id})
            take = min(limit, want) if exact else limit
            docs = await self._call(functools.partial(_fetch_docs, q.limit(take)))
            last = doc_position(docs[-1]) if docs else None
            return Window([convert(d) for d in docs], len(docs), last, len(docs) < take)

        return fetch

    async def _complete(
        self, flt: RecordFilter, docs: Sequence[dict[str, Any]]
    ) -> builtins.list[OperationRecord]:
        """The full records of the documents a scan kept, in their order; one
        that changed meanwhile and no longer matches (or is gone) is left out."""
        ids = [str(d["id"]) for d in docs]
        refs = [self._ops.document(i) for i in ids]
        snaps = await self._call(lambda: builtins.list(self._client.get_all(refs)))
        by_id = {s.id: from_document(s.to_dict()) for s in snaps if s.exists}
        return [by_id[i] for i in ids if i in by_id and flt.matches(by_id[i])]

    async def due_for_dispatch(self, now: datetime, limit: int) -> builtins.list[OperationRecord]:
        if limit <= 0:
            return []
        queued = (
            self._ops.where(filter=FieldFilter("state", "==", int(State.QUEUED)))
            .where(filter=FieldFilter("dispatch_due_time", "<=", now))
            .order_by("dispatch_due_time")
            .limit(limit)
        )
        snaps = await self._call(functools.partial(_fetch, queued))
        return [from_document(s.to_dict()) for s in snaps]

    async def count_open(self, creator: str, limit: int) -> int:
        if limit <= 0:
            return 0
        query = (
            self._ops.where(filter=FieldFilter("creator", "==", creator))
            .where(filter=FieldFilter("done", "==", False))
            .limit(limit)
        )
        return await self._call(functools.partial(_count, query))

    async def count_in_queue(self, project: str, queue: str, state: State, limit: int) -> int:
        if limit <= 0:
            return 0
        query = (
            self._ops.where(filter=FieldFilter("project", "==", project))
            .where(filter=FieldFilter("queue", "==", queue))
            .where(filter=FieldFilter("state", "==", int(state)))
            .limit(limit)
        )
        return await self._call(functools.partial(_count, query))

    async def ready_by_queue(self, now: datetime, limit: int) -> builtins.list[QueueReady]:
        if limit <= 0:
            return []
        # The single-field index on state; only the three fields needed are read.
        query = (
            self._ops.where(filter=FieldFilter("state", "==", int(State.QUEUED)))
            .select(["queue", "run_after", "create_time"])
            .limit(limit)
        )
        docs = await self._call(functools.partial(_fetch_docs, query))
        ready: dict[str, tuple[int, datetime]] = {}
        for doc in docs:
            since = doc.get("run_after") or doc.get("create_time")
            if since is None:
                continue
            since = _plain_datetime(since)
            if since > now:
                continue
            queue = str(doc.get("queue") or "default")
            count, oldest = ready.get(queue, (0, since))
            ready[queue] = (count + 1, min(oldest, since))
        return [QueueReady(q, n, oldest) for q, (n, oldest) in ready.items()]

    async def queued_in(
        self, project: str, queue: str, *, after: str = "", limit: int = 500
    ) -> builtins.list[OperationRecord]:
        if limit <= 0:
            return []
        query = (
            self._ops.where(filter=FieldFilter("project", "==", project))
            .where(filter=FieldFilter("queue", "==", queue))
            .where(filter=FieldFilter("state", "==", int(State.QUEUED)))
            .order_by("__name__")
        )
        if after:
            query = query.start_after({"__name__": self._ops.document(after)})
        snaps = await self._call(functools.partial(_fetch, query.limit(limit)))
        return [from_document(s.to_dict()) for s in snaps]

    async def leased(self, limit: int) -> builtins.list[OperationRecord]:
        if limit <= 0:
            return []
        query = (
            self._ops.where(filter=FieldFilter("state", "==", int(State.RUNNING)))
            .order_by("lease_expire_time")
            .limit(limit)
        )
        snaps = await self._call(functools.partial(_fetch, query))
        for snap in snaps:
            self._remember(snap.id, int(snap.get("version")), snap.update_time)
        if snaps:
            self._saw_server_time(snaps[-1].read_time)
        return [from_document(s.to_dict()) for s in snaps]

    async def store_time(self) -> datetime | None:
        seen = self._server_time
        if seen is None or time.monotonic() - seen[1] > SERVER_TIME_MAX_AGE:
            # A read of a document that need not exist tells the server's time.
            snap = await self._call(self._ops.document(CLOCK_PROBE_ID).get)
            self._saw_server_time(snap.read_time)
            seen = self._server_time
        if seen is None:
            return None
        return seen[0] + timedelta(seconds=time.monotonic() - seen[1])

    async def delete_expired(self, now: datetime, limit: int) -> int:
        if limit <= 0:
            return 0
        query = self._ops.where(filter=FieldFilter("expire_time", "<=", now)).limit(limit)
        snaps = await self._call(functools.partial(_fetch, query))
        if not snaps:
            return 0
        rid_refs = [
            self._rids.document(request_doc_id(_project_of(s), s.get("request_id")))
            for s in snaps
            if s.get("request_id") is not None
        ]
        rid_snaps: dict[str, Any] = {}
        if rid_refs:
            got = await self._call(lambda: list(self._client.get_all(rid_refs)))
            rid_snaps = {r.id: r for r in got}

        async def purge(snap: Any) -> bool:
            rid = snap.get("request_id")
            rid_snap = (
                rid_snaps.get(request_doc_id(_project_of(snap), rid)) if rid is not None else None
            )
            return await self._delete_snapshot(snap, rid_snap)

        deleted = await asyncio.gather(*(purge(s) for s in snaps))
        for snap, gone in zip(snaps, deleted, strict=True):
            if gone:
                await self.on_written(watch_key(snap.id))
        return sum(deleted)

    # ---- watch ----

    async def _start_listener(self, name: str) -> Callable[[], None]:
        op_id = parse_operation_name(name).id
        loop = asyncio.get_running_loop()
        channel = await self._listen_channel()
        listener = _Listener(name, loop.create_future(), channel)

        def on_event(event: str, version: int | None) -> None:
            # Runs on the listen stream's reader thread.
            # RuntimeError: the loop is closed, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._on_event, listener, event, version)

        listener.target = channel.stream.add(self._ops.document(op_id)._document_path, on_event)
        channel.listeners += 1
        self._listeners[name] = listener
        self.listeners_started += 1
        try:
            async with asyncio.timeout(LISTEN_READY_TIMEOUT):
                await asyncio.shield(listener.ready)
        except TimeoutError:
            log.warning("listener for %s was not current within %ss", name, LISTEN_READY_TIMEOUT)
            if not listener.ready.done():
                listener.ready.set_result(None)  # its next event will then wake waiters
        except BaseException:
            self._stop_listener(listener)
            raise
        return functools.partial(self._stop_listener, listener)

    def _on_event(self, listener: _Listener, event: str, version: int | None) -> None:
        if self._listeners.get(listener.name) is not listener:
            return  # stopped meanwhile
        if not listener.ready.done():
            if event == "changed":
                return  # the document as it was when the target was added
            # Current (or reset): the listener is live. Waiters that joined while
            # it started (they read before it was live) are woken to read again.
            self.hub.notify(listener.name)
            listener.ready.set_result(None)
            return
        if event == "changed" and version is not None and version <= listener.local_version:
            return  # our own write, already announced by on_written
        self.hub.notify(listener.name)

    async def _listen_channel(self) -> _ListenChannel:
        """A listen client with room for one more listener."""
        for channel in self._listen_channels:
            if channel.listeners < self.listeners_per_client:
                return channel
        fresh = await self._call(
            functools.partial(_ListenChannel.open, project=self.project, database=self.database)
        )
        for channel in self._listen_channels:  # another waiter may have made room meanwhile
            if channel.listeners < self.listeners_per_client:
                fresh.close()
                return channel
        self._listen_channels.append(fresh)
        return fresh

    @property
    def listen_targets(self) -> int:
        """Targets on this store's listen streams (one per open listener)."""
        return sum(channel.stream.targets for channel in self._listen_channels)

    @property
    def listen_clients(self) -> int:
        """How many listen clients (gRPC connections for listeners) exist."""
        return len(self._listen_channels)

    def _stop_listener(self, listener: _Listener) -> None:
        if self._listeners.get(listener.name) is listener:
            del self._listeners[listener.name]
        target, listener.target = listener.target, None
        if target is None:
            return
        listener.channel.listeners -= 1
        listener.channel.stream.remove(target)


def _count(query: Any) -> int:
    """The documents `query` matches, counted by the server (an aggregation
    query: no document is read back)."""
    results = query.count(alias="n").get()
    return int(results[0][0].value)


def _fetch(query: Any) -> list[Any]:
    return list(query.stream())


def _fetch_docs(query: Any) -> list[dict[str, Any]]:
    docs = []
    for snap in query.stream():
        doc = snap.to_dict()
        doc.setdefault("id", snap.id)
        docs.append(doc)
    return docs


def _identity(doc: dict[str, Any]) -> dict[str, Any]:
    return doc


#: What a list scan reads of a document when it must check the filter itself:
#: everything but the payloads, which no filter reads.
_LIGHT_FIELDS = [n for n in _FIELDS if n not in ("params", "response")]


def _from_light_document(doc: dict[str, Any]) -> OperationRecord:
    return from_document(doc | {"params": b"", "response": None})


def _project_of(snap: Any) -> str:
    """The project of a stored document (the default one if it has none)."""
    try:
        return str(snap.get("project") or DEFAULT_PROJECT)
    except KeyError:
        return DEFAULT_PROJECT


#: Projects one list query names at most (`project in [...]`; Firestore
#: allows 30 values in a disjunction); a larger set is checked per document.
MAX_IN_PROJECTS = 30


class WithinProjects:
    """A RecordFilter: `flt` (if any) and the record's project in `projects`
    (for a set too large to push down)."""

    def __init__(self, flt: RecordFilter | None, projects: frozenset[str]) -> None:
        self.flt = flt
        self.projects = projects

    def matches(self, rec: OperationRecord) -> bool:
        return rec.project in self.projects and (self.flt is None or self.flt.matches(rec))


def _exists(rec: OperationRecord) -> AlreadyExists:
    return AlreadyExists(f"operation {rec.name!r} already exists", metadata={"name": rec.name})
