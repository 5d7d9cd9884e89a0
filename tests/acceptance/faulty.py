"""A service that knows the fault tasks (tests.support.fault_tasks), and what
tests ask of it and of the machine's processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.acceptance.harness import ROOT, Service, backend_env

OPS = "google.longrunning.Operations"
CREATE = "longrun.v1.Jobs/CreateJob"
FAULT_TASKS = "longrun_worker.builtin_tasks tests.support.fault_tasks"


@contextmanager
def faulty_service(backend: str, workdir: Path) -> Iterator[Service]:
    """A service loading the fault tasks; the test starts the processes."""
    env = backend_env(backend, workdir)
    env["LONGRUN_TASK_MODULES"] = FAULT_TASKS
    env["LONGRUN_TEST_RECORD_DIR"] = str(workdir / "records")
    (workdir / "records").mkdir()
    svc = Service(workdir, env)
    with svc.kept():
        yield svc


def notes(svc: Service, name: str) -> list[str]:
    """The lines the fault tasks noted for operation `name`."""
    path = Path(svc.env["LONGRUN_TEST_RECORD_DIR"]) / name.rsplit("/", 1)[-1]
    return path.read_text().splitlines() if path.exists() else []


def operation(svc: Service, name: str) -> dict[str, Any]:
    op: dict[str, Any] = svc.call(f"{OPS}/GetOperation", {"name": name})
    return op


def state(svc: Service, name: str) -> str:
    return str(operation(svc, name)["metadata"]["state"])


def create(svc: Service, task: str, **params: Any) -> str:
    name: str = svc.call(CREATE, {"task": task, "params": params})["name"]
    return name


def dead_letters(svc: Service) -> set[str]:
    """Operation names in the dead-letter destination, read through the queue seam."""
    code = (
        "import asyncio\n"
        "from longrun_core.backends import build_backends\n"
        "from longrun_core.settings import BackendSettings\n"
        "async def main():\n"
        "    b = build_backends(BackendSettings.from_env())\n"
        "    await b.queue.start()\n"
        "    for msg, _ in await b.queue.dead_letters(1000):\n"
        "        print(msg.operation)\n"
        "    await b.queue.close()\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=svc.env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return set(out.stdout.split())


def alive(pid: int) -> bool:
    """Whether `pid` exists (a zombie counts: nobody reaped it)."""
    return Path(f"/proc/{pid}").exists()


def _stat(pid: int) -> tuple[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def descendants(pid: int) -> dict[int, str]:
    """Every process below `pid`, with its state letter (Z: a zombie)."""
    children: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            states[int(entry.name)] = stat[0]
            children.setdefault(stat[1], []).append(int(entry.name))
    found: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found[child] = states.get(child, "?")
        todo.extend(children.get(child, []))
    return found
