"""The authentication edge on an in-process server: the interceptor over
gRPC, the gateway over HTTP (it forwards the credential headers), the
ApiKeys service and the CLI's key commands against it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from click.testing import CliRunner
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longrun.v1 import api_keys_pb2, api_keys_pb2_grpc, jobs_pb2, jobs_pb2_grpc
from longrun_client.cli import EXIT_DENIED, EXIT_OK, run
from longrun_core.auth.api_keys import mint
from longrun_core.auth.roles import Role
from longrun_core.settings import AuthenticationSettings, ServerSettings
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.app import create_server
from longrun_server.auth_setup import AuthSetup, build_auth
from longrun_server.rest import RestGateway, build_routes, served_services
from tests.support.oidc import AUDIENCE, KeyServer, SigningKey, id_token, make_key, serve_keys

ALICE = "alice@example.com"  # admin on billing
BOB = "bob@example.com"  # no role
CAROL = "carol@example.com"  # viewer everywhere

POLICY = f"""
[groups]
admins = ["user:{ALICE}"]

[[bindings]]
project = "billing"
role = "admin"
members = ["group:admins"]

[[bindings]]
project = "*"
role = "viewer"
members = ["user:{CAROL}"]
"""


@pytest.fixture(scope="module")
def signing() -> Iterator[SigningKey]:
    yield make_key("k1")


@dataclass
class Edge:
    target: str
    http: str
    db: Path
    channel: grpc.aio.Channel
    keys: SqliteKeyStore
    auth: AuthSetup
    signing: SigningKey

    def token(self, email: str, **claims: Any) -> str:
        return id_token(self.signing, email=email, **claims)

    @property
    def operations(self) -> operations_pb2_grpc.OperationsStub:
        return operations_pb2_grpc.OperationsStub(self.channel)

    @property
    def api_keys(self) -> api_keys_pb2_grpc.ApiKeysStub:
        return api_keys_pb2_grpc.ApiKeysStub(self.channel)


@pytest.fixture
async def edge(tmp_path: Path, signing: SigningKey) -> AsyncIterator[Edge]:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    async for keyserver in serve_keys(KeyServer(certs={"k1": signing.cert_pem})):
        backend = SqliteBackend(tmp_path / "ops.db")
        store = SqliteOperationStore(backend)
        queue = SqliteTaskQueue(backend)
        await store.start()
        await queue.start()
        keys = SqliteKeyStore(backend.db)
        settings = ServerSettings(
            address="127.0.0.1:0",
            auth=AuthenticationSettings(
                oidc_audience=AUDIENCE,
                oidc_certs_url=keyserver.certs_url,
                api_keys=True,
                policy_file=policy,
            ),
        )
        auth = build_auth(settings.auth, key_store=keys)
        await auth.start()
        server, port, _ = await create_server(
            store=store,
            queue=queue,
            registry=load_tasks(["longrun_worker.builtin_tasks"]),
            settings=settings,
            auth=auth,
        )
        await server.start()
        target = f"127.0.0.1:{port}"
        gateway = RestGateway(target, build_routes(served_services(api_keys=True)), max_wait=5.0)
        http_port = await gateway.start("127.0.0.1", 0)
        channel = grpc.aio.insecure_channel(target)
        try:
            yield Edge(
                target,
                f"http://127.0.0.1:{http_port}",
                tmp_path / "ops.db",
                channel,
                keys,
                auth,
                signing,
            )
        finally:
            await channel.close()
            await gateway.stop()
            await server.stop(0)
            await auth.close()
            await queue.close()
            await store.close()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def rich_error(call: Any) -> tuple[grpc.StatusCode, error_details_pb2.ErrorInfo]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    error = info.value
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert raw is not None, error
    status = status_pb2.Status.FromString(raw)
    detail = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(detail)
    assert detail.domain == "longrun.dev"
    return error.code(), detail


async def add_key(edge: Edge, role: Role, project: str = "billing", **changes: Any) -> str:
    minted = mint(project, role, datetime.now(UTC))
    await edge.keys.add(replace(minted.key, **changes))
    return minted.secret


GET = operations_pb2.GetOperationRequest(name="operations/0123456789abcdef0123456789abcdef")
#: An operation that does not exist, in the project the test keys are for.
MISSING = operations_pb2.GetOperationRequest(
    name="projects/billing/operations/0123456789abcdef0123456789abcdef"
)


def every_rpc(edge: Edge) -> dict[str, Any]:
    ops, jobs = edge.operations, jobs_pb2_grpc.JobsStub(edge.channel)
    name = GET.name
    return {
        "GetOperation": lambda md: ops.GetOperation(GET, metadata=md),
        "ListOperations": lambda md: ops.ListOperations(
            operations_pb2.ListOperationsRequest(name="operations"), metadata=md
        ),
        "WaitOperation": lambda md: ops.WaitOperation(
            operations_pb2.WaitOperationRequest(name=name), metadata=md
        ),
        "CancelOperation": lambda md: ops.CancelOperation(
            operations_pb2.CancelOperationRequest(name=name), metadata=md
        ),
        "DeleteOperation": lambda md: ops.DeleteOperation(
            operations_pb2.DeleteOperationRequest(name=name), metadata=md
        ),
        "CreateJob": lambda md: jobs.CreateJob(jobs_pb2.CreateJobRequest(task="noop"), metadata=md),
        "ListApiKeys": lambda md: edge.api_keys.ListApiKeys(
            api_keys_pb2.ListApiKeysRequest(parent="projects/billing"), metadata=md
        ),
    }


async def test_every_method_without_credentials_is_unauthenticated(edge: Edge) -> None:
    for method, call in every_rpc(edge).items():
        code, info = await rich_error(call(()))
        assert (code, info.reason) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "CREDENTIALS_MISSING",
        ), method


async def test_health_and_reflection_stay_open(edge: Edge) -> None:
    health = health_pb2_grpc.HealthStub(edge.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="longrun.v1.ApiKeys"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(edge.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        names = {s.name for s in response.list_services_response.service}
        assert "longrun.v1.ApiKeys" in names
        break


async def test_refused_credentials_say_why(edge: Edge) -> None:
    now = int(time.time())
    revoked = await add_key(edge, Role.EDITOR, revoke_time=datetime.now(UTC))
    expired = await add_key(edge, Role.EDITOR, expire_time=datetime.now(UTC) - timedelta(1))
    unknown = mint("billing", Role.EDITOR, datetime.now(UTC)).secret
    cases = {
        "TOKEN_INVALID": bearer(edge.token(ALICE, aud="https://elsewhere.example.test")),
        "TOKEN_EXPIRED": bearer(edge.token(ALICE, iat=now - 7200, exp=now - 3600)),
        "EMAIL_NOT_VERIFIED": bearer(edge.token(ALICE, email_verified="true")),
        "API_KEY_REVOKED": (("x-goog-api-key", revoked),),
        "API_KEY_EXPIRED": bearer(expired),
        "API_KEY_INVALID": (("x-goog-api-key", unknown),),
        "CREDENTIALS_CONFLICT": (*bearer(edge.token(ALICE)), ("x-goog-api-key", unknown)),
    }
    for reason, metadata in cases.items():
        code, info = await rich_error(edge.operations.GetOperation(GET, metadata=metadata))
        assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)


async def test_good_credentials_reach_the_method(edge: Edge) -> None:
    """A verified token and a valid key (both spellings) get past the edge:
    the answer is the method's own (NOT_FOUND for an unknown operation of a
    project the caller may read; PERMISSION_DENIED for a caller without a role
    there, which an unauthenticated caller never gets)."""
    key = await add_key(edge, Role.VIEWER)
    missing = MISSING
    for metadata in (bearer(edge.token(CAROL)), bearer(key), (("x-goog-api-key", key),)):
        code, info = await rich_error(edge.operations.GetOperation(missing, metadata=metadata))
        assert code == grpc.StatusCode.NOT_FOUND, info
    code, info = await rich_error(
        edge.operations.GetOperation(missing, metadata=bearer(edge.token(BOB)))
    )
    assert (code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "IAM_PERMISSION_DENIED")


async def test_a_caller_without_the_role_is_denied_whether_or_not_the_key_exists(
    edge: Edge,
) -> None:
    viewer = await add_key(edge, Role.VIEWER)
    existing = await add_key(edge, Role.EDITOR)
    existing_name = f"projects/billing/apiKeys/{existing[4:20]}"
    calls = [
        (
            bearer(edge.token(BOB)),
            edge.api_keys.CreateApiKey,
            api_keys_pb2.CreateApiKeyRequest(
                parent="projects/billing", role=api_keys_pb2.ApiKey.ADMIN
            ),
            "longrun.apiKeys.create",
        ),
        (
            bearer(viewer),
            edge.api_keys.ListApiKeys,
            api_keys_pb2.ListApiKeysRequest(parent="projects/billing"),
            "longrun.apiKeys.list",
        ),
        (
            bearer(edge.token(CAROL)),  # viewer on "*": not admin
            edge.api_keys.DeleteApiKey,
            api_keys_pb2.DeleteApiKeyRequest(name=existing_name),
            "longrun.apiKeys.delete",
        ),
        (
            bearer(edge.token(CAROL)),
            edge.api_keys.DeleteApiKey,
            api_keys_pb2.DeleteApiKeyRequest(name="projects/billing/apiKeys/0123456789abcdef"),
            "longrun.apiKeys.delete",
        ),
    ]
    for metadata, method, request, permission in calls:
        code, info = await rich_error(method(request, metadata=metadata))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert info.reason == "IAM_PERMISSION_DENIED"
        assert dict(info.metadata) == {"permission": permission, "resource": "projects/billing"}
    assert (await edge.keys.get(existing[4:20])) is not None
    assert not (await edge.keys.get(existing[4:20])).revoked  # type: ignore[union-attr]


async def test_the_key_lifecycle_over_grpc(edge: Edge) -> None:
    alice = bearer(edge.token(ALICE))
    created = await edge.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            parent="projects/billing", role=api_keys_pb2.ApiKey.EDITOR
        ),
        metadata=alice,
    )
    assert created.key_string.startswith("lrk_") and created.name.startswith("projects/billing/")
    key = (("x-goog-api-key", created.key_string),)
    code, _ = await rich_error(edge.operations.GetOperation(MISSING, metadata=key))
    assert code == grpc.StatusCode.NOT_FOUND  # authenticated
    listed = await edge.api_keys.ListApiKeys(
        api_keys_pb2.ListApiKeysRequest(parent="projects/billing"), metadata=alice
    )
    assert [k.name for k in listed.api_keys] == [created.name]
    assert listed.api_keys[0].key_string == ""
    assert listed.api_keys[0].HasField("last_use_time")
    # An admin of billing cannot reach another project's key by renaming it.
    other = await add_key(edge, Role.EDITOR, project="payroll")
    code, info = await rich_error(
        edge.api_keys.DeleteApiKey(
            api_keys_pb2.DeleteApiKeyRequest(name=f"projects/billing/apiKeys/{other[4:20]}"),
            metadata=alice,
        )
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")
    revoked = await edge.api_keys.DeleteApiKey(
        api_keys_pb2.DeleteApiKeyRequest(name=created.name), metadata=alice
    )
    assert revoked.HasField("revoke_time")
    code, info = await rich_error(edge.operations.GetOperation(GET, metadata=key))
    assert (code, info.reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def http(
    edge: Edge, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, edge.http + path, headers=headers, json=body) as resp,
    ):
        payload = json.loads(await resp.read())
        if resp.status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert "WWW-Authenticate" not in resp.headers
        return resp.status, payload


def reason_of(body: dict[str, Any]) -> str:
    details = body["error"]["details"]
    info = next(d for d in details if d["@type"].endswith("ErrorInfo"))
    assert info["domain"] == "longrun.dev"
    return str(info["reason"])


async def test_the_gateway_forwards_credentials(edge: Edge) -> None:
    path = f"/v1/{MISSING.name}"
    status, body = await http(edge, "GET", path, {})
    assert (status, body["error"]["status"], reason_of(body)) == (
        401,
        "UNAUTHENTICATED",
        "CREDENTIALS_MISSING",
    )
    status, body = await http(
        edge, "GET", path, {"Authorization": f"Bearer {edge.token(ALICE, aud='x')}"}
    )
    assert (status, reason_of(body)) == (401, "TOKEN_INVALID")
    status, body = await http(
        edge,
        "POST",
        "/v1/projects/billing/apiKeys",
        {"Authorization": f"Bearer {edge.token(BOB)}"},
        {"role": "EDITOR"},
    )
    assert (status, body["error"]["status"], reason_of(body)) == (
        403,
        "PERMISSION_DENIED",
        "IAM_PERMISSION_DENIED",
    )
    status, body = await http(
        edge,
        "POST",
        "/v1/projects/billing/apiKeys",
        {"Authorization": f"Bearer {edge.token(ALICE)}"},
        {"role": "VIEWER", "ttl": "3600s"},
    )
    assert status == 200 and body["keyString"].startswith("lrk_") and "expireTime" in body
    status, _ = await http(edge, "GET", path, {"X-Goog-Api-Key": body["keyString"]})
    assert status == 404  # past the edge: the operation does not exist
    status, listed = await http(
        edge, "GET", "/v1/projects/billing/apiKeys", {"x-goog-api-key": body["keyString"]}
    )
    assert (status, reason_of(listed)) == (403, "IAM_PERMISSION_DENIED")
    status, _ = await http(
        edge, "DELETE", f"/v1/{body['name']}", {"Authorization": f"Bearer {edge.token(ALICE)}"}
    )
    assert status == 200
    status, after = await http(edge, "GET", path, {"X-Goog-Api-Key": body["keyString"]})
    assert (status, reason_of(after)) == (401, "API_KEY_REVOKED")
    status, weird = await http(edge, "GET", path, {"Authorization": "Bearer caf\u00e9"})
    assert (status, reason_of(weird)) == (401, "CREDENTIALS_MALFORMED")


def cli(edge: Edge, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = run(["--target", edge.target, *args])
    return code, capsys.readouterr().out


async def test_the_cli_key_lifecycle_against_a_server(
    edge: Edge, capsys: pytest.CaptureFixture[str]
) -> None:
    from longrun_server.__main__ import main as server_main

    # The first admin key, written straight to the store by longrun-server.
    boot = await asyncio.to_thread(
        CliRunner().invoke,
        server_main,
        [
            "--sqlite-path",
            str(edge.db),
            "keys",
            "create",
            "--project",
            "billing",
            "--role",
            "admin",
        ],
    )
    assert boot.exit_code == 0, boot.output
    admin = boot.stdout.strip().splitlines()[-1]
    assert admin.startswith("lrk_")

    code, out = await asyncio.to_thread(
        cli,
        edge,
        capsys,
        "--token",
        admin,
        "keys",
        "create",
        "--project",
        "billing",
        "--role",
        "editor",
        "--expires-in",
        "30d",
    )
    assert code == EXIT_OK
    editor = out.strip()
    assert editor.startswith("lrk_") and editor != admin

    code, out = await asyncio.to_thread(
        cli, edge, capsys, "--token", admin, "keys", "list", "--project", "billing", "--json"
    )
    assert code == EXIT_OK
    listed = {k["name"]: k for k in json.loads(out)}
    editor_name = f"projects/billing/apiKeys/{editor[4:20]}"
    assert set(listed) == {editor_name, f"projects/billing/apiKeys/{admin[4:20]}"}
    assert listed[editor_name]["role"] == "EDITOR" and "expireTime" in listed[editor_name]
    assert editor not in out and admin not in out and "keyString" not in out

    # An editor may not mint keys.
    code, _ = await asyncio.to_thread(
        cli, edge, capsys, "--token", editor, "keys", "create", "--project", "billing",
        "--role", "admin",
    )  # fmt: skip
    assert code == EXIT_DENIED

    code, out = await asyncio.to_thread(
        cli, edge, capsys, "--token", admin, "keys", "revoke", editor_name
    )
    assert code == EXIT_OK and "revoked" in out
    code, _ = await asyncio.to_thread(cli, edge, capsys, "--token", editor, "list")
    assert code == EXIT_DENIED
