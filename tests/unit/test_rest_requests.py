"""Routes from the google.api.http options, routing (404/405), and HTTP
requests turned into gRPC requests (path, query, body)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.api import http_pb2
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from longrun.v1 import jobs_pb2
from longrun_server.rest import (
    EXTRA_RULES,
    GatewayError,
    RestGateway,
    Route,
    Router,
    build_request,
    build_routes,
    rule_bindings,
    served_services,
    split_host_port,
    system_params,
)

ROUTES = build_routes(served_services())
ROUTER = Router(ROUTES)


def _reason(exc: GatewayError) -> str:
    info = error_details_pb2.ErrorInfo()
    assert exc.status.details[0].Unpack(info)
    return str(info.reason)


def _route(http_method: str, path: str) -> tuple[Route, dict[str, str]]:
    return ROUTER.resolve(http_method, path)


def _build(
    http_method: str, path: str, query: list[tuple[str, str]] | None = None, body: Any = None
) -> Any:
    route, values = _route(http_method, path)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body else b""
    return build_request(route, values, query or [], raw)


# ---- routes ----


Q = "longrun.v1.Queues."
QUEUE = "/v1/{name=projects/*/queues/*}"
QUEUE_ROUTES = {
    ("POST", "/v1/{parent=projects/*}/queues", "queue", Q + "CreateQueue"),
    ("GET", "/v1/{parent=projects/*}/queues", "", Q + "ListQueues"),
    ("GET", QUEUE, "", Q + "GetQueue"),
    ("PATCH", "/v1/{queue.name=projects/*/queues/*}", "queue", Q + "UpdateQueue"),
    ("DELETE", QUEUE, "", Q + "DeleteQueue"),
    ("POST", QUEUE + ":pause", "*", Q + "PauseQueue"),
    ("POST", QUEUE + ":resume", "*", Q + "ResumeQueue"),
    ("POST", QUEUE + ":purge", "*", Q + "PurgeQueue"),
    (
        "POST",
        "/v1/{resource=projects/*/queues/*}:testIamPermissions",
        "*",
        Q + "TestIamPermissions",
    ),
    ("GET", "/v1/{parent=projects/*}/deadLetters", "", Q + "ListDeadLetters"),
}


def test_dead_letters_of_every_project_and_queue_stats_by_query() -> None:
    request = _build(
        "GET", "/v1/projects/-/deadLetters", [("pageSize", "10"), ("pageToken", "abc")]
    )
    assert (request.parent, request.page_size, request.page_token) == ("projects/-", 10, "abc")
    got = _build("GET", "/v1/projects/billing/queues/emails", [("readMask", "stats")])
    assert got.name == "projects/billing/queues/emails"
    assert list(got.read_mask.paths) == ["stats"]


def test_queue_update_takes_the_name_from_the_path_and_the_queue_from_the_body() -> None:
    request = _build(
        "PATCH",
        "/v1/projects/billing/queues/emails",
        [("updateMask", "retryConfig.maxAttempts")],
        {"retryConfig": {"maxAttempts": 7}},
    )
    assert request.queue.name == "projects/billing/queues/emails"
    assert request.queue.retry_config.max_attempts == 7
    assert list(request.update_mask.paths) == ["retry_config.max_attempts"]


def test_routes_come_from_the_descriptors_plus_the_extra_rules() -> None:
    table = {(r.http_method, r.template.text, r.body, r.method.full_name) for r in ROUTES}
    ops = "google.longrunning.Operations."
    assert table == {
        ("GET", "/v1/{name=operations}", "", ops + "ListOperations"),
        ("GET", "/v1/{name=projects/*}/operations", "", ops + "ListOperations"),
        ("GET", "/v1/{name=operations/**}", "", ops + "GetOperation"),
        ("GET", "/v1/{name=projects/*/operations/*}", "", ops + "GetOperation"),
        ("DELETE", "/v1/{name=operations/**}", "", ops + "DeleteOperation"),
        ("DELETE", "/v1/{name=projects/*/operations/*}", "", ops + "DeleteOperation"),
        ("POST", "/v1/{name=operations/**}:cancel", "*", ops + "CancelOperation"),
        ("POST", "/v1/{name=projects/*/operations/*}:cancel", "*", ops + "CancelOperation"),
        ("POST", "/v1/{name=operations/**}:wait", "*", ops + "WaitOperation"),
        ("POST", "/v1/{name=projects/*/operations/*}:wait", "*", ops + "WaitOperation"),
        ("POST", "/v1/{parent=projects/*}/jobs", "*", "longrun.v1.Jobs.CreateJob"),
        ("POST", "/v1/jobs", "*", "longrun.v1.Jobs.CreateJob"),
        (
            "POST",
            "/v1/{parent=projects/*}/jobs:batchCreate",
            "*",
            "longrun.v1.Jobs.BatchCreateJobs",
        ),
        ("POST", "/v1/jobs:batchCreate", "*", "longrun.v1.Jobs.BatchCreateJobs"),
        *QUEUE_ROUTES,
    }
    assert {r.rpc_path for r in ROUTES} >= {
        "/google.longrunning.Operations/WaitOperation",
        "/longrun.v1.Jobs/CreateJob",
    }


def test_wait_is_bound_through_the_same_rule_type() -> None:
    rule = EXTRA_RULES["google.longrunning.Operations.WaitOperation"]
    assert isinstance(rule, http_pb2.HttpRule)
    assert list(rule_bindings(rule)) == [
        ("POST", "/v1/{name=operations/**}:wait", "*"),
        ("POST", "/v1/{name=projects/*/operations/*}:wait", "*"),
    ]


def test_rule_bindings_include_custom_and_additional_bindings() -> None:
    rule = http_pb2.HttpRule(
        get="/v1/{name=things/*}",
        additional_bindings=[
            http_pb2.HttpRule(custom=http_pb2.CustomHttpPattern(kind="head", path="/v1/x"))
        ],
    )
    assert list(rule_bindings(rule)) == [("GET", "/v1/{name=things/*}", ""), ("HEAD", "/v1/x", "")]


# ---- routing ----


@pytest.mark.parametrize(
    ("http_method", "path", "method", "values"),
    [
        ("GET", "/v1/operations", "ListOperations", {"name": "operations"}),
        ("GET", "/v1/operations/abc", "GetOperation", {"name": "operations/abc"}),
        ("DELETE", "/v1/operations/abc", "DeleteOperation", {"name": "operations/abc"}),
        ("POST", "/v1/operations/abc:cancel", "CancelOperation", {"name": "operations/abc"}),
        ("POST", "/v1/operations/abc:wait", "WaitOperation", {"name": "operations/abc"}),
        ("POST", "/v1/jobs", "CreateJob", {}),
        ("GET", "/v1/projects/p/operations", "ListOperations", {"name": "projects/p"}),
        (
            "GET",
            "/v1/projects/p/operations/abc",
            "GetOperation",
            {"name": "projects/p/operations/abc"},
        ),
        (
            "DELETE",
            "/v1/projects/p/operations/abc",
            "DeleteOperation",
            {"name": "projects/p/operations/abc"},
        ),
        (
            "POST",
            "/v1/projects/p/operations/abc:cancel",
            "CancelOperation",
            {"name": "projects/p/operations/abc"},
        ),
        (
            "POST",
            "/v1/projects/p/operations/abc:wait",
            "WaitOperation",
            {"name": "projects/p/operations/abc"},
        ),
        ("POST", "/v1/projects/p/jobs", "CreateJob", {"parent": "projects/p"}),
        # a malformed name still routes; the server says what is wrong with it
        ("GET", "/v1/operations/a%20b", "GetOperation", {"name": "operations/a b"}),
    ],
)
def test_routing(http_method: str, path: str, method: str, values: dict[str, str]) -> None:
    route, got = _route(http_method, path)
    assert (route.method.name, got) == (method, values)


@pytest.mark.parametrize("path", ["/", "/v1", "/v2/operations", "/v1/operationsx", "/v1/jobs/x"])
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(GatewayError) as info:
        _route("GET", path)
    assert info.value.http is None
    assert info.value.status.code == 5
    assert _reason(info.value) == "ROUTE_NOT_FOUND"
    assert path in info.value.status.message


@pytest.mark.parametrize(
    ("http_method", "path", "allow"),
    [
        ("PUT", "/v1/jobs", "POST"),
        ("GET", "/v1/jobs", "POST"),
        ("POST", "/v1/operations/abc", "GET, DELETE"),
        ("GET", "/v1/operations/abc:cancel", "POST"),
        ("DELETE", "/v1/operations", "GET"),
    ],
)
def test_wrong_method_is_405(http_method: str, path: str, allow: str) -> None:
    with pytest.raises(GatewayError) as info:
        _route(http_method, path)
    assert info.value.http == 405
    assert info.value.headers == {"Allow": allow}
    assert _reason(info.value) == "METHOD_NOT_ALLOWED"


# ---- requests ----


def test_query_parameters_set_fields_in_either_spelling() -> None:
    snake = _build(
        "GET", "/v1/operations", [("filter", "done:true"), ("page_size", "10"), ("page_token", "t")]
    )
    camel = _build(
        "GET", "/v1/operations", [("filter", "done:true"), ("pageSize", "10"), ("pageToken", "t")]
    )
    expected = operations_pb2.ListOperationsRequest(
        name="operations", filter="done:true", page_size=10, page_token="t"
    )
    assert snake == camel == expected


def test_bool_query_parameters() -> None:
    got = _build("GET", "/v1/operations", [("returnPartialSuccess", "true")])
    assert got.return_partial_success is True
    with pytest.raises(GatewayError) as info:
        _build("GET", "/v1/operations", [("returnPartialSuccess", "maybe")])
    assert "true or false" in info.value.status.message


@pytest.mark.parametrize(
    ("query", "reason", "needle"),
    [
        ([("nope", "1")], "PARAMETER_UNKNOWN", "has no field 'nope'"),
        ([("page_size", "abc")], "PARAMETER_INVALID", "page_size"),
        ([("pageSize", "1"), ("page_size", "2")], "PARAMETER_REPEATED", "more than once"),
        ([("filter.x", "1")], "PARAMETER_UNKNOWN", "not a singular message field"),
    ],
)
def test_bad_query_parameters_are_400(
    query: list[tuple[str, str]], reason: str, needle: str
) -> None:
    with pytest.raises(GatewayError) as info:
        _build("GET", "/v1/operations", query)
    assert info.value.status.code == 3
    assert _reason(info.value) == reason
    assert needle in info.value.status.message


def test_path_variables_win_over_query_and_body() -> None:
    got = _build("GET", "/v1/operations/abc", [("name", "operations/other")])
    assert got == operations_pb2.GetOperationRequest(name="operations/abc")
    wait = _build("POST", "/v1/operations/abc:wait", body={"name": "operations/x", "timeout": "3s"})
    assert wait == operations_pb2.WaitOperationRequest(
        name="operations/abc", timeout=duration_pb2.Duration(seconds=3)
    )


def test_the_body_is_parsed_as_json() -> None:
    got = _build(
        "POST",
        "/v1/jobs",
        body={"task": "sleep", "params": {"worktime": 2}, "requestId": "r", "labels": {"a": "b"}},
    )
    assert isinstance(got, jobs_pb2.CreateJobRequest)
    assert (got.task, got.request_id, dict(got.labels)) == ("sleep", "r", {"a": "b"})
    assert got.params["worktime"] == 2


def test_an_empty_body_is_an_empty_message() -> None:
    got = _build("POST", "/v1/operations/abc:cancel")
    assert got == operations_pb2.CancelOperationRequest(name="operations/abc")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"task": "sleep", "bogus": 1}', 'has no field named "bogus"'),
        (b'{"task": 5}', "task"),
        (b'{"params": [1]}', "params"),
        (b"{bad", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_a_bad_body_is_400_with_the_parse_message(body: bytes, needle: str) -> None:
    with pytest.raises(GatewayError) as info:
        _build("POST", "/v1/jobs", body=body)
    assert info.value.status.code == 3
    assert _reason(info.value) == "BODY_MALFORMED"
    assert needle in info.value.status.message


def test_body_star_takes_no_query_parameters() -> None:
    with pytest.raises(GatewayError) as info:
        _build("POST", "/v1/jobs", [("task", "sleep")], body={"task": "sleep"})
    assert "query parameters are not accepted" in info.value.status.message


def test_alt_json_and_enum_encoding() -> None:
    options, rest = system_params([("$alt", "json;enum-encoding=int"), ("pageSize", "1")])
    assert options.use_integers_for_enums is True
    assert rest == [("pageSize", "1")]
    options, rest = system_params([("alt", "json"), ("$.xgafv", "2")])
    assert (options.use_integers_for_enums, rest) == (False, [])
    with pytest.raises(GatewayError):
        system_params([("alt", "proto")])


# ---- deadlines, addresses ----


def _gateway() -> RestGateway:
    return RestGateway("127.0.0.1:1", ROUTES, max_wait=600.0, call_timeout=60.0, wait_margin=2.0)


@pytest.mark.parametrize(
    ("body", "deadline"),
    [
        ({"timeout": "30s"}, 32.0),
        ({"timeout": "0.5s"}, 2.5),
        ({"timeout": "0s"}, 2.0),
        ({"timeout": "-1s"}, 2.0),  # the server refuses it at once
        ({"timeout": "3600s"}, 602.0),  # capped by the server's max wait
        ({}, 602.0),
    ],
)
def test_wait_deadline_is_a_bit_above_the_wait(body: dict[str, str], deadline: float) -> None:
    route, values = _route("POST", "/v1/operations/abc:wait")
    message = build_request(route, values, [], json.dumps(body).encode())
    assert _gateway().deadline(route, message) == pytest.approx(deadline)


def test_other_calls_get_the_call_timeout() -> None:
    route, values = _route("GET", "/v1/operations/abc")
    assert _gateway().deadline(route, build_request(route, values, [], b"")) == 60.0


@pytest.mark.parametrize(
    ("address", "parsed"),
    [
        ("localhost:8080", ("localhost", 8080)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("[::1]:8080", ("::1", 8080)),
        (":8080", (None, 8080)),
    ],
)
def test_split_host_port(address: str, parsed: tuple[str | None, int]) -> None:
    assert split_host_port(address) == parsed


@pytest.mark.parametrize("address", ["localhost", "localhost:http", "localhost:70000", ""])
def test_split_host_port_refuses(address: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        split_host_port(address)
