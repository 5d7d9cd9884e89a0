"""The example typed API (examples/convert) mounted on the real server with
`--service-module` (LONGRUN_SERVICE_MODULES), its task loaded in the workers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import grpc
import pytest
from google.longrunning import operations_pb2

from convert.v1 import convert_pb2
from examples.convert.service import add_to_server
from examples.convert.tasks import render
from longrun.v1 import jobs_pb2
from longrun_client import Client, InvalidArgument
from tests.acceptance.harness import Service
from tests.acceptance.test_clients import BACKENDS, EXAMPLE_ENV, running_service

CONVERT = "/convert.v1.Converter/ConvertDocument"


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(request.param, tmp_path_factory.mktemp("convert"), EXAMPLE_ENV) as svc:
        yield svc


def convert_document(
    channel: grpc.Channel, request: convert_pb2.ConvertRequest
) -> operations_pb2.Operation:
    """Converter/ConvertDocument without the generated stub (any client can)."""
    call = channel.unary_unary(
        CONVERT,
        request_serializer=convert_pb2.ConvertRequest.SerializeToString,
        response_deserializer=operations_pb2.Operation.FromString,
    )
    operation: operations_pb2.Operation = call(request, timeout=30)
    return operation


def test_reflection_lists_and_describes_the_example(shared: Service) -> None:
    listed = shared.grpcurl("list")
    assert "convert.v1.Converter" in listed.stdout.split(), listed.stderr
    described = shared.grpcurl("describe", "convert.v1.Converter")
    assert described.code == 0, described.stderr
    assert (
        "rpc ConvertDocument ( .convert.v1.ConvertRequest ) returns "
        "( .google.longrunning.Operation )" in described.stdout
    )
    response = shared.grpcurl("describe", "convert.v1.ConvertResponse")
    assert "int64 output_bytes = 4;" in response.stdout, response.stderr


def test_grpcurl_converts_and_prints_the_typed_response(shared: Service) -> None:
    op = shared.call(
        "convert.v1.Converter/ConvertDocument",
        {"content": "a < b\n\nsecond", "target_format": "HTML", "labels": {"via": "grpcurl"}},
    )
    assert op["metadata"]["task"] == "convert"
    done = shared.call(
        "google.longrunning.Operations/WaitOperation", {"name": op["name"], "timeout": "30s"}
    )
    assert done["response"] == {
        "@type": "type.googleapis.com/convert.v1.ConvertResponse",
        "content": "<p>a &lt; b</p>\n<p>second</p>",
        "format": "HTML",
        "input_lines": 3,
        "output_bytes": "29",
    }
    assert done["metadata"]["labels"] == {"via": "grpcurl"}


def test_python_client_follows_a_typed_operation(shared: Service) -> None:
    request_id = str(uuid.uuid4())
    request = convert_pb2.ConvertRequest(
        content="hello world", target_format=convert_pb2.UPPERCASE, request_id=request_id
    )
    with grpc.insecure_channel(shared.target) as channel, Client(channel=channel) as client:
        operation = convert_document(channel, request)
        assert convert_document(channel, request).name == operation.name  # AIP-155
        future = client.follow(operation, response_type=convert_pb2.ConvertResponse)
        response = future.result(timeout=30)
        assert isinstance(response, convert_pb2.ConvertResponse)
        assert response.content == "HELLO WORLD"
        assert response.format == convert_pb2.UPPERCASE
        assert future.metadata.task == "convert"
        assert future.metadata.state == jobs_pb2.JobMetadata.SUCCEEDED
        # Without a response_type the message comes back typed too: the
        # process knows convert.v1.
        assert client.follow(operation.name).result(timeout=30) == response


def test_a_typed_rpc_creates_in_its_parent_or_the_default_project(shared: Service) -> None:
    with grpc.insecure_channel(shared.target) as channel:
        placed = convert_document(
            channel,
            convert_pb2.ConvertRequest(
                content="x", target_format=convert_pb2.HTML, parent="projects/docs"
            ),
        )
        assert placed.name.startswith("projects/docs/operations/")
        default = convert_document(
            channel, convert_pb2.ConvertRequest(content="x", target_format=convert_pb2.HTML)
        )
        assert default.name.startswith("projects/default/operations/")


def test_invalid_requests_are_rejected_like_create_job(shared: Service) -> None:
    with grpc.insecure_channel(shared.target) as channel:
        with pytest.raises(grpc.RpcError) as missing_format:
            convert_document(channel, convert_pb2.ConvertRequest(content="x"))
        with pytest.raises(grpc.RpcError) as bad_id:
            convert_document(
                channel,
                convert_pb2.ConvertRequest(
                    content="x", target_format=convert_pb2.HTML, request_id="nope"
                ),
            )
    assert missing_format.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "target_format is required" in (missing_format.value.details() or "")
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_render_formats() -> None:
    assert render("a  b\nc\n\n<d>", convert_pb2.HTML) == "<p>a b c</p>\n<p>&lt;d&gt;</p>"
    assert render("Ab\ncd", convert_pb2.UPPERCASE) == "AB\nCD"
    wrapped = render("word " * 20, convert_pb2.WRAPPED_TEXT)
    assert max(len(line) for line in wrapped.splitlines()) <= 40


async def test_mounting_without_the_task_fails_loudly() -> None:
    jobs = SimpleNamespace(registry=SimpleNamespace(names=["noop", "sleep"]))
    server = grpc.aio.server()
    with pytest.raises(RuntimeError, match=r"examples\.convert\.tasks"):
        add_to_server(server, jobs)  # type: ignore[arg-type]
    await server.stop(None)


def test_the_convert_task_is_an_ordinary_job(shared: Service) -> None:
    """CreateJob(task="convert") works too, and its params are validated."""
    with Client(shared.target) as client:
        result = client.submit(
            "convert",
            {"content": "x", "target_format": "UPPERCASE"},
            response_type=convert_pb2.ConvertResponse,
        ).result(timeout=30)
        assert result.content == "X"
        with pytest.raises(InvalidArgument) as caught:
            client.submit("convert", {"content": "", "target_format": "HTML"})
        assert caught.value.reason == "PARAMS_REJECTED"
