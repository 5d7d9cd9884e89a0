"""Bounded connections on a real server (finding 8): idle and half-sent HTTP
connections are closed after their timeouts, gRPC connections that never
handshake or stay idle are closed, the HTTP connection cap answers 503, the
open-file limit is raised at start, and at the fd limit new clients are
served again once idle connections time out, with a few log lines instead
of a flood."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc

from tests.acceptance.harness import Service, backend_env, wait_for

IDLE = 4.0
HEADERS = 1.0
BODY = 1.0


def http_flags(workdir: Path) -> list[str]:
    return ["--http-address", "127.0.0.1:0", "--http-port-file", str(workdir / "http-port")]


def http_port(svc: Service) -> int:
    return int((svc.workdir / "http-port").read_text())


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path, backend_env("embedded", tmp_path))
    with svc.kept():
        svc.start_server(
            *http_flags(tmp_path),
            "--http-idle-timeout", str(IDLE),
            "--http-header-timeout", str(HEADERS),
            "--http-body-timeout", str(BODY),
            "--http-max-connections", "8",
            "--grpc-handshake-timeout", "1",
            "--grpc-max-connection-idle", "1",
        )  # fmt: skip
        yield svc


def read_until_closed(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Read until the server closes the connection; (seconds it took, bytes read)."""
    start = time.monotonic()
    data = b""
    sock.settimeout(0.1)
    while time.monotonic() - start < limit:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError(f"the server kept the connection open for {limit} s")
    return time.monotonic() - start, data


def test_an_idle_http_connection_is_closed_after_the_idle_timeout(gateway: Service) -> None:
    with socket.create_connection(("127.0.0.1", http_port(gateway))) as sock:
        took, data = read_until_closed(sock, IDLE + 10)
    assert data == b""
    assert IDLE - 0.5 <= took <= IDLE + 3, took


def test_a_connection_is_closed_after_the_idle_timeout_following_a_request(
    gateway: Service,
) -> None:
    with socket.create_connection(("127.0.0.1", http_port(gateway))) as sock:
        sock.sendall(b"GET /v1/operations HTTP/1.1\r\nHost: x\r\n\r\n")
        took, data = read_until_closed(sock, IDLE + 10)
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    assert IDLE - 0.5 <= took <= IDLE + 3, took


def test_headers_trickling_in_are_cut_off_after_the_header_timeout(gateway: Service) -> None:
    """One header byte every 0.2 s: the connection is never idle, yet its
    request has to be complete within the header timeout."""
    with socket.create_connection(("127.0.0.1", http_port(gateway))) as sock:
        sock.sendall(b"GET /v1/operations HTTP/1.1\r\nHost: x\r\n")
        closed = threading.Event()

        def trickle() -> None:
            for byte in b"X-Slow: " + b"a" * 100:
                if closed.wait(0.2):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            took, data = read_until_closed(sock, HEADERS + 10)
        finally:
            closed.set()
            sender.join()
    assert b"200" not in data
    assert took <= HEADERS + 1.5, took  # well before the idle timeout


def test_a_half_sent_body_gets_408_and_the_connection_closes(gateway: Service) -> None:
    with socket.create_connection(("127.0.0.1", http_port(gateway))) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"task": "no'
        )
        took, data = read_until_closed(sock, BODY + 10)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), head
    error = json.loads(body)["error"]
    assert error["status"] == "DEADLINE_EXCEEDED"
    assert error["details"][0]["reason"] == "BODY_TIMEOUT"
    assert took <= BODY + 4, took


def test_connections_over_the_cap_get_503_and_later_ones_are_served(gateway: Service) -> None:
    port = http_port(gateway)
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
    try:
        # Let the server accept the eight before the ninth arrives.
        wait_for(lambda: _get(port, expect_refusal=True) is not None, 10, "a refusal")
        refusal = _get(port, expect_refusal=True)
        assert refusal is not None
        status, body = refusal
        assert status == 503
        error = json.loads(body)["error"]
        assert error["status"] == "UNAVAILABLE"
        assert error["details"][0]["reason"] == "CONNECTION_LIMIT"
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: _get(port) == (200, b"{}\n"), 10, "a request served under the cap")
    assert gateway.logs().count("refusing HTTP connections") == 1


def _get(port: int, *, expect_refusal: bool = False) -> tuple[int, bytes] | None:
    """GET /v1/operations on a fresh connection: (status, body); None if the
    answer is not what was expected (a refusal, or not one)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/operations")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            answer = (response.status, response.read())
    except urllib.error.HTTPError as exc:
        answer = (exc.code, exc.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None
    return answer if (answer[0] == 503) == expect_refusal else None


def test_a_grpc_connection_that_never_handshakes_is_closed(gateway: Service) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        took, _ = read_until_closed(sock, 15)
    assert took <= 4, took


def test_an_idle_grpc_connection_is_closed(gateway: Service) -> None:
    """--grpc-max-connection-idle 1: after a call, the server sends GOAWAY
    once the connection has had no call for a second; the channel goes IDLE."""
    states: list[grpc.ChannelConnectivity] = []
    with grpc.insecure_channel(gateway.target) as channel:
        channel.subscribe(states.append, try_to_connect=False)
        operations_pb2_grpc.OperationsStub(channel).ListOperations(
            operations_pb2.ListOperationsRequest(name="operations"), timeout=10
        )
        wait_for(lambda: grpc.ChannelConnectivity.READY in states, 10, "READY")
        ready_at = time.monotonic()
        wait_for(lambda: states[-1] is grpc.ChannelConnectivity.IDLE, 15, "the server to close it")
        assert time.monotonic() - ready_at >= 0.5


def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path) -> None:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("needs prlimit (util-linux)")
    svc = Service(
        tmp_path, backend_env("embedded", tmp_path), launcher=[prlimit, "--nofile=256:4096"]
    )
    with svc.kept():
        svc.start_server()
        assert svc.server is not None
        limits = Path(f"/proc/{svc.server.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == ["4096", "4096"], row
        assert "open-file limit raised from 256 to 4096" in svc.logs()


def test_the_push_worker_raises_its_open_file_limit_too(tmp_path: Path) -> None:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("needs prlimit (util-linux)")
    svc = Service(
        tmp_path, backend_env("embedded", tmp_path), launcher=[prlimit, "--nofile=256:4096"]
    )
    port_file = tmp_path / "push-port"
    with svc.kept():
        worker = svc.start_worker(
            "--push", "--push-auth", "none", "--http-address", "127.0.0.1:0",
            "--push-port-file", str(port_file),
        )  # fmt: skip
        wait_for(
            lambda: (
                (port_file.exists() and port_file.read_text() != "") or worker.poll() is not None
            ),
            60,
            "the push worker to listen",
        )
        assert worker.poll() is None, svc.logs()
        limits = Path(f"/proc/{worker.pid}/limits").read_text()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert row.split()[3:5] == ["4096", "4096"], row
        assert "open-file limit raised from 256 to 4096" in svc.logs()


def test_at_the_fd_limit_new_clients_are_served_once_idle_ones_time_out(tmp_path: Path) -> None:
    """128 file descriptors, and 400 idle connections to the HTTP and gRPC
    ports: the server runs out, logs it briefly, and serves a new client of
    each kind once the idle ones are closed (the queued ones in waves)."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("needs prlimit (util-linux)")
    svc = Service(tmp_path, backend_env("embedded", tmp_path), launcher=[prlimit, "--nofile=128"])
    with svc.kept():
        svc.start_server(
            *http_flags(tmp_path),
            "--http-idle-timeout", "2",
            "--http-header-timeout", "1",
            "--grpc-handshake-timeout", "1",
        )  # fmt: skip
        port = http_port(svc)
        flood: list[socket.socket] = []
        try:
            for i in range(400):
                target = port if i % 2 == 0 else svc.port
                flood.append(socket.create_connection(("127.0.0.1", target), timeout=5))
            started = time.monotonic()
            assert len(flood) == 400
            wait_for(lambda: _get(port) == (200, b"{}\n"), 60, "a new HTTP client to be served")
            with grpc.insecure_channel(svc.target) as channel:
                stub = operations_pb2_grpc.OperationsStub(channel)
                stub.ListOperations(
                    operations_pb2.ListOperationsRequest(name="operations"),
                    timeout=60,
                    wait_for_ready=True,
                )
            elapsed = time.monotonic() - started
        finally:
            for sock in flood:
                sock.close()
        log = svc.logs()
    assert "open-file limit 128 (the hard limit)" in log
    accept_errors = log.count("socket.accept() out of system resource")
    grpc_errors = log.count("File descriptor limit reached")
    print(f"served again after {elapsed:.1f} s; {accept_errors} asyncio, {grpc_errors} gRPC lines")
    assert 1 <= accept_errors <= 1 + int(elapsed / 10) + 1, accept_errors
    # gRPC's own listener logs once per second while it waits.
    assert grpc_errors <= elapsed + 3, grpc_errors
