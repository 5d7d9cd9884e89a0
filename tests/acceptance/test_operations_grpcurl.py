"""The README walk-through, done by grpcurl against the real server and worker."""

from __future__ import annotations

import json
import time

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from tests.acceptance.harness import Service, wait_for

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"


def test_reflection_lists_and_describes_both_services(service: Service) -> None:
    listed = service.grpcurl("list")
    assert listed.code == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"google.longrunning.Operations", "longrun.v1.Jobs"} <= services
    described = service.grpcurl("describe", "longrun.v1.Jobs")
    assert "rpc CreateJob ( .longrun.v1.CreateJobRequest ) returns" in described.stdout
    metadata = service.grpcurl("describe", "longrun.v1.JobMetadata")
    assert "CANCELLED" in metadata.stdout, metadata.stderr


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_answers_under_both_protocol_names(service: Service, version: str) -> None:
    # v1 and v1alpha are the same messages under two package names; newer
    # grpcurl, grpcui and Postman ask v1 first.
    ask = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(
            file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"
        ),
    ]
    with grpc.insecure_channel(service.target) as channel:
        info = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        listed, described = list(info(iter(ask), timeout=10))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "google.longrunning.Operations",
        "longrun.v1.Jobs",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in described.file_descriptor_response.file_descriptor_proto
    ]
    # grpcio-reflection registers v1alpha under its own file name; v1 is ours.
    expected = {
        "v1": "grpc/reflection/v1/reflection.proto",
        "v1alpha": "grpc_reflection/v1alpha/reflection.proto",
    }[version]
    assert expected in [f.name for f in files]
    (described_file,) = (f for f in files if f.name == expected)
    assert described_file.package == f"grpc.reflection.{version}"
    assert [s.name for s in described_file.service] == ["ServerReflection"]


def test_health_list_reports_every_served_service(service: Service) -> None:
    with grpc.insecure_channel(service.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        listed = health.List(health_pb2.HealthListRequest(), timeout=10)
        check = health.Check(health_pb2.HealthCheckRequest(service="longrun.v1.Jobs"), timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in listed.statuses.items()} == {
        "": serving,
        "google.longrunning.Operations": serving,
        "longrun.v1.Jobs": serving,
        "longrun.v1.Queues": serving,
    }
    assert check.status == serving


def test_create_wait_get_sleep_job(service: Service) -> None:
    op = service.call(CREATE, {"task": "sleep", "params": {"worktime": 2}})
    assert op["name"].startswith("projects/default/operations/")
    assert not op.get("done", False)
    assert op["metadata"]["@type"] == "type.googleapis.com/longrun.v1.JobMetadata"
    assert op["metadata"]["task"] == "sleep"
    assert op["metadata"]["state"] == "QUEUED"

    done = service.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "30s"})
    assert done["done"] is True
    assert done["response"]["@type"] == "type.googleapis.com/google.protobuf.Struct"
    assert done["response"]["value"] == {"slept_seconds": 2}
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["metadata"]["progress_percent"] == 100

    got = service.call(f"{OPS}/GetOperation", {"name": op["name"]})
    assert got == done


def test_wait_returns_latest_state_at_timeout(service: Service) -> None:
    op = service.call(CREATE, {"task": "sleep", "params": {"worktime": 30}})
    started = time.monotonic()
    latest = service.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "0.5s"})
    assert time.monotonic() - started < 5
    assert not latest.get("done", False)
    assert latest["name"] == op["name"]
    service.call(f"{OPS}/CancelOperation", {"name": op["name"]})


def test_cancel_running_job_ends_cancelled_within_2s(service: Service) -> None:
    op = service.call(CREATE, {"task": "sleep", "params": {"worktime": 60}})
    name = op["name"]
    wait_for(
        lambda: (
            service.call(f"{OPS}/GetOperation", {"name": name})["metadata"]["state"] == "RUNNING"
        ),
        30,
        "the job to start running",
    )
    cancelled_at = time.monotonic()
    service.call(f"{OPS}/CancelOperation", {"name": name})
    done = service.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "10s"})
    elapsed = time.monotonic() - cancelled_at
    assert done["done"] is True
    assert done["error"]["code"] == 1
    assert done["metadata"]["state"] == "CANCELLED"
    assert done["metadata"]["cancel_requested"] is True
    assert elapsed < 2.0, f"cancel took {elapsed:.2f}s"
    # Cancelling again is a no-op that succeeds; the outcome stays.
    service.call(f"{OPS}/CancelOperation", {"name": name})
    again = service.call(f"{OPS}/GetOperation", {"name": name})
    assert again["error"]["code"] == 1


def test_delete_then_get_is_not_found(service: Service) -> None:
    op = service.call(CREATE, {"task": "noop", "params": {"x": 1}})
    service.call(f"{OPS}/WaitOperation", {"name": op["name"], "timeout": "30s"})
    assert service.call(f"{OPS}/DeleteOperation", {"name": op["name"]}) == {}
    got = service.grpcurl(f"{OPS}/GetOperation", data={"name": op["name"]})
    assert got.code != 0
    assert "NotFound" in got.stderr
    assert op["name"] in got.stderr


def test_list_newest_first_with_paging(service: Service) -> None:
    names = [service.call(CREATE, {"task": "noop", "params": {"i": i}})["name"] for i in range(5)]
    first = service.call(f"{OPS}/ListOperations", {"name": "operations", "page_size": 3})
    assert [o["name"] for o in first["operations"]] == names[::-1][:3]
    token = first["next_page_token"]
    second = service.call(
        f"{OPS}/ListOperations", {"name": "operations", "page_size": 3, "page_token": token}
    )
    assert [o["name"] for o in second["operations"]] == names[::-1][3:]
    assert not second.get("next_page_token")


def test_list_filter_selects_and_binds_the_page_token(service: Service) -> None:
    sleeper = service.call(
        CREATE, {"task": "sleep", "params": {"worktime": 0}, "labels": {"env": "prod"}}
    )
    for i in range(3):
        service.call(CREATE, {"task": "noop", "params": {"i": i}, "labels": {"env": "dev"}})
    service.call(f"{OPS}/WaitOperation", {"name": sleeper["name"], "timeout": "30s"})
    flt = 'metadata.task = "sleep" AND labels.env = prod AND done = true'
    only = service.call(f"{OPS}/ListOperations", {"filter": flt})
    assert [o["name"] for o in only["operations"]] == [sleeper["name"]]
    dev = service.call(f"{OPS}/ListOperations", {"filter": "labels.env = dev", "page_size": 2})
    assert len(dev["operations"]) == 2
    other = service.grpcurl(
        f"{OPS}/ListOperations",
        data={"filter": "labels.env = prod", "page_token": dev["next_page_token"]},
        flags=("-format-error",),
    )
    status = json.loads(other.stderr)
    assert status["code"] == 3
    assert status["details"][0]["reason"] == "PAGE_TOKEN_MISMATCH"


def _count(service: Service) -> int:
    listed = service.call(f"{OPS}/ListOperations", {"page_size": 1000})
    return len(listed.get("operations", []))


@pytest.mark.parametrize(
    ("method", "data", "needle"),
    [
        (f"{OPS}/GetOperation", {"name": ""}, "name is required"),
        (f"{OPS}/GetOperation", {"name": "jobs/1"}, "malformed operation name"),
        (f"{OPS}/GetOperation", {"name": "operations/a b"}, "malformed operation name"),
        (f"{OPS}/WaitOperation", {"name": "operations/"}, "malformed operation name"),
        (f"{OPS}/CancelOperation", {"name": "nope"}, "malformed operation name"),
        (f"{OPS}/DeleteOperation", {"name": ""}, "name is required"),
        (CREATE, {"task": "nosuchtask"}, "unknown task 'nosuchtask'"),
        (CREATE, {"task": ""}, "task is required"),
        (CREATE, {"task": "sleep", "params": {"worktime": -3}}, "worktime must be between"),
        (CREATE, {"task": "sleep", "params": {"worktime": "long"}}, "worktime must be a number"),
        (CREATE, {"task": "noop", "request_id": "not-a-uuid"}, "is not a UUID4"),
        (CREATE, {"task": "noop", "labels": {"Bad Key": "v"}}, "label key"),
        (f"{OPS}/ListOperations", {"page_size": -1}, "page_size must not be negative"),
        (f"{OPS}/ListOperations", {"page_token": "garbage!"}, "page_token is not a token"),
        (f"{OPS}/ListOperations", {"filter": "metadata.colour = 1"}, "unknown field"),
        (f"{OPS}/ListOperations", {"filter": "done = (true"}, "column"),
    ],
)
def test_bad_input_is_invalid_argument_and_creates_nothing(
    service: Service, method: str, data: dict[str, object], needle: str
) -> None:
    before = _count(service)
    result = service.grpcurl(method, data=data, flags=("-format-error",))
    assert result.code != 0
    status = json.loads(result.stderr)
    assert status["code"] == 3, status  # INVALID_ARGUMENT
    assert needle in status["message"]
    (info,) = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["domain"] == "longrun.dev"
    assert info["reason"].isupper()
    assert _count(service) == before


def test_params_that_are_not_a_struct_are_invalid_argument(service: Service) -> None:
    """grpcurl refuses such JSON itself; a raw client can still send the bytes."""
    before = _count(service)
    # field 1 task="noop"; field 2 (params) holding bytes that are not a Struct.
    payload = b"\x0a\x04noop" + b"\x12\x03\xff\xff\xff"
    with grpc.insecure_channel(service.target) as channel:
        call = channel.unary_unary(
            "/longrun.v1.Jobs/CreateJob",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as info:
            call(payload, timeout=10)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid longrun.v1.CreateJobRequest" in (info.value.details() or "")
    assert _count(service) == before
