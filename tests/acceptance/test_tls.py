"""TLS on real processes: `longrun-server --tls-cert/--tls-key` (and mutual
TLS with --tls-client-ca) reached with grpcurl -cacert, curl --cacert
through the HTTPS gateway, and the `longrun` CLI with --ca-file; a
certificate replaced on disk served without a restart; the exposure check.
TLS is a property of the listener, not of the backend: embedded only."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from tests.acceptance.harness import ROOT, Service, _grpcurl, backend_env, wait_for
from tests.support.certs import CertificateAuthority, Pair

LONGRUN = Path(sys.executable).parent / "longrun"
CLIENT_SANS = ("ops-client.example", "spiffe://longrun.test/ops")


@dataclass
class TlsService:
    service: Service
    ca: CertificateAuthority
    served: Pair
    http_port: int
    client: Pair

    @property
    def target(self) -> str:
        return self.service.target

    def grpcurl(
        self, *words: str, data: dict[str, Any] | None = None, flags: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        args = [_grpcurl(), *flags]
        if data is not None:
            args += ["-d", json.dumps(data)]
        args += [self.target, *words]
        return subprocess.run(args, capture_output=True, text=True, timeout=60)

    def curl(self, path: str, *flags: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", *flags, f"https://127.0.0.1:{self.http_port}{path}"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LONGRUN_")}
        return subprocess.run(
            [str(LONGRUN), "--target", self.target, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )


@contextmanager
def tls_service(tmp_path: Path, *extra: str, mtls: bool = False) -> Iterator[TlsService]:
    """A TLS server (mutual TLS required with `mtls`), its HTTPS gateway and a worker."""
    ca = CertificateAuthority(tmp_path / "pki")
    served = ca.server()
    client = ca.client("ops-client", *CLIENT_SANS)
    svc = Service(tmp_path, backend_env("embedded", tmp_path))
    http_port_file = tmp_path / "http-port"
    credentials = grpc.ssl_channel_credentials(
        ca.cert_file.read_bytes(),
        client.key_pem if mtls else None,
        client.cert_pem if mtls else None,
    )
    with svc.kept():
        svc.start_server(
            "--tls-cert",
            str(served.cert),
            "--tls-key",
            str(served.key),
            "--http-address",
            "127.0.0.1:0",
            "--http-port-file",
            str(http_port_file),
            *(("--tls-client-ca", str(ca.cert_file)) if mtls else ()),
            *extra,
            credentials=credentials,
        )
        svc.start_worker()
        yield TlsService(svc, ca, served, int(http_port_file.read_text()), client)


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[TlsService]:
    with tls_service(tmp_path) as running:
        yield running


@pytest.fixture
def mtls(tmp_path: Path) -> Iterator[TlsService]:
    with tls_service(tmp_path, mtls=True) as running:
        yield running


def test_grpcurl_curl_and_the_cli_over_tls(tls: TlsService) -> None:
    cacert = ("-cacert", str(tls.ca.cert_file))
    created = tls.grpcurl(
        "longrun.v1.Jobs/CreateJob", data={"task": "noop", "params": {"a": 1}}, flags=cacert
    )
    assert created.returncode == 0, created.stderr
    name = json.loads(created.stdout)["name"]

    plaintext = tls.grpcurl("list", flags=("-plaintext",))
    assert plaintext.returncode != 0
    untrusted = tls.grpcurl("list")  # system roots: our private CA is not among them
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()

    waited = tls.curl(
        f"/v1/{name}:wait", "--cacert", str(tls.ca.cert_file), "-d", '{"timeout":"30s"}'
    )
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["done"] is True
    plain_http = subprocess.run(
        ["curl", "-sS", f"http://127.0.0.1:{tls.http_port}/v1/{name}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert plain_http.returncode != 0 or '"name"' not in plain_http.stdout
    assert tls.curl(f"/v1/{name}").returncode != 0  # curl's system roots do not trust it

    got = tls.cli("--ca-file", str(tls.ca.cert_file), "get", name)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["name"] == name
    assert tls.cli("get", name).returncode == 5  # plaintext to a TLS port: UNAVAILABLE


def test_mutual_tls_required(mtls: TlsService) -> None:
    cacert = ("-cacert", str(mtls.ca.cert_file))
    mine = ("-cert", str(mtls.client.cert), "-key", str(mtls.client.key))
    refused = mtls.grpcurl("list", flags=cacert)
    assert refused.returncode != 0
    listed = mtls.grpcurl("list", flags=(*cacert, *mine))
    assert listed.returncode == 0, listed.stderr
    assert "google.longrunning.Operations" in listed.stdout

    ca = str(mtls.ca.cert_file)
    assert mtls.curl("/v1/operations", "--cacert", ca).returncode != 0
    with_cert = mtls.curl(
        "/v1/operations", "--cacert", ca, "--cert", str(mtls.client.cert), "--key",
        str(mtls.client.key),
    )  # fmt: skip
    assert with_cert.returncode == 0, with_cert.stderr
    assert "operations" in json.loads(with_cert.stdout) or json.loads(with_cert.stdout) == {}

    assert mtls.cli("--ca-file", ca, "list").returncode == 5
    listed_by_cli = mtls.cli(
        "--ca-file", ca, "--client-cert", str(mtls.client.cert), "--client-key",
        str(mtls.client.key), "list",
    )  # fmt: skip
    assert listed_by_cli.returncode == 0, listed_by_cli.stderr


def _served_serial(port: int, ca: CertificateAuthority) -> int:
    pem = ssl.get_server_certificate(("127.0.0.1", port), ca_certs=str(ca.cert_file), timeout=5)
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def test_a_replaced_certificate_is_served_without_a_restart(tls: TlsService) -> None:
    port = tls.service.port
    assert _served_serial(port, tls.ca) == tls.served.serial()
    assert _served_serial(tls.http_port, tls.ca) == tls.served.serial()
    renewed = tls.ca.issue("renewed", dns=("localhost",), ips=("127.0.0.1",))
    pid = tls.service.server.pid if tls.service.server else None
    started = time.monotonic()
    # The way cert-manager and certbot replace files: write aside, rename over.
    for source, target in ((renewed.key, tls.served.key), (renewed.cert, tls.served.cert)):
        aside = target.with_suffix(f".{uuid.uuid4().hex}")
        aside.write_bytes(source.read_bytes())
        aside.replace(target)
    wait_for(
        lambda: _served_serial(port, tls.ca) == renewed.serial(),
        10,
        "the renewed certificate on the gRPC port",
    )
    grpc_seconds = time.monotonic() - started
    assert _served_serial(tls.http_port, tls.ca) == renewed.serial()
    print(f"renewed certificate served after {grpc_seconds * 1000:.0f} ms")
    assert tls.service.server is not None and tls.service.server.pid == pid
    assert tls.service.server.poll() is None
    listed = tls.grpcurl("list", flags=("-cacert", str(tls.ca.cert_file)))
    assert listed.returncode == 0, listed.stderr
    assert (
        "loaded the replaced certificate files" in (tls.service.workdir / "server.log").read_text()
    )


def _server(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "longrun_server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )


@pytest.mark.parametrize(
    "flags",
    [
        ("--address", "0.0.0.0:0"),
        ("--address", "[::]:0"),
        ("--address", "127.0.0.1:0", "--http-address", "0.0.0.0:0"),
    ],
)
def test_a_non_loopback_listener_without_authentication_is_refused(
    tmp_path: Path, flags: tuple[str, ...]
) -> None:
    env = backend_env("embedded", tmp_path)
    done = _server(*flags, env=env)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: refusing to listen on 0.0.0.0:0") or lines[0].startswith(
        "Error: refusing to listen on [::]:0"
    )
    assert "--allow-unauthenticated" in lines[0]
    assert not (tmp_path / "longrun.db").exists()  # refused before anything was opened


@pytest.mark.parametrize("how", ["flag", "env"])
def test_allow_unauthenticated_lets_it_listen(tmp_path: Path, how: str) -> None:
    svc = Service(tmp_path, backend_env("embedded", tmp_path))
    extra_env = {"LONGRUN_ALLOW_UNAUTHENTICATED": "true"} if how == "env" else {}
    flags = ("--allow-unauthenticated",) if how == "flag" else ()
    with svc.kept():
        # harness passes --address 127.0.0.1:0 first; a later --address wins.
        svc.start_server("--address", "0.0.0.0:0", *flags, extra_env=extra_env)
        assert svc.server is not None and svc.server.poll() is None
        assert "serving plaintext on port" in (tmp_path / "server.log").read_text()


def test_a_key_that_does_not_match_is_one_line_at_start(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "pki")
    first, second = ca.server("one"), ca.server("two")
    env = backend_env("embedded", tmp_path)
    done = _server(
        "--address", "127.0.0.1:0", "--tls-cert", str(first.cert), "--tls-key",
        str(second.key), env=env,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("Error: cannot serve TLS with")


def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LONGRUN_")}
    return subprocess.run(
        [sys.executable, "-m", "longrun_server.healthcheck"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=base | {"PYTHONPATH": str(ROOT)} | env,
    )


def test_the_image_health_check_speaks_tls(tls: TlsService) -> None:
    env = {
        "LONGRUN_ADDRESS": f"0.0.0.0:{tls.service.port}",
        "LONGRUN_TLS_CERT": str(tls.served.cert),
    }
    # By default it trusts the very certificate the server serves.
    healthy = _healthcheck(env)
    assert healthy.returncode == 0, healthy.stderr
    assert _healthcheck(env | {"LONGRUN_CA_FILE": str(tls.ca.cert_file)}).returncode == 0
    stranger = CertificateAuthority(tls.service.workdir / "other", "other CA")
    distrust = _healthcheck(env | {"LONGRUN_CA_FILE": str(stranger.cert_file)})
    assert distrust.returncode == 1 and "UNAVAILABLE" in distrust.stderr
    plaintext = _healthcheck({"LONGRUN_ADDRESS": f"0.0.0.0:{tls.service.port}"})
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr


def test_the_image_health_check_presents_a_client_certificate(mtls: TlsService) -> None:
    env = {
        "LONGRUN_ADDRESS": f"127.0.0.1:{mtls.service.port}",
        "LONGRUN_TLS_CERT": str(mtls.served.cert),
        "LONGRUN_CA_FILE": str(mtls.ca.cert_file),
    }
    assert _healthcheck(env).returncode != 0
    mine = {
        "LONGRUN_CLIENT_CERT": str(mtls.client.cert),
        "LONGRUN_CLIENT_KEY": str(mtls.client.key),
    }
    healthy = _healthcheck(env | mine)
    assert healthy.returncode == 0, healthy.stderr


def test_api_core_with_composite_channel_credentials(tls: TlsService) -> None:
    """The docs/security.md api-core example: TLS + access-token call credentials."""
    from google.api_core import operations_v1

    from longrun.v1 import jobs_pb2, jobs_pb2_grpc

    credentials = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=tls.ca.cert_file.read_bytes()),
        grpc.access_token_call_credentials("TOKEN"),
    )
    with grpc.secure_channel(tls.target, credentials) as channel:
        created = jobs_pb2_grpc.JobsStub(channel).CreateJob(
            jobs_pb2.CreateJobRequest(task="noop"), timeout=30
        )
        ops = operations_v1.OperationsClient(channel)
        assert ops.get_operation(created.name).name == created.name
        assert created.name in {op.name for op in ops.list_operations("operations", "")}
