"""google-api-core, as generated Google clients use it, against the real server:
`operations_v1.OperationsClient` (gRPC) and `operation.from_gapic` futures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.api_core import exceptions, operation, operations_v1
from google.api_core.future import polling
from google.api_core.operations_v1 import AbstractOperationsClient
from google.api_core.operations_v1.transports.rest import OperationsRestTransport
from google.auth import credentials as ga_credentials
from google.longrunning import operations_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2

from convert.v1 import convert_pb2
from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import Service
from tests.acceptance.test_clients import BACKENDS, EXAMPLE_ENV, running_service
from tests.acceptance.test_example_service import convert_document

# Poll every 50..200 ms instead of api-core's 1..20 s, so tests are quick.
FAST_POLLING = polling.DEFAULT_POLLING.with_delay(initial=0.05, maximum=0.2, multiplier=1.5)


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """Server (with its HTTP gateway on) and a worker; `svc.http_port` is the
    gateway's port."""
    workdir = tmp_path_factory.mktemp("apicore")
    http = {"LONGRUN_HTTP_ADDRESS": "127.0.0.1:0", "LONGRUN_HTTP_PORT_FILE": str(workdir / "http")}
    with running_service(request.param, workdir, EXAMPLE_ENV | http) as svc:
        yield svc


def http_port(svc: Service) -> int:
    return int((svc.workdir / "http").read_text())


@pytest.fixture
def channel(shared: Service) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(shared.target) as ch:
        yield ch


@pytest.fixture
def ops(channel: grpc.Channel) -> operations_v1.OperationsClient:
    return operations_v1.OperationsClient(channel)


def create_job(
    channel: grpc.Channel, task: str, params: dict[str, Any], parent: str = "", **labels: str
) -> operations_pb2.Operation:
    request = jobs_pb2.CreateJobRequest(parent=parent, task=task, labels=labels)
    request.params.update(params)
    created: operations_pb2.Operation = jobs_pb2_grpc.JobsStub(channel).CreateJob(
        request, timeout=30
    )
    return created


def job_future(
    channel: grpc.Channel, ops: operations_v1.OperationsClient, task: str, params: dict[str, Any]
) -> operation.Operation:
    future: operation.Operation = operation.from_gapic(
        create_job(channel, task, params),
        ops,
        struct_pb2.Struct,
        metadata_type=jobs_pb2.JobMetadata,
        polling=FAST_POLLING,
    )
    return future


def test_operations_client_get_list_cancel_delete(
    channel: grpc.Channel, ops: operations_v1.OperationsClient
) -> None:
    run = uuid.uuid4().hex[:12]
    slow = create_job(channel, "sleep", {"worktime": 60}, run=run)
    quick = create_job(channel, "noop", {"n": 1}, run=run)

    got = ops.get_operation(slow.name)
    assert got.name == slow.name
    assert got.metadata.Is(jobs_pb2.JobMetadata.DESCRIPTOR)

    listed = {op.name for op in ops.list_operations("operations", f'labels.run = "{run}"')}
    assert listed == {slow.name, quick.name}

    ops.cancel_operation(slow.name)
    cancelled = operation.from_gapic(
        slow, ops, struct_pb2.Struct, metadata_type=jobs_pb2.JobMetadata, polling=FAST_POLLING
    )
    with pytest.raises(exceptions.Cancelled):
        cancelled.result(timeout=30)
    assert cancelled.cancelled()
    assert cancelled.metadata.state == jobs_pb2.JobMetadata.CANCELLED
    assert ops.get_operation(slow.name).error.code == code_pb2.CANCELLED  # kept, not deleted

    ops.delete_operation(quick.name)
    with pytest.raises(exceptions.NotFound):
        ops.get_operation(quick.name)
    with pytest.raises(exceptions.InvalidArgument):
        ops.get_operation("not-an-operation")


def test_from_gapic_resolves_create_job_to_struct_and_metadata(
    channel: grpc.Channel, ops: operations_v1.OperationsClient
) -> None:
    future = job_future(channel, ops, "sleep", {"worktime": 1})
    result = future.result(timeout=30)
    assert isinstance(result, struct_pb2.Struct)
    assert dict(result) == {"slept_seconds": 1}
    assert future.done()
    metadata = future.metadata
    assert isinstance(metadata, jobs_pb2.JobMetadata)
    assert metadata.state == jobs_pb2.JobMetadata.SUCCEEDED
    assert metadata.progress_percent == 100
    assert metadata.task == "sleep"


def test_from_gapic_failed_job_raises_google_api_call_error(
    channel: grpc.Channel, ops: operations_v1.OperationsClient
) -> None:
    future = job_future(channel, ops, "fail", {"permanent": True, "message": "nope"})
    with pytest.raises(exceptions.Unknown) as caught:  # the code of a task failure
        future.result(timeout=30)
    assert "nope" in caught.value.message
    assert caught.value.errors[0].details  # the google.rpc.Status, ErrorInfo included
    assert future.metadata.state == jobs_pb2.JobMetadata.FAILED


def test_from_gapic_cancel(channel: grpc.Channel, ops: operations_v1.OperationsClient) -> None:
    future = job_future(channel, ops, "sleep", {"worktime": 60})
    assert future.cancel()
    with pytest.raises(exceptions.Cancelled):
        future.result(timeout=30)
    assert future.cancelled()


def test_from_gapic_resolves_convert_document_to_convert_response(
    shared: Service, channel: grpc.Channel, ops: operations_v1.OperationsClient
) -> None:
    created = convert_document(
        channel, convert_pb2.ConvertRequest(content="abc", target_format=convert_pb2.UPPERCASE)
    )
    future = operation.from_gapic(
        created,
        ops,
        convert_pb2.ConvertResponse,
        metadata_type=jobs_pb2.JobMetadata,
        polling=FAST_POLLING,
    )
    response = future.result(timeout=30)
    assert isinstance(response, convert_pb2.ConvertResponse)
    assert response.content == "ABC"
    assert response.input_lines == 1
    assert future.metadata.task == "convert"


def test_rest_operations_client_with_default_http_options(
    shared: Service, channel: grpc.Channel
) -> None:
    """api-core's REST OperationsClient, as a Google client library builds it,
    with its default http_options (`/v1/{name=**}/operations`,
    `/v1/{name=**/operations/*}`, `...:cancel`), through the HTTP gateway."""
    transport = OperationsRestTransport(
        # The scheme in the host: the transport does not pass url_scheme on.
        host=f"http://127.0.0.1:{http_port(shared)}",
        credentials=ga_credentials.AnonymousCredentials(),
    )
    client = AbstractOperationsClient(transport=transport)
    run = uuid.uuid4().hex[:12]
    project = f"rest-{run}"
    slow = create_job(channel, "sleep", {"worktime": 60}, parent=f"projects/{project}", run=run)
    quick = create_job(channel, "noop", {"n": 1}, parent=f"projects/{project}", run=run)
    elsewhere = create_job(channel, "noop", {"n": 2}, parent="projects/elsewhere", run=run)
    assert slow.name.startswith(f"projects/{project}/operations/")

    got = client.get_operation(slow.name)
    assert got.name == slow.name
    assert got.metadata.Is(jobs_pb2.JobMetadata.DESCRIPTOR)

    listed = [op.name for op in client.list_operations(f"projects/{project}", filter_="")]
    assert sorted(listed) == sorted([slow.name, quick.name]), "one project, and all of it"
    assert elsewhere.name not in listed
    filtered = client.list_operations(f"projects/{project}", filter_='metadata.task = "noop"')
    assert [op.name for op in filtered] == [quick.name]

    client.cancel_operation(slow.name)
    cancelled = operation.from_gapic(
        slow,
        ops_for(channel),
        struct_pb2.Struct,
        metadata_type=jobs_pb2.JobMetadata,
        polling=FAST_POLLING,
    )
    with pytest.raises(exceptions.Cancelled):
        cancelled.result(timeout=30)
    assert client.get_operation(slow.name).error.code == code_pb2.CANCELLED

    client.delete_operation(quick.name)
    with pytest.raises(exceptions.NotFound):
        client.get_operation(quick.name)
    with pytest.raises(exceptions.NotFound):  # the name of another project names nothing
        client.get_operation(elsewhere.name.replace("projects/elsewhere/", f"projects/{project}/"))


def ops_for(channel: grpc.Channel) -> operations_v1.OperationsClient:
    return operations_v1.OperationsClient(channel)
