"""The embedded backend's notify directory on real processes: beside the
database, private, and a process refuses to start when it is not."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.harness import ROOT, Service, backend_env

COMMANDS = {
    "server": ["-m", "longrun_server", "--address", "127.0.0.1:0"],
    "worker": ["-m", "longrun_worker"],
}


def _start(tmp_path: Path, which: str) -> subprocess.CompletedProcess[str]:
    env = backend_env("embedded", tmp_path)
    return subprocess.run(
        [sys.executable, *COMMANDS[which]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("which", ["server", "worker"])
def test_an_open_notify_directory_stops_the_process_with_one_line(
    tmp_path: Path, which: str
) -> None:
    notify = tmp_path / "longrun.db.notify"
    notify.mkdir()
    os.chmod(notify, 0o777)  # pre-created by someone who wants to listen in
    done = _start(tmp_path, which)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == [
        f"Error: the notify directory {notify} has mode 0777, open to other users (it must "
        f"be 0700): remove it, or `chmod 700 {notify}` if you made it"
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert os.listdir(notify) == []  # it never bound a socket there


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another user needs root")
def test_a_notify_directory_of_another_user_stops_the_process(tmp_path: Path) -> None:
    notify = tmp_path / "longrun.db.notify"
    notify.mkdir(mode=0o700)
    os.chown(notify, 65534, 65534)
    done = _start(tmp_path, "server")
    assert done.returncode == 1
    [error] = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert f"the notify directory {notify} belongs to uid 65534" in error
    assert "Traceback" not in done.stderr


def test_the_service_makes_it_private_beside_the_database(tmp_path: Path) -> None:
    svc = Service(tmp_path, backend_env("embedded", tmp_path))
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        name = svc.call("longrun.v1.Jobs/CreateJob", {"task": "noop"})["name"]
        done = svc.call(
            "google.longrunning.Operations/WaitOperation", {"name": name, "timeout": "60s"}
        )
        assert done["done"] is True
        notify = tmp_path / "longrun.db.notify"
        info = os.lstat(notify)
        assert stat.S_IMODE(info.st_mode) == 0o700
        assert info.st_uid == os.getuid()
        assert len([n for n in os.listdir(notify) if n.endswith(".sock")]) == 2
