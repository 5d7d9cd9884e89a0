"""Who may do what, on real processes: every identity x every Operations RPC
and CreateJob x {gRPC, HTTP gateway}, on both backends, each with its
expected code (issue 10, first "Done means" item).

The deployment: `longrun-server` with TLS, ID tokens (`--oidc-audience`, its
certificates served by a thread in this test), API keys minted and revoked
with `longrun-server keys` against the same store, and a TOML policy file.
Project `matrix` (P) is the one the identities have roles on; project
`elsewhere` (Q) belongs to someone else, and every authenticated identity
must get PERMISSION_DENIED there, never NOT_FOUND and never the operation.

Mutual TLS needs two servers on the same store: grpcio's server API can only
require client certificates or not ask for them, so with
`--tls-client-auth optional` the HTTPS gateway asks for a certificate but the
gRPC port does not. The main server runs `optional` (every identity over
gRPC and HTTPS, the certificate over HTTPS); a second one runs `require`
for the certificate over gRPC.

`MATRIX` below is the table: one row per identity, one column per method on
P, plus `missing` (GetOperation of an absent operation of P: NOT_FOUND only
for who may read P), `list_all` (ListOperations of `operations`: every
project the caller may see, which for these identities is P or nothing) and
`other` (every method on Q). Get/Wait/Cancel/Delete also run on the names
without a project (`operations/{id}`, scopes `P-legacy` and `Q-legacy`),
which must not open a way around the project check, and on the id of Q's
operation under P's name (`Q-in-P`), and CreateJob without a
parent (`P-legacy`: it goes to the one project the caller may create in). Every cell is the
outcome expected over both transports (HTTP: the status the gRPC code maps
to; 401 with a `WWW-Authenticate: Bearer` challenge). Besides the code, each
case checks the ErrorInfo (reason; for a denial the permission and resource
it names), that a refusal carries nothing of an operation, and that a
refused Cancel/Delete changed nothing; an allowed one is checked in the
store (cancelled, gone, created).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2, json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from longrun.v1 import jobs_pb2, jobs_pb2_grpc
from tests.acceptance.harness import ROOT, Service, backend_env
from tests.acceptance.test_clients import BACKENDS, require_backend
from tests.support.certs import CertificateAuthority, Pair
from tests.support.oidc import AUDIENCE, certs_served_in_thread, id_token, make_key

P = "matrix"
Q = "elsewhere"
#: The mTLS identity's certificate has several SANs; the first names the
#: caller (`san:<first>`), the same on the gRPC port and through HTTPS.
MTLS_SAN = "matrix-client.example"
MTLS_OTHER_SANS = ("spiffe://longrun.test/matrix-client", "machine@example.com")
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
WAIT = "0.2s"
HTTP_STATUS = {"OK": 200, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404}

POLICY = f"""
[groups]
viewers = ["user:viewer@example.com"]
machines = ["san:{MTLS_SAN}"]

[[bindings]]
project = "{P}"
role = "viewer"
members = ["group:viewers"]

[[bindings]]
project = "{P}"
role = "editor"
members = ["user:editor@example.com", "group:machines"]

[[bindings]]
project = "{P}"
role = "admin"
members = ["user:admin@example.com"]

[[bindings]]
project = "{Q}"
role = "admin"
members = ["user:owner@elsewhere.example"]
"""

#: The permission each method needs (what a denial's ErrorInfo must name).
PERMISSION = {
    "get": "longrun.operations.get",
    "list": "longrun.operations.list",
    "wait": "longrun.operations.wait",
    "cancel": "longrun.operations.cancel",
    "delete": "longrun.operations.delete",
    "create": "longrun.jobs.create",
    "missing": "longrun.operations.get",
}
METHODS = ("get", "list", "wait", "cancel", "delete", "create")


@dataclass(frozen=True)
class Outcome:
    code: str  # the gRPC code name; HTTP: HTTP_STATUS[code]
    reason: str | None = None  # the ErrorInfo reason of an error


OK = Outcome("OK")
NOT_FOUND = Outcome("NOT_FOUND", "OPERATION_NOT_FOUND")
DENIED = Outcome("PERMISSION_DENIED", "IAM_PERMISSION_DENIED")


def unauthenticated(reason: str) -> Outcome:
    return Outcome("UNAUTHENTICATED", reason)


@dataclass(frozen=True)
class Row:
    """What one identity gets: each method on P, GetOperation of an absent
    operation of P (`missing`), and every method on Q (`other`)."""

    get: Outcome
    list: Outcome
    wait: Outcome
    cancel: Outcome
    delete: Outcome
    create: Outcome
    missing: Outcome
    list_all: Outcome  # ListOperations of "operations": every project it may see
    other: Outcome


def same(outcome: Outcome) -> Row:
    return Row(*(outcome,) * 9)


D, NF = DENIED, NOT_FOUND

# fmt: off
MATRIX: dict[str, Row] = {
    #                      get  list wait cancel delete create missing list_all other (Q)
    "anonymous":      same(unauthenticated("CREDENTIALS_MISSING")),
    "wrong-audience": same(unauthenticated("TOKEN_INVALID")),
    "expired":        same(unauthenticated("TOKEN_EXPIRED")),
    "no-role":        Row(D,   D,   D,   D,     D,     D,     D,      OK,      D),
    "viewer":         Row(OK,  OK,  OK,  D,     D,     D,     NF,     OK,      D),
    "editor":         Row(OK,  OK,  OK,  OK,    OK,    OK,    NF,     OK,      D),
    "admin":          Row(OK,  OK,  OK,  OK,    OK,    OK,    NF,     OK,      D),
    "api-key":        Row(OK,  OK,  OK,  OK,    OK,    OK,    NF,     OK,      D),
    "revoked-key":    same(unauthenticated("API_KEY_REVOKED")),
    "mtls":           Row(OK,  OK,  OK,  OK,    OK,    OK,    NF,     OK,      D),
}
# fmt: on


#: Where a case points: P or Q by full names (`projects/{p}/operations/{id}`),
#: or by the names without a project (`operations/{id}`, still served).
#: `Q-in-P`: the id of an operation of Q under P's name
#: (`projects/P/operations/<id of Q's>`): what may read P gets NOT_FOUND,
#: never Q's operation.
SCOPES = ("P", "P-legacy", "Q", "Q-legacy", "Q-in-P")
LEGACY_METHODS = ("get", "wait", "cancel", "delete")


def _expected(row: Row, method: str, scope: str) -> Outcome:
    value: Outcome = getattr(row, method)
    if scope == "Q-in-P":
        return NOT_FOUND if value == OK else value
    if scope.startswith("Q"):
        return row.other
    return value


def _cases() -> list[Any]:
    cases = []
    for identity, row in MATRIX.items():
        for scope in SCOPES:
            methods: tuple[str, ...] = METHODS if scope in ("P", "Q") else LEGACY_METHODS
            if scope == "P":
                methods = (*METHODS, "missing", "list_all")
            if scope == "P-legacy":
                methods = (*LEGACY_METHODS, "create")  # no parent: the caller's own project
            for method in methods:
                expected = _expected(row, method, scope)
                cases.append(
                    pytest.param(
                        identity, method, scope, expected, id=f"{identity}-{method}-{scope}"
                    )
                )
    return cases


# ---------------------------------------------------------------- the deployment


@dataclass
class Credentials:
    metadata: tuple[tuple[str, str], ...] = ()
    certificate: Pair | None = None


@dataclass
class Answer:
    """One call's outcome, the same shape for both transports."""

    code: str
    http: int | None = None
    info: error_details_pb2.ErrorInfo | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # everything the caller received, for "never the operation"
    challenge: str | None = None  # HTTP: the WWW-Authenticate header


def _error_info(details: Any) -> error_details_pb2.ErrorInfo | None:
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


class GrpcCaller:
    def __init__(self, channel: grpc.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.ops = operations_pb2_grpc.OperationsStub(channel)
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.metadata = metadata

    def _answer(self, call: Callable[[], Any]) -> Answer:
        try:
            response = call()
        except grpc.RpcError as err:
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            return Answer(
                err.code().name,  # type: ignore[attr-defined]
                info=_error_info(status.details) if status else None,
                text=f"{err.details()} {status}",  # type: ignore[attr-defined]
            )
        return Answer("OK", payload=json_format.MessageToDict(response), text=str(response))

    def call(self, method: str, target: str) -> Answer:
        md, t = self.metadata, 30
        if method in ("get", "missing"):
            req = operations_pb2.GetOperationRequest(name=target)
            return self._answer(lambda: self.ops.GetOperation(req, metadata=md, timeout=t))
        if method in ("list", "list_all"):
            lreq = operations_pb2.ListOperationsRequest(name=target, page_size=1000)
            return self._answer(lambda: self.ops.ListOperations(lreq, metadata=md, timeout=t))
        if method == "wait":
            wreq = operations_pb2.WaitOperationRequest(
                name=target, timeout=duration_pb2.Duration(nanos=200_000_000)
            )
            return self._answer(lambda: self.ops.WaitOperation(wreq, metadata=md, timeout=t))
        if method == "cancel":
            creq = operations_pb2.CancelOperationRequest(name=target)
            return self._answer(lambda: self.ops.CancelOperation(creq, metadata=md, timeout=t))
        if method == "delete":
            dreq = operations_pb2.DeleteOperationRequest(name=target)
            return self._answer(lambda: self.ops.DeleteOperation(dreq, metadata=md, timeout=t))
        assert method == "create"
        jreq = jobs_pb2.CreateJobRequest(parent=target, task="noop")
        return self._answer(lambda: self.jobs.CreateJob(jreq, metadata=md, timeout=t))


class HttpCaller:
    def __init__(self, base: str, ca: Path, credentials: Credentials) -> None:
        self.base = base
        self.session = requests.Session()
        self.session.trust_env = False  # no REQUESTS_CA_BUNDLE over `verify`, no proxies
        self.session.verify = str(ca)
        if credentials.certificate is not None:
            pair = credentials.certificate
            self.session.cert = (str(pair.cert), str(pair.key))
        # gRPC metadata -> HTTP headers (Authorization, X-Goog-Api-Key)
        self.session.headers.update(dict(credentials.metadata))

    def call(self, method: str, target: str) -> Answer:
        url = f"{self.base}/v1/{target}"
        if method in ("get", "missing"):
            response = self.session.get(url, timeout=30)
        elif method == "list":
            response = self.session.get(f"{url}/operations", params={"pageSize": 1000}, timeout=30)
        elif method == "list_all":
            response = self.session.get(url, params={"pageSize": 1000}, timeout=30)
        elif method == "wait":
            response = self.session.post(f"{url}:wait", json={"timeout": WAIT}, timeout=30)
        elif method == "cancel":
            response = self.session.post(f"{url}:cancel", json={}, timeout=30)
        elif method == "delete":
            response = self.session.delete(url, timeout=30)
        else:
            assert method == "create"
            jobs = f"{url}/jobs" if target else f"{self.base}/v1/jobs"
            response = self.session.post(jobs, json={"task": "noop"}, timeout=30)
        body = response.json()
        if response.status_code == 200:
            return Answer("OK", 200, payload=body, text=response.text)
        error = body["error"]
        assert error["code"] == response.status_code, body
        infos = [d for d in error.get("details", []) if d.get("@type") == ERROR_INFO]
        info = None
        if infos:
            info = error_details_pb2.ErrorInfo(
                reason=infos[0]["reason"],
                domain=infos[0]["domain"],
                metadata=infos[0].get("metadata", {}),
            )
        return Answer(
            error["status"],
            response.status_code,
            info,
            text=response.text,
            challenge=response.headers.get("WWW-Authenticate"),
        )


@dataclass
class Deployment:
    backend: str
    ca: CertificateAuthority
    main: Service
    strict: Service  # --tls-client-auth require: the certificate over gRPC
    http_base: str
    credentials: dict[str, Credentials]
    channels: list[grpc.Channel] = field(default_factory=list)
    shared_ops: dict[str, str] = field(default_factory=dict)  # project -> a queued op
    created: dict[str, int] = field(default_factory=lambda: {P: 0, Q: 0})  # by the owners
    callers: dict[tuple[str, str], GrpcCaller | HttpCaller] = field(default_factory=dict)

    def channel(self, target: str, certificate: Pair | None = None) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            self.ca.cert_file.read_bytes(),
            certificate.key_pem if certificate else None,
            certificate.cert_pem if certificate else None,
        )
        channel = grpc.secure_channel(target, creds)
        self.channels.append(channel)
        return channel

    def caller(self, identity: str, transport: str) -> GrpcCaller | HttpCaller:
        if (identity, transport) not in self.callers:
            self.callers[identity, transport] = self._new_caller(identity, transport)
        return self.callers[identity, transport]

    def _new_caller(self, identity: str, transport: str) -> GrpcCaller | HttpCaller:
        creds = self.credentials[identity]
        if transport == "http":
            return HttpCaller(self.http_base, self.ca.cert_file, creds)
        if creds.certificate is not None:
            return GrpcCaller(self.channel(self.strict.target, creds.certificate), ())
        return GrpcCaller(self._main_channel, creds.metadata)

    @property
    def _main_channel(self) -> grpc.Channel:
        if not self.channels:
            self.channel(self.main.target)
        return self.channels[0]

    def owner(self, project: str) -> GrpcCaller:
        """A caller with admin on `project`, to set up and check the cases."""
        return GrpcCaller(
            self._main_channel, self.credentials["admin" if project == P else "owner-q"].metadata
        )

    def queued_op(self, project: str) -> str:
        created = self.owner(project).call("create", f"projects/{project}")
        assert created.code == "OK", created
        self.created[project] += 1
        name: str = created.payload["name"]
        assert name.startswith(f"projects/{project}/operations/")
        return name

    def state(self, name: str) -> Answer:
        """The operation as its project's admin sees it."""
        return self.owner(name.split("/")[1]).call("get", name)


def _keys(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "longrun_server", "keys", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _key_name(key: str) -> str:
    key_id = key.removeprefix("lrk_").partition(".")[0]
    return f"projects/{P}/apiKeys/{key_id}"


@pytest.fixture(scope="module", params=BACKENDS)
def deployment(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    backend: str = request.param
    require_backend(backend)
    started = time.monotonic()
    workdir = tmp_path_factory.mktemp(f"matrix-{backend}")
    env = backend_env(backend, workdir)
    ca = CertificateAuthority(workdir / "pki")
    served = ca.server()
    client_cert = ca.client("matrix-client", MTLS_SAN, *MTLS_OTHER_SANS)
    policy = workdir / "policy.toml"
    policy.write_text(POLICY)

    # API keys minted and one revoked straight in the store, before any server runs.
    api_key = _keys(env, "create", "--project", P, "--role", "editor")
    revoked_key = _keys(env, "create", "--project", P, "--role", "editor")
    assert _keys(env, "revoke", _key_name(revoked_key)) == f"revoked {_key_name(revoked_key)}"

    signing = make_key("matrix-kid")
    now = int(time.time())

    def bearer(email: str, **claims: Any) -> Credentials:
        token = id_token(signing, email=email, **claims)
        return Credentials((("authorization", f"Bearer {token}"),))

    credentials = {
        "anonymous": Credentials(),
        "wrong-audience": bearer("editor@example.com", aud="https://someone-else.example.test"),
        "expired": bearer("editor@example.com", iat=now - 1800, exp=now - 600),
        "no-role": bearer("nobody@example.com"),
        "viewer": bearer("viewer@example.com"),
        "editor": bearer("editor@example.com"),
        "admin": bearer("admin@example.com"),
        "api-key": Credentials((("x-goog-api-key", api_key),)),
        "revoked-key": Credentials((("authorization", f"Bearer {revoked_key}"),)),
        "mtls": Credentials(certificate=client_cert),
        "owner-q": bearer("owner@elsewhere.example"),
    }
    assert set(MATRIX) | {"owner-q"} == set(credentials)

    with certs_served_in_thread([signing]) as certs_url:
        common = (
            "--tls-cert", str(served.cert), "--tls-key", str(served.key),
            "--tls-client-ca", str(ca.cert_file),
            "--oidc-audience", AUDIENCE, "--oidc-certs-url", certs_url,
            "--api-keys", "--policy-file", str(policy),
        )  # fmt: skip
        trust = grpc.ssl_channel_credentials(ca.cert_file.read_bytes())
        main = Service(workdir, env)
        strict = Service(workdir / "strict", env)
        strict.workdir.mkdir()
        http_port_file = workdir / "http-port"
        with main.kept(), strict.kept():
            main.start_server(
                *common,
                "--tls-client-auth", "optional",
                "--http-address", "127.0.0.1:0", "--http-port-file", str(http_port_file),
                credentials=trust,
            )  # fmt: skip
            strict.start_server(
                *common,
                "--tls-client-auth",
                "require",
                credentials=grpc.ssl_channel_credentials(
                    ca.cert_file.read_bytes(), client_cert.key_pem, client_cert.cert_pem
                ),
            )
            running = Deployment(
                backend,
                ca,
                main,
                strict,
                f"https://127.0.0.1:{int(http_port_file.read_text())}",
                credentials,
            )
            running.shared_ops = {p: running.queued_op(p) for p in (P, Q)}
            print(f"\n{backend}: deployment ready in {time.monotonic() - started:.1f} s")
            try:
                yield running
            finally:
                for channel in running.channels:
                    channel.close()
        print(f"\n{backend}: matrix module took {time.monotonic() - started:.1f} s")


# ---------------------------------------------------------------- the cases


def _target(deployment: Deployment, method: str, scope: str) -> tuple[str, str]:
    """(the full name of what the case is about, the name the call gives)."""
    project = Q if scope.startswith("Q") else P
    if method == "list_all":
        return "operations", "operations"
    if method == "create" and scope == "P-legacy":
        return f"projects/{P}", ""  # CreateJob without a parent (HTTP: POST /v1/jobs)
    if method in ("list", "create"):
        return f"projects/{project}", f"projects/{project}"
    if method == "missing":
        name = f"projects/{project}/operations/absent-{uuid.uuid4().hex}"
    elif method in ("cancel", "delete"):
        name = deployment.queued_op(project)  # one of its own: these change it
    else:
        name = deployment.shared_ops[project]
    if scope.endswith("legacy"):
        return name, "operations/" + name.rsplit("/", 1)[1]
    if scope == "Q-in-P":
        return name, f"projects/{P}/operations/" + name.rsplit("/", 1)[1]
    return name, name


def _check_code(answer: Answer, expected: Outcome, transport: str) -> None:
    assert answer.code == expected.code, answer
    if transport == "http":
        assert answer.http == HTTP_STATUS[expected.code], answer
        if expected.code == "UNAUTHENTICATED":
            assert answer.challenge is not None and answer.challenge.startswith("Bearer"), answer
    if expected.reason is not None:
        assert answer.info is not None, f"no ErrorInfo: {answer}"
        assert (answer.info.reason, answer.info.domain) == (expected.reason, "longrun.dev"), answer


def _check_ok(deployment: Deployment, method: str, target: str, answer: Answer) -> None:
    if method in ("get", "wait"):
        assert answer.payload["name"] == target  # always the full name
        assert not answer.payload.get("done", False)  # queued: no worker runs
    elif method == "list":
        names = [op["name"] for op in answer.payload.get("operations", [])]
        assert deployment.shared_ops[P] in names
        assert all(n.startswith(f"{target}/operations/") for n in names), names
    elif method == "list_all":
        return  # checked by the caller: it depends on the identity's roles
    elif method == "cancel":
        after = deployment.state(target)
        assert after.payload["done"] is True and after.payload["error"]["code"] == 1, after
    elif method == "delete":
        assert deployment.state(target).code == "NOT_FOUND"
    else:
        name = answer.payload["name"]
        assert name.startswith(f"{target}/operations/"), answer
        assert deployment.state(name).code == "OK"


@pytest.mark.parametrize("transport", ["grpc", "http"])
@pytest.mark.parametrize(("identity", "method", "scope", "expected"), _cases())
def test_matrix(
    deployment: Deployment,
    identity: str,
    method: str,
    scope: str,
    expected: Outcome,
    transport: str,
) -> None:
    full, target = _target(deployment, method, scope)
    answer = deployment.caller(identity, transport).call(method, target)
    _check_code(answer, expected, transport)
    if expected == OK:
        _check_ok(deployment, method, full, answer)
        if method == "list_all":
            names = [op["name"] for op in answer.payload.get("operations", [])]
            if MATRIX[identity].list == OK:  # a role on P, none on Q
                assert deployment.shared_ops[P] in names
            assert all(n.startswith(f"projects/{P}/operations/") for n in names), names
            if MATRIX[identity].list == DENIED:
                assert names == []
        return
    if expected == DENIED:
        assert answer.info is not None
        # A full name names its project; a name without one names only itself
        # (the project would tell that the operation exists).
        resource = target if scope.endswith("legacy") else "projects/" + target.split("/")[1]
        if method == "create" and scope == "P-legacy":
            # Without a parent a caller creates in the one project it may
            # create in; one with none is refused on the server's default.
            resource = "projects/default"
        assert dict(answer.info.metadata) == {
            "permission": PERMISSION[method],
            "resource": resource,
        }, answer
    # A refusal shows nothing of an operation (no response, no task, no metadata) ...
    assert answer.payload == {}, answer
    assert "JobMetadata" not in answer.text and "noop" not in answer.text, answer
    if method in ("cancel", "delete"):
        # ... and changes nothing: still there, still queued.
        after = deployment.state(full)
        assert after.code == "OK" and not after.payload.get("done", False), after


def test_every_identity_and_method_is_in_the_table() -> None:
    rows = {(c.values[0], c.values[1], c.values[2]) for c in _cases()}
    per_identity = len(METHODS) * 2 + 2 + len(LEGACY_METHODS) * 3 + 1
    assert len(rows) == len(MATRIX) * per_identity
    assert {r[0] for r in rows} == set(MATRIX)
    assert {r[1] for r in rows} == {*METHODS, "missing", "list_all"}
    assert {r[2] for r in rows} == set(SCOPES)


def test_the_other_projects_operations_are_untouched(deployment: Deployment) -> None:
    """After every identity tried every method on Q: its shared operation is
    there, queued, and Q lists only what its owner created."""
    shared = deployment.state(deployment.shared_ops[Q])
    assert shared.code == "OK" and not shared.payload.get("done", False), shared
    listed = deployment.owner(Q).call("list", f"projects/{Q}")
    assert listed.code == "OK"
    names = [op["name"] for op in listed.payload.get("operations", [])]
    assert deployment.shared_ops[Q] in names
    assert all(n.startswith(f"projects/{Q}/operations/") for n in names)
    done = [op["name"] for op in listed.payload["operations"] if op.get("done")]
    assert done == [], f"operations of {Q} changed by callers without a role: {done}"
    # Only its owner's CreateJob calls made operations there.
    assert len(names) == deployment.created[Q], names


def test_a_certificate_is_not_asked_for_on_the_optional_grpc_port(deployment: Deployment) -> None:
    """The documented limit of `--tls-client-auth optional`: the gRPC port does
    not request a certificate, so one the client holds is never sent and the
    call has no credentials (the `strict` server, `require`, is where it works)."""
    cert = deployment.credentials["mtls"].certificate
    assert cert is not None
    caller = GrpcCaller(deployment.channel(deployment.main.target, cert), ())
    answer = caller.call("get", deployment.shared_ops[P])
    _check_code(answer, unauthenticated("CREDENTIALS_MISSING"), "grpc")
    strict = GrpcCaller(deployment.channel(deployment.strict.target, cert), ())
    assert strict.call("get", deployment.shared_ops[P]).code == "OK"


def _key_call(
    deployment: Deployment, identity: str, rpc: str, request: Any
) -> tuple[str, Any, error_details_pb2.ErrorInfo | None]:
    """An ApiKeys RPC over gRPC as `identity`: (code, response, ErrorInfo)."""
    from longrun.v1 import api_keys_pb2_grpc

    stub = api_keys_pb2_grpc.ApiKeysStub(deployment._main_channel)
    try:
        response = getattr(stub, rpc)(
            request, metadata=deployment.credentials[identity].metadata, timeout=30
        )
    except grpc.RpcError as err:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        info = _error_info(status.details) if status else None
        return err.code().name, None, info  # type: ignore[attr-defined]
    return "OK", response, None


def test_a_key_minted_and_revoked_through_the_server(deployment: Deployment) -> None:
    """ApiKeys as admin: a key minted through the server works on both
    transports; revoked over HTTP, it is refused at once on both; only an
    admin of the project may mint, never for another project."""
    from longrun.v1 import api_keys_pb2

    def create(identity: str, project: str) -> tuple[str, Any, Any]:
        request = api_keys_pb2.CreateApiKeyRequest(
            parent=f"projects/{project}", role=api_keys_pb2.ApiKey.EDITOR
        )
        return _key_call(deployment, identity, "CreateApiKey", request)

    for identity, project in (("viewer", P), ("editor", P), ("api-key", P), ("admin", Q)):
        code, _, info = create(identity, project)
        assert code == "PERMISSION_DENIED", (identity, project, code)
        assert info is not None and info.reason == "IAM_PERMISSION_DENIED"
        assert dict(info.metadata) == {
            "permission": "longrun.apiKeys.create",
            "resource": f"projects/{project}",
        }
    code, minted, _ = create("admin", P)
    assert code == "OK" and minted.key_string.startswith("lrk_"), code
    key = Credentials((("x-goog-api-key", minted.key_string),))
    deployment.credentials["minted"] = key
    op = deployment.shared_ops[P]
    for transport in ("grpc", "http"):
        assert deployment.caller("minted", transport).call("get", op).code == "OK"

    admin = HttpCaller(
        deployment.http_base, deployment.ca.cert_file, deployment.credentials["admin"]
    )
    revoked = admin.session.delete(f"{deployment.http_base}/v1/{minted.name}", timeout=30)
    assert revoked.status_code == 200, revoked.text
    assert revoked.json()["name"] == minted.name and "revokeTime" in revoked.json()
    for transport in ("grpc", "http"):
        answer = deployment.caller("minted", transport).call("get", op)
        _check_code(answer, unauthenticated("API_KEY_REVOKED"), transport)
