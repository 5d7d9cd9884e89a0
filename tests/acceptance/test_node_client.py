"""A Node.js client (@grpc/grpc-js + @grpc/proto-loader, clients/node/interop.mjs)
against the real server and worker."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import google.api
import grpc_tools
import pytest

from tests.acceptance.harness import ROOT, Service
from tests.acceptance.test_clients import BACKENDS, running_service
from tests.acceptance.test_tls import tls_service

NODE_DIR = ROOT / "clients" / "node"


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        message = f"{name} is not installed (Node.js 18+ with npm)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def proto_path() -> str:
    """The googleapis protos (googleapis-common-protos) and the well-known
    types (grpcio-tools), as the Makefile's proto rule finds them."""
    googleapis = Path(google.api.__path__[0]).parent.parent
    well_known = Path(grpc_tools.__path__[0]) / "_proto"
    return f"{googleapis}:{well_known}"


@pytest.fixture(scope="module")
def node() -> str:
    """`node`, with clients/node's pinned packages installed (npm ci, quietly)."""
    node = _tool("node")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        npm = _tool("npm")
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    assert (ROOT / "build/protos/google/longrunning/operations.proto").exists(), "run make proto"
    return node


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    with running_service(request.param, tmp_path_factory.mktemp("node")) as svc:
        yield svc


def run_interop(
    node: str, target: str, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"LONGRUN_PROTO_PATH": proto_path()} | (extra_env or {})
    return subprocess.run(
        [node, "interop.mjs", target],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_node_creates_waits_gets_and_decodes(node: str, shared: Service) -> None:
    done = run_interop(node, shared.target)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{shared.logs()}"
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["result"] == {
        "greeting": "hello",
        "n": 3,
        "ok": True,
        "nested": {"list": [1, "two", None]},
    }
    got = shared.call("google.longrunning.Operations/GetOperation", {"name": report["operation"]})
    assert got["metadata"]["labels"]["run"].startswith("node-")


def test_node_reports_failure_when_the_server_is_down(node: str) -> None:
    done = run_interop(node, "127.0.0.1:1")
    assert done.returncode == 1
    assert "interop FAILED" in done.stderr


def test_node_over_tls_with_call_credentials(node: str, tmp_path: Path) -> None:
    """clients/node/interop.mjs with LONGRUN_CA_FILE and LONGRUN_TOKEN: grpc-js
    TLS channel credentials combined with bearer-token call credentials (what
    google-gax's `sslCreds` takes; docs/security.md)."""
    with tls_service(tmp_path) as tls:
        plaintext = run_interop(node, tls.target)
        assert plaintext.returncode == 1
        done = run_interop(
            node,
            tls.target,
            {"LONGRUN_CA_FILE": str(tls.ca.cert_file), "LONGRUN_TOKEN": "node-token"},
        )
        assert done.returncode == 0, done.stderr
