"""Per-principal request quota at the gRPC edge: each principal has its own
bucket; over it the call is RESOURCE_EXHAUSTED with QuotaFailure naming the
principal and RetryInfo, and another principal is not slowed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.rpc import error_details_pb2, status_pb2

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from longrun_core.auth.api_keys import MintedKey, mint
from longrun_core.auth.roles import Role
from longrun_core.settings import AuthenticationSettings, ServerSettings
from longrun_core.sqlite.api_keys import SqliteKeyStore
from longrun_core.sqlite.backend import SqliteBackend
from longrun_core.sqlite.queue import SqliteTaskQueue
from longrun_core.sqlite.store import SqliteOperationStore
from longrun_core.tasks import load_tasks
from longrun_server.app import create_server
from longrun_server.auth_setup import build_auth

BURST = 3


@pytest.fixture
def auth_settings() -> AuthenticationSettings:
    # A rate so low that no token comes back during the test.
    return AuthenticationSettings(api_keys=True, quota_requests_per_second=0.001, quota_burst=BURST)


@pytest.fixture
async def served(
    tmp_path: Path, auth_settings: AuthenticationSettings
) -> AsyncIterator[tuple[grpc.aio.Channel, list[MintedKey]]]:
    backend = SqliteBackend(tmp_path / "ops.db")
    store = SqliteOperationStore(backend)
    queue = SqliteTaskQueue(backend)
    await store.start()
    await queue.start()
    keys = SqliteKeyStore(backend.db)
    settings = ServerSettings(address="127.0.0.1:0", auth=auth_settings)
    auth = build_auth(settings.auth, key_store=keys)
    await auth.start()
    minted = [mint("p", Role.EDITOR, datetime.now(UTC)) for _ in range(2)]
    for m in minted:
        await keys.add(m.key)
    server, port, _ = await create_server(
        store=store,
        queue=queue,
        registry=load_tasks(["longrun_worker.builtin_tasks"]),
        settings=settings,
        auth=auth,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel, minted
    finally:
        await channel.close()
        await server.stop(0)
        await auth.close()
        await queue.close()
        await store.close()


async def list_ops(channel: grpc.aio.Channel, key: MintedKey) -> None:
    await operations_pb2_grpc.OperationsStub(channel).ListOperations(
        operations_pb2.ListOperationsRequest(name="projects/p"),
        metadata=(("x-goog-api-key", key.secret),),
        timeout=10,
    )


async def test_a_principal_over_its_rate_is_refused_with_quota_failure(
    served: tuple[grpc.aio.Channel, list[MintedKey]],
) -> None:
    channel, (first, second) = served
    for _ in range(BURST):
        await list_ops(channel, first)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await list_ops(channel, first)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = status_pb2.Status.FromString(
        dict(caught.value.trailing_metadata() or ())["grpc-status-details-bin"]
    )
    by_type = {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}
    failure = error_details_pb2.QuotaFailure()
    by_type["google.rpc.QuotaFailure"].Unpack(failure)
    assert failure.violations[0].subject == first.key.principal_id
    retry = error_details_pb2.RetryInfo()
    by_type["google.rpc.RetryInfo"].Unpack(retry)
    assert retry.retry_delay.ToTimedelta().total_seconds() > 0
    # Another principal has its own bucket.
    for _ in range(BURST):
        await list_ops(channel, second)


def details(error: grpc.aio.AioRpcError) -> dict[str, Any]:
    status = status_pb2.Status.FromString(
        dict(error.trailing_metadata() or ())["grpc-status-details-bin"]
    )
    return {d.type_url.rsplit("/", 1)[-1]: d for d in status.details}


@pytest.mark.parametrize(
    "auth_settings",
    [AuthenticationSettings(api_keys=True, quota_open_operations=2)],
)
async def test_a_principal_at_its_open_operations_is_refused_until_one_ends(
    served: tuple[grpc.aio.Channel, list[MintedKey]],
) -> None:
    channel, (first, second) = served
    jobs = jobs_pb2_grpc.JobsStub(channel)
    ops = operations_pb2_grpc.OperationsStub(channel)

    async def create(key: MintedKey) -> operations_pb2.Operation:
        return await jobs.CreateJob(
            jobs_pb2.CreateJobRequest(parent="projects/p", task="noop"),
            metadata=(("x-goog-api-key", key.secret),),
            timeout=10,
        )

    made = [await create(first), await create(first)]  # no worker: both stay open
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(first)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_details_pb2.ErrorInfo()
    details(caught.value)["google.rpc.ErrorInfo"].Unpack(info)
    assert info.reason == "OPEN_OPERATIONS_QUOTA_EXCEEDED"
    assert "google.rpc.QuotaFailure" in details(caught.value)
    await create(second)  # counted per principal
    await ops.CancelOperation(
        operations_pb2.CancelOperationRequest(name=made[0].name),
        metadata=(("x-goog-api-key", first.secret),),
        timeout=10,
    )
    await create(first)  # the cancelled one no longer counts
