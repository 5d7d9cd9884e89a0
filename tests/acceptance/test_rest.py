"""The HTTP/JSON gateway, driven by plain curl against the real server and
worker subprocesses: the docs/rest.md walk-through, and errors in the
AIP-193 JSON form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.acceptance.harness import Service, backend_env, wait_for

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# curl must reach 127.0.0.1 directly, whatever proxy the machine has.
_CURL_ENV = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class Rest:
    service: Service
    base: str

    def curl(self, *args: str) -> Reply:
        """`curl ARGS` (paths are relative to the gateway), as in docs/rest.md;
        -sS, -D and -w only collect the status and headers."""
        curl = shutil.which("curl")
        assert curl, "curl is not installed"
        words = [self.base + a if a.startswith("/") else a for a in args]
        done = subprocess.run(
            [curl, "-sS", "-D", "-", "-w", "\n%{http_code}", *words],
            capture_output=True,
            timeout=60,
            env=_CURL_ENV,
        )
        assert done.returncode == 0, f"curl {words}: {done.stderr!r}\n{self.service.logs()}"
        head, _, rest = done.stdout.decode().partition("\r\n\r\n")
        text, _, code = rest.rpartition("\n")
        headers = {}
        for line in head.splitlines()[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        return Reply(int(code), headers, json.loads(text) if text.strip() else None)

    def ok(self, *args: str) -> Any:
        reply = self.curl(*args)
        assert reply.status == 200, f"{args}: {reply.status} {reply.body}"
        assert reply.headers["content-type"].startswith("application/json")
        return reply.body


@pytest.fixture(
    scope="module", params=["embedded", pytest.param("google", marks=pytest.mark.google)]
)
def rest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Rest]:
    """One server with the HTTP listener on, plus one worker, for the module."""
    if request.param == "google":
        from tests.contract.google_backends import require_emulators

        require_emulators()
    workdir = tmp_path_factory.mktemp("rest")
    port_file = workdir / "http-port"
    svc = Service(workdir, backend_env(str(request.param), workdir))
    with svc.kept():
        # The server writes the HTTP port file before the gRPC one, which
        # start_server waits for.
        svc.start_server(
            extra_env={
                "LONGRUN_HTTP_ADDRESS": "127.0.0.1:0",
                "LONGRUN_HTTP_PORT_FILE": str(port_file),
            }
        )
        svc.start_worker()
        yield Rest(svc, f"http://127.0.0.1:{int(port_file.read_text())}")
    # SIGTERM stopped the gateway and the gRPC server together, cleanly.
    assert svc.server is not None and svc.server.returncode == 0, svc.logs()


def _error(reply: Reply, http: int, status: str) -> dict[str, Any]:
    """The AIP-193 error of `reply`, checked for its form; returns its ErrorInfo."""
    assert reply.status == http, reply.body
    error = reply.body["error"]
    assert (error["code"], error["status"]) == (http, status)
    assert error["message"]
    (info,) = [d for d in error["details"] if d["@type"] == ERROR_INFO]
    assert info["domain"] == "longrun.dev"
    assert info["reason"].isupper()
    return dict(info)


def test_walkthrough(rest: Rest) -> None:
    """The docs/rest.md curl section, command by command."""
    op = rest.ok("-X", "POST", "/v1/jobs", "-d", '{"task":"sleep","params":{"worktime":1}}')
    name = op["name"]
    assert name.startswith("projects/default/operations/")
    assert "done" not in op  # proto3 JSON leaves false out
    assert op["metadata"]["@type"] == "type.googleapis.com/longrun.v1.JobMetadata"
    assert op["metadata"]["state"] == "QUEUED"

    got = rest.ok(f"/v1/{name}")
    assert got["name"] == name

    done = rest.ok("-X", "POST", f"/v1/{name}:wait", "-d", '{"timeout":"30s"}')
    assert done["done"] is True
    assert done["response"] == {
        "@type": "type.googleapis.com/google.protobuf.Struct",
        "value": {"slept_seconds": 1},
    }
    assert done["metadata"]["state"] == "SUCCEEDED"
    assert done["metadata"]["progressPercent"] == 100  # lowerCamelCase
    assert rest.ok(f"/v1/{name}") == done

    # cancel a long one: it ends with error.code 1 (CANCELLED)
    long = rest.ok("-X", "POST", "/v1/jobs", "-d", '{"task":"sleep","params":{"worktime":60}}')
    assert rest.ok("-X", "POST", f"/v1/{long['name']}:cancel") == {}
    cancelled = rest.ok("-X", "POST", f"/v1/{long['name']}:wait", "-d", '{"timeout":"10s"}')
    assert cancelled["done"] is True
    assert cancelled["error"]["code"] == 1
    assert cancelled["metadata"]["state"] == "CANCELLED"
    assert rest.ok("-X", "POST", f"/v1/{long['name']}:cancel") == {}  # again: a no-op

    # list, newest first, with a filter and pages
    run = uuid.uuid4().hex[:8]
    names = [
        rest.ok(
            "-X",
            "POST",
            "/v1/jobs",
            "-d",
            json.dumps({"task": "noop", "params": {"i": i}, "labels": {"run": run}}),
        )["name"]
        for i in range(3)
    ]
    query = ("-G", "--data-urlencode", f'filter=labels.run = "{run}"', "-d", "pageSize=2")
    first = rest.ok("/v1/operations", *query)
    assert [o["name"] for o in first["operations"]] == names[::-1][:2]
    token = first["nextPageToken"]
    second = rest.ok("/v1/operations", *query, "-d", f"pageToken={token}")
    assert [o["name"] for o in second["operations"]] == names[::-1][2:]
    assert "nextPageToken" not in second
    newest = rest.ok("/v1/operations?pageSize=1")
    assert [o["name"] for o in newest["operations"]] == names[-1:]
    older = rest.ok(f"/v1/operations?pageSize=1&pageToken={newest['nextPageToken']}")
    assert [o["name"] for o in older["operations"]] == names[-2:-1]

    # forget it: then it is NOT_FOUND, with an ErrorInfo
    assert rest.ok("-X", "DELETE", f"/v1/{name}") == {}
    info = _error(rest.curl(f"/v1/{name}"), 404, "NOT_FOUND")
    assert info["reason"] == "OPERATION_NOT_FOUND"
    assert info["metadata"]["name"] == name


def test_project_routes_and_the_routes_without_a_project(rest: Rest) -> None:
    """`POST /v1/projects/{p}/jobs` creates in p, `GET /v1/projects/{p}/operations`
    lists only p; `/v1/operations/{id}` (by id) still gets, waits, cancels, deletes."""
    project = f"rest-{uuid.uuid4().hex[:8]}"
    body = '{"task":"sleep","params":{"worktime":60}}'
    op = rest.ok("-X", "POST", f"/v1/projects/{project}/jobs", "-d", body)
    name = op["name"]
    assert name.startswith(f"projects/{project}/operations/")
    elsewhere = rest.ok("-X", "POST", "/v1/jobs", "-d", '{"task":"noop"}')["name"]
    listed = rest.ok(f"/v1/projects/{project}/operations")
    assert [o["name"] for o in listed["operations"]] == [name]
    everything = rest.ok(
        "/v1/operations", "-G", "--data-urlencode", 'filter=metadata.task = "noop"'
    )
    assert elsewhere in {o["name"] for o in everything["operations"]}
    legacy = "operations/" + name.rsplit("/", 1)[1]
    assert rest.ok(f"/v1/{legacy}")["name"] == name  # the full name comes back
    assert rest.ok("-X", "POST", f"/v1/{legacy}:cancel") == {}
    waited = rest.ok("-X", "POST", f"/v1/{legacy}:wait", "-d", '{"timeout":"10s"}')
    assert (waited["name"], waited["metadata"]["state"]) == (name, "CANCELLED")
    # A full name with another project names nothing.
    wrong = name.replace(f"projects/{project}/", "projects/other/")
    assert _error(rest.curl(f"/v1/{wrong}"), 404, "NOT_FOUND")["metadata"]["name"] == wrong
    info = _error(rest.curl("/v1/projects/Bad_Project/operations"), 400, "INVALID_ARGUMENT")
    assert info["reason"] == "PROJECT_ID_INVALID"
    assert rest.ok("-X", "DELETE", f"/v1/{legacy}") == {}
    assert _error(rest.curl(f"/v1/{name}"), 404, "NOT_FOUND")["reason"] == "OPERATION_NOT_FOUND"
    assert rest.ok(f"/v1/projects/{project}/operations") == {}


def test_batch_create_through_curl(rest: Rest) -> None:
    """`POST /v1/projects/{p}/jobs:batchCreate` (AIP-233): one operation per
    item in order, each run; a repeat with the same request ids creates none;
    an item of another parent is 400 naming it."""
    project = f"rest-batch-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(3)]
    items = [{"task": "noop", "params": {"i": i}, "requestId": rid} for i, rid in enumerate(ids)]
    body = json.dumps({"requests": items})
    created = rest.ok("-X", "POST", f"/v1/projects/{project}/jobs:batchCreate", "-d", body)
    names = [op["name"] for op in created["operations"]]
    assert len(set(names)) == 3
    assert all(n.startswith(f"projects/{project}/operations/") for n in names)
    again = rest.ok("-X", "POST", f"/v1/projects/{project}/jobs:batchCreate", "-d", body)
    assert [op["name"] for op in again["operations"]] == names
    for i, name in enumerate(names):
        done = rest.ok("-X", "POST", f"/v1/{name}:wait", "-d", '{"timeout":"30s"}')
        assert done["done"] is True
        assert done["response"]["value"] == {"i": i}, done
    listed = rest.ok(f"/v1/projects/{project}/operations")
    assert sorted(o["name"] for o in listed["operations"]) == sorted(names)
    mixed = json.dumps({"requests": [{"task": "noop"}, {"task": "noop", "parent": "projects/x"}]})
    reply = rest.curl("-X", "POST", f"/v1/projects/{project}-2/jobs:batchCreate", "-d", mixed)
    info = _error(reply, 400, "INVALID_ARGUMENT")
    assert (info["reason"], info["metadata"]["index"]) == ("PARENT_MISMATCH", "1")
    assert rest.ok(f"/v1/projects/{project}-2/operations") == {}


def test_wait_returns_the_latest_state_at_its_timeout(rest: Rest) -> None:
    op = rest.ok("-X", "POST", "/v1/jobs", "-d", '{"task":"sleep","params":{"worktime":30}}')
    started = time.monotonic()
    latest = rest.ok("-X", "POST", f"/v1/{op['name']}:wait", "-d", '{"timeout":"0.5s"}')
    assert time.monotonic() - started < 5
    assert latest["name"] == op["name"]
    assert "done" not in latest
    rest.ok("-X", "POST", f"/v1/{op['name']}:cancel")


def _names(rest: Rest) -> set[str]:
    # Names only: operations left by earlier tests may still change state (a
    # cancel finishing), which is not what these tests are about.
    return {op["name"] for op in rest.ok("/v1/operations?pageSize=1000").get("operations", [])}


def test_a_bad_body_is_400_with_the_parse_message(rest: Rest) -> None:
    before = _names(rest)
    reply = rest.curl("-X", "POST", "/v1/jobs", "-d", '{"task":"sleep","bogus":1}')
    info = _error(reply, 400, "INVALID_ARGUMENT")
    assert info["reason"] == "BODY_MALFORMED"
    assert 'has no field named "bogus"' in reply.body["error"]["message"]

    reply = rest.curl("-X", "POST", "/v1/jobs", "-d", '{"task":')
    assert _error(reply, 400, "INVALID_ARGUMENT")["reason"] == "BODY_MALFORMED"
    assert "not valid JSON" in reply.body["error"]["message"]
    assert _names(rest) == before


@pytest.mark.parametrize(
    ("args", "reason", "needle"),
    [
        (("/v1/operations/a%20b",), "NAME_MALFORMED", "malformed operation name"),
        (("-X", "POST", "/v1/operations/a~b!:cancel"), "NAME_MALFORMED", "malformed"),
        (("-X", "DELETE", "/v1/operations/x/y"), "NAME_MALFORMED", "malformed"),
        (("/v1/operations?pageSize=-1",), "PAGE_SIZE_NEGATIVE", "must not be negative"),
        (("/v1/operations?pageSize=ten",), "PARAMETER_INVALID", "page_size"),
        (("/v1/operations?colour=red",), "PARAMETER_UNKNOWN", "no field 'colour'"),
        (
            ("-X", "POST", "/v1/jobs", "-d", '{"task":"nosuchtask"}'),
            "TASK_UNKNOWN",
            "unknown task 'nosuchtask'",
        ),
    ],
)
def test_invalid_requests_are_400(
    rest: Rest, args: tuple[str, ...], reason: str, needle: str
) -> None:
    reply = rest.curl(*args)
    info = _error(reply, 400, "INVALID_ARGUMENT")
    assert needle in reply.body["error"]["message"]
    assert info["reason"] == reason


def test_unknown_paths_are_404_and_wrong_methods_405(rest: Rest) -> None:
    info = _error(rest.curl("/v2/things"), 404, "NOT_FOUND")
    assert info["reason"] == "ROUTE_NOT_FOUND"

    reply = rest.curl("-X", "PUT", "/v1/jobs", "-d", "{}")
    assert _error(reply, 405, "UNIMPLEMENTED")["reason"] == "METHOD_NOT_ALLOWED"
    assert reply.headers["allow"] == "POST"


def test_unsupported_options_are_501(rest: Rest) -> None:
    reply = rest.curl("/v1/operations?returnPartialSuccess=true")
    assert _error(reply, 501, "UNIMPLEMENTED")["reason"] == "PARTIAL_SUCCESS_UNSUPPORTED"


def test_queues_through_curl(rest: Rest) -> None:
    """docs/queues.md's curl lines: the Queues routes, with the queue id as
    a query parameter, the update mask as `updateMask`, and custom verbs."""
    p = f"/v1/projects/rq-{uuid.uuid4().hex[:6]}"
    created = rest.ok(
        "-X", "POST", p + "/queues?queueId=emails", "-d", '{"retryConfig":{"maxAttempts":4}}'
    )
    assert created["name"].endswith("/queues/emails")
    assert created["retryConfig"] == {"maxAttempts": 4}
    patched = rest.ok(
        "-X",
        "PATCH",
        p + "/queues/emails?updateMask=retryConfig.minBackoff",
        "-d",
        '{"retryConfig":{"minBackoff":"1.5s","maxAttempts":9}}',
    )
    assert patched["retryConfig"] == {"maxAttempts": 4, "minBackoff": "1.500s"}
    listed = rest.ok(p + "/queues")
    assert [q["name"].rsplit("/", 1)[1] for q in listed["queues"]] == ["default", "emails"]
    assert rest.ok("-X", "POST", p + "/queues/emails:pause")["state"] == "PAUSED"
    time.sleep(1.0)  # a pause reaches the workers within --queue-refresh (0.5 s)
    op = rest.ok("-X", "POST", p + "/jobs", "-d", '{"task":"noop","queue":"emails","params":{}}')
    assert op["metadata"]["queue"].endswith("/queues/emails")
    assert "purgeTime" in rest.ok("-X", "POST", p + "/queues/emails:purge")
    name = op["name"]

    def cancelled() -> bool:
        got = rest.ok(f"/v1/{name}")
        return bool(got.get("done")) and got["error"]["code"] == 1

    wait_for(cancelled, 30, "the purged job to end CANCELLED")
    missing = rest.curl(p + "/queues/nothing")
    assert _error(missing, 404, "NOT_FOUND")["reason"] == "QUEUE_NOT_FOUND"
    assert rest.curl("-X", "DELETE", p + "/queues/emails").status == 200
