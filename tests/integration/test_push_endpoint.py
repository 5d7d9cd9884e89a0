"""The push worker in-process: an aiohttp test server on 127.0.0.1 running
longrun_worker.push over the embedded SQLite store, with push authentication checked
against certificates served by a local aiohttp server and tokens signed here
(no network beyond loopback)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from google.protobuf import struct_pb2

from longrun.v1 import jobs_pb2
from longrun_core.clock import SystemClock, uuid_ids
from longrun_core.model import OperationRecord, State, evolve
from longrun_core.signing import (
    BAD_SIGNATURE,
    TASK_MISMATCH,
    UNSIGNED,
    Rejections,
    SigningKeys,
)
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.dispatcher import Dispatcher
from longrun_server.jobs_service import JobsService
from longrun_worker.push import PushEndpoint, parse_envelope
from longrun_worker.push_auth import jwks_to_pem
from longrun_worker.push_config import AuthSettings, PushSettings
from longrun_worker.runtime import Worker, WorkerSettings
from tests.support.waiting import wait_until

AUDIENCE = "https://push.example.test/push"
PUSHER = "pusher@longrun-test.iam.gserviceaccount.com"
KID = "test-key-1"
#: The keys task messages are signed with here (the queue's and the endpoint's).
SIGNING = SigningKeys.parse("push-k1:" + "s" * 32)
TEN_YEARS = 10 * 365 * 86400


# ---- keys, certificates, tokens ----


@dataclass(frozen=True)
class Key:
    kid: str
    private_pem: bytes
    cert_pem: str


def _make_key(kid: str) -> Key:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "longrun push test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Key(kid, private_pem, cert.public_bytes(serialization.Encoding.PEM).decode())


@pytest.fixture(scope="module")
def keys() -> Iterator[dict[str, Key]]:
    yield {name: _make_key(name) for name in (KID, "test-key-2", "impostor")}


def token(key: Key, *, kid: str | None = None, **overrides: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "aud": AUDIENCE,
        "sub": "112233445566",
        "azp": "112233445566",
        "email": PUSHER,
        "email_verified": True,
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    signer = crypt.RSASigner.from_string(key.private_pem, key_id=kid or key.kid)
    encoded: bytes = jwt.encode(signer, claims)
    return encoded.decode()


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


@dataclass
class CertsServer:
    url: str
    served: dict[str, str]
    hits: int = 0


@pytest.fixture
async def certs(keys: dict[str, Key]) -> AsyncIterator[CertsServer]:
    """Serves {kid: PEM certificate} like Google's oauth2/v1/certs."""
    state = CertsServer(url="", served={KID: keys[KID].cert_pem})

    async def serve(request: web.Request) -> web.Response:
        state.hits += 1
        return web.json_response(state.served, headers={"Cache-Control": "public, max-age=3600"})

    app = web.Application()
    app.router.add_get("/oauth2/v1/certs", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/oauth2/v1/certs"))
    try:
        yield state
    finally:
        await server.close()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _rsa_jwk(key: Key) -> dict[str, str]:
    private = serialization.load_pem_private_key(key.private_pem, password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    numbers = private.public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": key.kid,
        "use": "sig",
        "alg": "RS256",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": _b64url(numbers.e.to_bytes(3, "big")),
    }


@pytest.fixture
async def aiohttp_jwks(keys: dict[str, Key]) -> AsyncIterator[str]:
    """Serves a JWK set (an OIDC issuer's jwks_uri) holding the KID key."""

    async def serve(request: web.Request) -> web.Response:
        return web.json_response({"keys": [_rsa_jwk(keys[KID])]})

    app = web.Application()
    app.router.add_get("/jwks", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("/jwks"))
    finally:
        await server.close()


# ---- store, worker, endpoint ----


@dataclass
class Env:
    store: SqliteOperationStore
    queue: SqliteTaskQueue
    jobs: JobsService
    registry: Any
    rejections: Rejections


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    backend = SqliteBackend(tmp_path / "ops.db")
    store = SqliteOperationStore(backend)
    rejections = Rejections()
    queue = SqliteTaskQueue(backend, signing_keys=SIGNING, rejections=rejections)
    await store.start()
    await queue.start()
    registry = load_tasks(["longrun_worker.builtin_tasks"])
    clock = SystemClock()
    dispatcher = Dispatcher(
        store,
        queue,
        clock=clock,
        redispatch_after=timedelta(seconds=30),
        retention=timedelta(days=1),
        sweep_interval=1.0,
    )
    jobs = JobsService(store, dispatcher, registry, clock=clock, ids=uuid_ids)
    try:
        yield Env(store, queue, jobs, registry, rejections)
    finally:
        await queue.close()
        await store.close()


async def create(env: Env, task: str, params: Mapping[str, Any] | None = None) -> OperationRecord:
    p = struct_pb2.Struct()
    p.update(dict(params or {}))
    rec = env.jobs.new_record(jobs_pb2.CreateJobRequest(task=task, params=p))
    await env.store.create(rec)
    return rec


def envelope(
    rec: OperationRecord | None = None,
    *,
    attributes: dict[str, str] | None = None,
    message_id: str = "1001",
    delivery_attempt: int | None = None,
    signing: SigningKeys | None = SIGNING,
) -> dict[str, Any]:
    """A push of `rec`'s task message (or of `attributes`), signed with
    `signing` (None: unsigned) as the publisher signs."""
    if attributes is None:
        assert rec is not None
        attributes = {"operation": rec.name, "task": rec.task, "attempt": str(rec.attempt)}
    data = rec.name.encode() if rec is not None else b"junk"
    if signing is not None:
        attributes = signing.signed(data, attributes)
    doc: dict[str, Any] = {
        "subscription": "projects/p/subscriptions/longrun-workers",
        "message": {
            "data": base64.b64encode(data).decode(),
            "attributes": attributes,
            "messageId": message_id,
            "publishTime": "2026-01-01T00:00:00Z",
        },
    }
    if delivery_attempt is not None:
        doc["deliveryAttempt"] = delivery_attempt
    return doc


class RecordingDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[bytes, dict[str, str]]] = []

    async def publish(self, data: bytes, attributes: Mapping[str, str]) -> None:
        self.letters.append((data, dict(attributes)))


@dataclass
class Push:
    client: TestClient[web.Request, web.Application]
    endpoint: PushEndpoint
    worker: Worker
    dead: RecordingDeadLetters

    async def post(self, body: Any, headers: Mapping[str, str] | None = None) -> tuple[int, str]:
        if isinstance(body, (bytes, str)):
            resp = await self.client.post("/push", data=body, headers=headers)
        else:
            resp = await self.client.post("/push", json=body, headers=headers)
        return resp.status, await resp.text()


async def start_push(
    env: Env, auth: AuthSettings, *, concurrency: int = 2
) -> tuple[Push, TestServer]:
    worker = Worker(
        store=env.store,
        queue=env.queue,  # irrelevant for push
        registry=env.registry,
        settings=WorkerSettings(concurrency=concurrency, lease=2.0, heartbeat=0.5),
    )
    worker.rejections = env.rejections
    dead = RecordingDeadLetters()
    endpoint = PushEndpoint(worker, PushSettings(auth=auth), signing=SIGNING, dead_letters=dead)
    server = TestServer(endpoint.app(), host="127.0.0.1")
    client: TestClient[web.Request, web.Application] = TestClient(server)
    await client.start_server()
    return Push(client, endpoint, worker, dead), server


@pytest.fixture
async def push(env: Env, certs: CertsServer) -> AsyncIterator[Push]:
    auth = AuthSettings(
        mode="oidc", audience=AUDIENCE, allowed_emails=(PUSHER,), certs_url=certs.url
    )
    p, _ = await start_push(env, auth)
    try:
        yield p
    finally:
        await p.client.close()


@pytest.fixture
async def open_push(env: Env) -> AsyncIterator[Push]:
    """Authentication off (as with the emulator)."""
    p, _ = await start_push(env, AuthSettings(mode="none"), concurrency=1)
    try:
        yield p
    finally:
        await p.client.close()


# ---- the work ----


async def test_valid_token_runs_the_operation(push: Push, env: Env, keys: dict[str, Key]) -> None:
    rec = await create(env, "noop", {"x": 1})
    status, _ = await push.post(envelope(rec), bearer(token(keys[KID])))
    assert status == 204
    done = await env.store.get(rec.name)
    assert done.state is State.SUCCEEDED
    assert done.attempt == 1


async def test_duplicate_push_of_a_finished_operation_is_acked_without_rerun(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    rec = await create(env, "noop")
    auth = bearer(token(keys[KID]))
    assert (await push.post(envelope(rec), auth))[0] == 204
    assert (await push.post(envelope(rec, delivery_attempt=2), auth))[0] == 204
    done = await env.store.get(rec.name)
    assert done.state is State.SUCCEEDED
    assert done.attempt == 1
    assert push.worker.completed == 1


async def test_transient_error_answers_non_2xx_and_requeues(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    rec = await create(env, "fail", {"message": "try again"})
    status, _ = await push.post(envelope(rec), bearer(token(keys[KID])))
    assert status == 503
    after = await env.store.get(rec.name)
    assert after.state is State.QUEUED
    assert after.attempt == 1


async def test_last_failed_attempt_is_dead_lettered_then_acked(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    p = struct_pb2.Struct()
    p.update({"permanent": True, "message": "no"})
    rec = env.jobs.new_record(jobs_pb2.CreateJobRequest(task="fail", params=p))
    rec = replace(rec, max_attempts=1)
    await env.store.create(rec)
    status, _ = await push.post(envelope(rec, delivery_attempt=1), bearer(token(keys[KID])))
    assert status == 204
    assert (await env.store.get(rec.name)).state is State.FAILED
    [(data, attrs)] = push.dead.letters
    assert data == rec.name.encode()
    assert attrs["operation"] == rec.name
    assert attrs["task"] == "fail"
    assert "failed after 1 attempts" in attrs["reason"]


async def test_unknown_operation_is_acked(push: Push, keys: dict[str, Key]) -> None:
    attrs = {"operation": "operations/" + "0" * 32, "task": "noop", "attempt": "0"}
    status, _ = await push.post(envelope(attributes=attrs), bearer(token(keys[KID])))
    assert status == 204


# ---- forged and replayed messages ----


async def test_an_unsigned_push_never_runs_and_is_dead_lettered_and_counted(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    rec = await create(env, "noop")
    status, _ = await push.post(envelope(rec, signing=None), bearer(token(keys[KID])))
    assert status == 204
    after = await env.store.get(rec.name)
    assert (after.state, after.attempt) == (State.QUEUED, 0)
    [(data, attrs)] = push.dead.letters
    assert data == rec.name.encode()
    assert attrs["reason"].startswith("rejected (unsigned): ")
    assert env.rejections.count(UNSIGNED) == 1
    assert push.worker.completed == 0


@pytest.mark.parametrize(
    "tamper",
    [{"task": "noop"}, {"attempt": "5"}, {"operation": "operations/" + "1" * 32}, {"x": "y"}],
    ids=["task", "attempt", "operation", "added-attribute"],
)
async def test_a_tampered_push_never_runs(
    push: Push, env: Env, keys: dict[str, Key], tamper: dict[str, str]
) -> None:
    rec = await create(env, "sleep", {"worktime": 3600})
    doc = envelope(rec)
    doc["message"]["attributes"].update(tamper)
    assert (await push.post(doc, bearer(token(keys[KID]))))[0] == 204
    assert (await env.store.get(rec.name)).state is State.QUEUED
    [(_, attrs)] = push.dead.letters
    assert attrs["reason"].startswith("rejected (bad_signature): ")
    assert env.rejections.count(BAD_SIGNATURE) == 1


async def test_a_push_with_tampered_data_never_runs(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    rec = await create(env, "noop")
    other = await create(env, "noop")
    doc = envelope(rec)
    doc["message"]["data"] = base64.b64encode(other.name.encode()).decode()
    del doc["message"]["attributes"]["operation"]  # the data names the operation then
    assert (await push.post(doc, bearer(token(keys[KID]))))[0] == 204
    for name in (rec.name, other.name):
        assert (await env.store.get(name)).state is State.QUEUED
    assert env.rejections.count(BAD_SIGNATURE) == 1


async def test_task_confusion_runs_nothing_and_is_dead_lettered_and_counted(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    """A valid token and a valid signature (a leaked key, or a publisher bug)
    on a message naming `noop` for a sleep(3600) operation: the worker runs
    the record's task or nothing, never the message's."""
    rec = await create(env, "sleep", {"worktime": 3600})
    attributes = {"operation": rec.name, "task": "noop", "attempt": "0"}
    status, _ = await push.post(envelope(rec, attributes=attributes), bearer(token(keys[KID])))
    assert status == 204
    after = await env.store.get(rec.name)
    assert (after.state, after.attempt, after.response) == (State.QUEUED, 0, None)
    [(_, attrs)] = push.dead.letters
    assert attrs["reason"].startswith("rejected (task_mismatch): the message names task 'noop'")
    assert env.rejections.count(TASK_MISMATCH) == 1
    assert push.worker.completed == 0


async def test_a_replayed_settled_message_is_acked_without_running(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    rec = await create(env, "noop")
    auth = bearer(token(keys[KID]))
    assert (await push.post(envelope(rec, message_id="m-1"), auth))[0] == 204
    # Re-queued by some other path since: the replay still runs nothing.
    await env.store.update(rec.name, lambda r: evolve(r, state=State.QUEUED, response=None))
    assert (await push.post(envelope(rec, message_id="m-1"), auth))[0] == 204
    after = await env.store.get(rec.name)
    assert (after.state, after.attempt) == (State.QUEUED, 1)
    assert push.endpoint.replays == 1
    assert push.worker.completed == 1


async def test_a_replay_under_a_new_id_is_stopped_by_the_store(
    push: Push, env: Env, keys: dict[str, Key]
) -> None:
    rec = await create(env, "noop")
    auth = bearer(token(keys[KID]))
    assert (await push.post(envelope(rec, message_id="m-1"), auth))[0] == 204
    assert (await push.post(envelope(rec, message_id="m-2"), auth))[0] == 204
    done = await env.store.get(rec.name)
    assert (done.state, done.attempt) == (State.SUCCEEDED, 1)
    assert push.endpoint.replays == 0
    assert push.worker.completed == 1


async def test_a_deferred_push_is_not_settled(push: Push, env: Env, keys: dict[str, Key]) -> None:
    """503 answers (a transient failure: retry later) leave the id unsettled,
    so Pub/Sub's redelivery runs the next attempt."""
    p = struct_pb2.Struct()
    p.update({"message": "flaky"})
    rec = replace(env.jobs.new_record(jobs_pb2.CreateJobRequest(task="fail", params=p)))
    rec = replace(rec, max_attempts=2)
    await env.store.create(rec)
    auth = bearer(token(keys[KID]))
    assert (await push.post(envelope(rec, message_id="m-1"), auth))[0] == 503
    await env.store.update(rec.name, lambda r: evolve(r, run_after=None))  # backoff over
    assert (await push.post(envelope(rec, message_id="m-1"), auth))[0] == 204
    assert (await env.store.get(rec.name)).attempt == 2
    assert push.endpoint.replays == 0


def test_the_settled_ids_are_bounded() -> None:
    from longrun_worker.push import SettledMessages

    settled = SettledMessages(3)
    for i in range(5):
        settled.add(f"m{i}")
    assert len(settled) == 3
    assert "m0" not in settled and "m1" not in settled and "m4" in settled
    off = SettledMessages(0)
    off.add("m0")
    assert "m0" not in off


# ---- malformed input ----


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"subscription": "s"}',
        b'{"message": {"data": "b3A="}}',
        b'{"message": {"messageId": "1", "data": "***"}}',
        b'{"message": {"messageId": "1", "attributes": {"task": 1}}}',
    ],
    ids=["not-json", "not-object", "no-message", "no-id", "bad-base64", "bad-attributes"],
)
async def test_a_body_that_is_no_push_envelope_is_400(
    push: Push, keys: dict[str, Key], body: bytes
) -> None:
    status, text = await push.post(body, bearer(token(keys[KID])))
    assert status == 400, text


async def test_a_message_that_is_no_task_is_acked_and_dead_lettered(
    push: Push, keys: dict[str, Key]
) -> None:
    status, _ = await push.post(
        envelope(attributes={"hello": "world"}, message_id="77"), bearer(token(keys[KID]))
    )
    assert status == 204
    [(data, attrs)] = push.dead.letters
    assert data == b"junk"
    assert attrs["hello"] == "world"
    assert attrs["reason"].startswith("not a task message")


def test_delivery_attempt_is_read_beside_or_inside_the_message() -> None:
    outer = envelope(attributes={}, delivery_attempt=4)
    assert parse_envelope(json.dumps(outer).encode()).delivery_attempt == 4
    inner = envelope(attributes={})
    inner["message"]["deliveryAttempt"] = 3
    assert parse_envelope(json.dumps(inner).encode()).delivery_attempt == 3
    assert parse_envelope(json.dumps(envelope(attributes={})).encode()).delivery_attempt == 1


# ---- authentication ----


async def test_missing_token_is_401(push: Push, env: Env) -> None:
    rec = await create(env, "noop")
    status, _ = await push.post(envelope(rec))
    assert status == 401
    assert (await env.store.get(rec.name)).state is State.QUEUED
    status, _ = await push.post(envelope(rec), {"Authorization": "Basic dXNlcjpwdw=="})
    assert status == 401


async def test_bad_signature_is_401(push: Push, env: Env, keys: dict[str, Key]) -> None:
    rec = await create(env, "noop")
    forged = token(keys["impostor"], kid=KID)  # right key id, wrong key
    status, _ = await push.post(envelope(rec), bearer(forged))
    assert status == 401
    assert (await env.store.get(rec.name)).state is State.QUEUED


@pytest.mark.parametrize(
    "claims",
    [
        {"aud": "https://elsewhere.example.test/push"},
        {"aud": [AUDIENCE, "https://elsewhere.example.test/push"]},
        {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
        {"iss": "https://evil.example.test"},
        {"iss": None},
        {"exp": int(time.time()) + TEN_YEARS},
        {"iat": int(time.time()) - 5 * 3600, "exp": int(time.time()) + 600},
        {"iat": int(time.time()) + 3600, "exp": int(time.time()) + 5400},
    ],
    ids=[
        "wrong-audience",
        "audience-list",
        "expired",
        "wrong-issuer",
        "no-issuer",
        "ten-year-exp",
        "lifetime-over-an-hour",
        "issued-in-the-future",
    ],
)
async def test_invalid_claims_are_401(
    push: Push, env: Env, keys: dict[str, Key], claims: dict[str, Any]
) -> None:
    rec = await create(env, "noop")
    status, _ = await push.post(envelope(rec), bearer(token(keys[KID], **claims)))
    assert status == 401
    assert (await env.store.get(rec.name)).state is State.QUEUED


@pytest.mark.parametrize(
    "claims",
    [
        {"email": "intruder@other.iam.gserviceaccount.com"},
        {"email_verified": False},
        {"email_verified": "true"},
        {"email_verified": 1},
        {"email_verified": None},
        {"email": None},
    ],
    ids=[
        "not-allowed",
        "unverified",
        "verified-as-string",
        "verified-as-1",
        "no-verified",
        "no-email",
    ],
)
async def test_valid_token_of_another_identity_is_403(
    push: Push, env: Env, keys: dict[str, Key], claims: dict[str, Any]
) -> None:
    rec = await create(env, "noop")
    status, _ = await push.post(envelope(rec), bearer(token(keys[KID], **claims)))
    assert status == 403
    assert (await env.store.get(rec.name)).state is State.QUEUED


async def test_certificates_are_cached_and_refetched_for_a_new_key(
    push: Push, env: Env, keys: dict[str, Key], certs: CertsServer
) -> None:
    for _ in range(3):
        rec = await create(env, "noop")
        assert (await push.post(envelope(rec), bearer(token(keys[KID]))))[0] == 204
    assert certs.hits == 1
    # Google rotates keys: a token signed with a key the cache has not seen yet
    # makes the verifier fetch again (rate limited; no limit in this test).
    assert push.endpoint.verifier is not None
    push.endpoint.verifier.certs.min_refetch = 0.0
    certs.served["test-key-2"] = keys["test-key-2"].cert_pem
    rec = await create(env, "noop")
    assert (await push.post(envelope(rec), bearer(token(keys["test-key-2"]))))[0] == 204
    assert certs.hits == 2
    # An unknown key id is still refused after the refetch.
    assert (await push.post(envelope(rec), bearer(token(keys["impostor"]))))[0] == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Host": "push.example.test"},
        {"Host": "push.example.test", "X-Forwarded-Proto": "https"},
        {"X-Forwarded-Host": "push.example.test", "X-Forwarded-Proto": "https"},
    ],
    ids=["plain", "forged-host", "forged-host-and-proto", "forwarded-host"],
)
async def test_the_audience_is_never_taken_from_the_request(
    env: Env, certs: CertsServer, keys: dict[str, Key], headers: dict[str, str]
) -> None:
    """A token minted for another service, sent with Host / X-Forwarded-* set
    to match it, is refused: only the configured audience counts."""
    other_service = "https://push.example.test/push"
    auth = AuthSettings(
        mode="oidc",
        audience="https://worker.example.test/push",
        allowed_emails=(PUSHER,),
        certs_url=certs.url,
    )
    p, server = await start_push(env, auth)
    try:
        rec = await create(env, "noop")
        for aud in (other_service, f"http://127.0.0.1:{server.port}/push"):
            status, _ = await p.post(envelope(rec), bearer(token(keys[KID], aud=aud)) | headers)
            assert status == 401, (aud, headers)
        assert (await env.store.get(rec.name)).state is State.QUEUED
        good = bearer(token(keys[KID], aud="https://worker.example.test/push"))
        assert (await p.post(envelope(rec), good | headers))[0] == 204
    finally:
        await p.client.close()


async def test_the_longest_token_lifetime_is_configurable(
    env: Env, certs: CertsServer, keys: dict[str, Key]
) -> None:
    auth = AuthSettings(
        mode="oidc",
        audience=AUDIENCE,
        allowed_emails=(PUSHER,),
        certs_url=certs.url,
        max_token_lifetime=7200,
    )
    p, _ = await start_push(env, auth)
    try:
        now = int(time.time())
        rec = await create(env, "noop")
        three_hours = token(keys[KID], iat=now, exp=now + 3 * 3600)
        assert (await p.post(envelope(rec), bearer(three_hours)))[0] == 401
        two_hours = token(keys[KID], iat=now, exp=now + 2 * 3600)
        assert (await p.post(envelope(rec), bearer(two_hours)))[0] == 204
    finally:
        await p.client.close()


async def test_another_oidc_issuer_by_its_jwks_url(
    env: Env, keys: dict[str, Key], aiohttp_jwks: str
) -> None:
    issuer = "https://issuer.example.test"
    auth = AuthSettings(
        mode="oidc",
        audience=AUDIENCE,
        allowed_emails=(PUSHER,),
        certs_url=aiohttp_jwks,
        issuers=(issuer,),
    )
    p, _ = await start_push(env, auth)
    try:
        rec = await create(env, "noop")
        google_iss = token(keys[KID])  # iss accounts.google.com: not accepted here
        assert (await p.post(envelope(rec), bearer(google_iss)))[0] == 401
        assert (await p.post(envelope(rec), bearer(token(keys[KID], iss=issuer))))[0] == 204
        assert (await env.store.get(rec.name)).state is State.SUCCEEDED
    finally:
        await p.client.close()


def test_a_jwk_set_becomes_pem_keys_skipping_what_cannot_verify(keys: dict[str, Key]) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    jwks = {
        "keys": [
            _rsa_jwk(keys[KID]),
            {
                "kty": "EC",
                "crv": "P-256",
                "kid": "ec-1",
                "x": _b64url(ec_key.x.to_bytes(32, "big")),
                "y": _b64url(ec_key.y.to_bytes(32, "big")),
            },
            _rsa_jwk(keys["test-key-2"]) | {"use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "broken", "n": 5, "e": "AQAB"},
        ]
    }
    pems = jwks_to_pem(jwks)
    assert sorted(pems) == sorted([KID, "ec-1"])
    assert all(p.startswith("-----BEGIN PUBLIC KEY-----") for p in pems.values())


async def test_unreachable_certificates_answer_503(env: Env, keys: dict[str, Key]) -> None:
    auth = AuthSettings(
        mode="oidc", audience=AUDIENCE, allowed_emails=(PUSHER,), certs_url="http://127.0.0.1:9/"
    )
    p, _ = await start_push(env, auth)
    try:
        rec = await create(env, "noop")
        assert (await p.post(envelope(rec), bearer(token(keys[KID]))))[0] == 503
    finally:
        await p.client.close()


def test_oidc_without_allowed_accounts_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="allowed service account"):
        AuthSettings(mode="oidc", audience=AUDIENCE).check()
    from longrun_worker.__main__ import main

    result = CliRunner().invoke(
        main,
        ["--push", "--push-auth", "oidc", "--push-audience", AUDIENCE],
        env={"LONGRUN_PUSH_ALLOWED_SA": None},
    )
    assert result.exit_code == 2
    assert "--push-allowed-sa" in result.output


def test_oidc_without_an_audience_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="--push-audience"):
        AuthSettings(mode="oidc", allowed_emails=(PUSHER,)).check()
    with pytest.raises(ValueError, match="audience"):
        AuthSettings(mode="oidc", audience="", allowed_emails=(PUSHER,)).check()
    from longrun_worker.__main__ import main

    result = CliRunner().invoke(
        main,
        ["--push", "--push-auth", "oidc", "--push-allowed-sa", PUSHER],
        env={"LONGRUN_PUSH_AUDIENCE": None},
    )
    assert result.exit_code == 2
    assert "needs the expected token audience (--push-audience)" in result.output
    result = CliRunner().invoke(
        main,
        [
            "--push",
            "--push-allowed-sa",
            PUSHER,
            "--push-audience",
            AUDIENCE,
            "--push-max-token-lifetime",
            str(TEN_YEARS),
        ],
    )
    assert result.exit_code == 2
    assert "--push-max-token-lifetime" in result.output


# ---- flow control and shutdown ----


async def test_full_slots_answer_429_and_auth_none_needs_no_token(
    open_push: Push, env: Env
) -> None:
    slow = await create(env, "sleep", {"worktime": 0.4})
    first = asyncio.create_task(open_push.post(envelope(slow)))
    await wait_until(lambda: open_push.endpoint.active > 0, description="the first push runs")
    other = await create(env, "noop")
    assert (await open_push.post(envelope(other)))[0] == 429
    assert (await first)[0] == 204
    assert (await open_push.post(envelope(other)))[0] == 204
    health = await open_push.client.get("/healthz")
    assert health.status == 200


async def test_shutdown_releases_a_running_task_and_answers_503(open_push: Push, env: Env) -> None:
    slow = await create(env, "sleep", {"worktime": 30})
    first = asyncio.create_task(open_push.post(envelope(slow)))

    async def running() -> bool:
        return (await env.store.get(slow.name)).state is State.RUNNING

    await wait_until(running, description="the task runs")
    await open_push.endpoint.drain(0.1)
    assert (await first)[0] == 503
    released = await env.store.get(slow.name)
    assert released.state is State.QUEUED
    assert (await open_push.client.get("/healthz")).status == 503
    assert (await open_push.post(envelope(slow)))[0] == 503
