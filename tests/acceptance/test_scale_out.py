"""Several server processes on one store (issue 15): what one server
started, another continues, with no configuration beyond the shared store.

* a page token minted by server A is accepted by server B (the page-token
  key is kept in the store: longrun_core/shared_secrets.py);
* a request_id used on A returns A's operation on B;
* a WaitOperation on B returns when a worker finishes a job created on A;
* the Python client spreads its calls over both with an `ipv4:` list;
* with --reuse-port both listen on one port, and the port keeps serving
  when one of them stops; without it the second one refuses to start.
"""

from __future__ import annotations

import concurrent.futures
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from longrun_client import Client
from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.scrape import scrape

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"


@pytest.fixture
def pair(backend: str, tmp_path: Path) -> Iterator[tuple[Service, Service]]:
    """Servers A and B on their own ports, one store, no worker yet."""
    env = backend_env(backend, tmp_path)
    a = Service(tmp_path, env)
    b = Service(tmp_path, env, server_log="server-b.log")
    with a.kept(), b.kept():
        for svc, name in ((a, "a"), (b, "b")):
            port_file = tmp_path / f"metrics-port-{name}"
            svc.start_server(
                "--metrics-address", "127.0.0.1:0", "--metrics-port-file", str(port_file)
            )
            _await_file(port_file)
        assert a.port != b.port
        yield a, b


def _await_file(path: Path) -> None:
    wait_for(lambda: path.exists() and path.read_text() != "", 30, f"{path.name} to be written")


def _jobs_created(tmp_path: Path, name: str) -> float:
    """Operations server `name` created, from its /metrics."""
    port = int((tmp_path / f"metrics-port-{name}").read_text())
    samples = scrape(port).samples
    return sum(v for (sample, _), v in samples.items() if sample == "longrun_jobs_created_total")


def _list_all(first: Service, then: Service, page_size: int) -> list[str]:
    """Every operation's name, the first page from `first`, every next page
    from `then` with the token `first` (then `then`) minted."""
    names: list[str] = []
    token = ""
    server = first
    while True:
        page: dict[str, Any] = server.call(
            f"{OPS}/ListOperations",
            {"name": "operations", "page_size": page_size, "page_token": token},
        )
        names += [op["name"] for op in page.get("operations", [])]
        token = page.get("next_page_token", "")
        if not token:
            return names
        server = then


def test_a_second_server_continues_what_the_first_started(pair: tuple[Service, Service]) -> None:
    a, b = pair
    created = [a.call(CREATE, {"task": "noop", "params": {"i": i}})["name"] for i in range(5)]

    # Page tokens: A's token for page 2 is good on B, and the pages add up.
    listed = _list_all(a, b, page_size=2)
    assert sorted(listed) == sorted(created)
    assert len(listed) == len(set(listed))
    bad = b.grpcurl(
        f"{OPS}/ListOperations",
        data={"name": "operations", "page_size": 2, "page_token": "not-a-token"},
    )
    assert bad.code != 0 and "PAGE_TOKEN_INVALID" in bad.stderr, bad.stderr

    # request_id: the retry through B gets A's operation, not a new one.
    rid = str(uuid.uuid4())
    on_a = a.call(CREATE, {"task": "noop", "params": {"r": 1}, "request_id": rid})
    on_b = b.call(CREATE, {"task": "noop", "params": {"r": 1}, "request_id": rid})
    assert on_b["name"] == on_a["name"]
    reused = b.grpcurl(CREATE, data={"task": "noop", "params": {"r": 2}, "request_id": rid})
    assert reused.code != 0 and "REQUEST_ID_REUSED" in reused.stderr, reused.stderr

    # Wait on B for a job created on A, held until a worker (started only
    # now) finishes it.
    job = a.call(CREATE, {"task": "noop", "params": {"waited": True}})["name"]
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(b.call, f"{OPS}/WaitOperation", {"name": job, "timeout": "90s"})
        time.sleep(1.0)  # the Wait must be held by B, not answered: nothing ran yet
        assert not waiting.done()
        started = time.monotonic()
        a.start_worker()
        done = waiting.result(timeout=120)
    assert done["done"] is True, done
    assert done["response"]["value"] == {"waited": True}
    assert time.monotonic() - started < 60, "the Wait ran to its timeout instead of waking"
    for name in created:
        assert b.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})["done"] is True


def test_the_client_spreads_calls_over_an_address_list(pair: tuple[Service, Service]) -> None:
    a, b = pair
    a.start_worker()
    with Client(f"ipv4:{a.target},{b.target}") as client:
        futures = [client.submit("noop", {"i": i}) for i in range(6)]
        assert [f.result(timeout=60) for f in futures] == [{"i": i} for i in range(6)]
    # round_robin sent creates to each server.
    on_a, on_b = _jobs_created(a.workdir, "a"), _jobs_created(a.workdir, "b")
    assert on_a + on_b == 6
    assert on_a >= 1 and on_b >= 1, (on_a, on_b)


def test_servers_share_one_port_with_reuse_port(backend: str, tmp_path: Path) -> None:
    env = backend_env(backend, tmp_path)
    a = Service(tmp_path, env)
    b = Service(tmp_path, env, server_log="server-b.log")
    refused = Service(tmp_path, env, server_log="server-refused.log")
    with a.kept(), b.kept(), refused.kept():
        a.start_server("--reuse-port")
        b.port = a.port
        b.start_server("--reuse-port")
        refused.port = a.port
        with pytest.raises(AssertionError, match="server exited"):
            refused.start_server()  # without --reuse-port a held port fails the start
        a.start_worker()
        names = [a.call(CREATE, {"task": "noop", "params": {"i": i}})["name"] for i in range(4)]
        assert a.server is not None
        a.server.terminate()
        a.server.wait(timeout=30)
        # The port still serves (B), with everything A created.
        wait_for(
            lambda: b.grpcurl(f"{OPS}/GetOperation", data={"name": names[0]}).code == 0,
            30,
            "B to answer on the shared port",
        )
        for name in names:
            done = b.call(f"{OPS}/WaitOperation", {"name": name, "timeout": "60s"})
            assert done["done"] is True, done
