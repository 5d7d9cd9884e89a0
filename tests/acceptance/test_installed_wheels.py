"""What a user installs: the two wheels built from this tree, installed into
fresh virtual environments outside the repo, run as console scripts from
folders that are not the repo (no PYTHONPATH into it, nothing editable)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.acceptance.harness import ROOT, wait_for

pytestmark = pytest.mark.slow

TASKS_MODULE = """
from longrun_core.tasks import TaskContext, TaskSet

tasks = TaskSet()


@tasks.task("shout")
async def shout(ctx: TaskContext) -> dict[str, str]:
    return {"text": str(ctx.params["text"]).upper()}
"""


@dataclass
class Venv:
    path: Path

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"),
            *("-w", str(out), str(ROOT / "clients" / "python"), str(ROOT)),
        ],
        check=True,
        cwd=out,
        timeout=300,
    )
    found = {p.name.split("-")[0]: p for p in out.glob("*.whl")}
    assert set(found) == {"longrun", "longrun_client"}, found
    return found


def make_venv(where: Path, *requirements: str) -> Venv:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    subprocess.run(
        [
            *(str(where / "bin" / "python"), "-m", "pip", "install", "-q"),
            *("-c", str(ROOT / "requirements.txt"), *requirements),
        ],
        check=True,
        timeout=600,
        cwd=where,
    )
    return Venv(where)


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment less anything that points into the repo."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("LONGRUN_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    return env | {"PYTHONUNBUFFERED": "1"} | extra


def top_level_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n.split("/")[0] for n in z.namelist() if ".dist-info/" not in n}


def test_wheels_hold_only_longrun_names_and_the_generated_code(wheels: dict[str, Path]) -> None:
    assert top_level_names(wheels["longrun"]) == {
        "longrun_core",
        "longrun_server",
        "longrun_worker",
    }
    assert top_level_names(wheels["longrun_client"]) == {"longrun_client", "longrun"}
    with zipfile.ZipFile(wheels["longrun_client"]) as z:
        names = set(z.namelist())
    assert {
        "longrun/v1/jobs_pb2.py",
        "longrun/v1/jobs_pb2_grpc.py",
        "longrun/v1/jobs_pb2.pyi",
        "longrun_client/py.typed",
    } <= names


def test_the_client_installs_alone_without_the_server_stack(
    tmp_path: Path, wheels: dict[str, Path]
) -> None:
    venv = make_venv(tmp_path / "venv", str(wheels["longrun_client"]))
    env = clean_env()
    imported = subprocess.run(
        [venv.bin("python"), "-c", "import longrun_client, longrun.v1.jobs_pb2_grpc"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.returncode == 0, imported.stderr
    listed = subprocess.run(
        [venv.bin("python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "longrun-client" in installed
    assert not {"longrun", "google-cloud-firestore", "google-cloud-pubsub", "click"} & installed
    # Without the cli extra the command says what to install, not a traceback.
    cli = subprocess.run(
        [venv.bin("longrun"), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert cli.returncode == 1
    assert "pip install 'longrun-client[cli]'" in cli.stderr
    assert "Traceback" not in cli.stderr


@dataclass
class Installed:
    """The full install, with a server and a worker started from two other folders."""

    venv: Venv
    home: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0

    @property
    def env(self) -> dict[str, str]:
        # One data home for every process: the default database is per user,
        # not per folder.
        return clean_env(XDG_DATA_HOME=str(self.home / "data"))

    def folder(self, name: str) -> Path:
        path = self.home / name
        path.mkdir(exist_ok=True)
        return path

    def start(self, command: str, *args: str, cwd: Path, env: dict[str, str]) -> Path:
        log = self.home / f"{command}-{len(self.procs)}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [self.venv.bin(command), *args], cwd=cwd, env=env, stdout=out, stderr=out
            )
        self.procs.append(proc)
        return log

    def start_pair(self, *args: str, env: dict[str, str] | None = None) -> Path:
        """A server (folder a) and a worker (folder b); returns the server's log."""
        env = env or self.env
        port_file = self.home / f"port-{len(self.procs)}"
        log = self.start(
            "longrun-server",
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            *args,
            cwd=self.folder("a"),
            env=env,
        )
        wait_for(lambda: port_file.exists() and port_file.read_text() != "", 60, "the server")
        self.port = int(port_file.read_text())
        self.start("longrun-worker", *args, cwd=self.folder("b"), env=env)
        return log

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.venv.bin("longrun"), "--target", f"127.0.0.1:{self.port}", *args],
            cwd=self.folder("c"),
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in self.home.glob("*.log"))


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Venv:
    where = tmp_path_factory.mktemp("full")
    return make_venv(where / "venv", str(wheels["longrun"]), f"{wheels['longrun_client']}[cli]")


@pytest.fixture
def installed(full: Venv, tmp_path: Path) -> Iterator[Installed]:
    inst = Installed(full, tmp_path)
    try:
        yield inst
    except BaseException:
        print(inst.logs())
        raise
    finally:
        inst.stop()


def test_server_worker_and_cli_run_from_three_folders(installed: Installed) -> None:
    server_log = installed.start_pair()
    done = installed.cli("submit", "sleep", "--param", "worktime=1", "--wait")
    assert done.returncode == 0, done.stderr + installed.logs()
    assert json.loads(done.stdout) == {"slept_seconds": 1}
    database = installed.home / "data" / "longrun" / "longrun.db"
    assert database.exists()
    assert f"sqlite database {database}" in server_log.read_text()


def test_a_task_module_adds_to_the_builtin_tasks(installed: Installed) -> None:
    pkg = installed.folder("mypkg")
    (pkg / "__init__.py").write_text("")
    (pkg / "tasks.py").write_text(TASKS_MODULE)
    env = installed.env | {"PYTHONPATH": str(installed.home)}
    installed.start_pair("--task-module", "mypkg.tasks", env=env)

    shouted = installed.cli("submit", "shout", "--param", "text=hi", "--wait")
    assert shouted.returncode == 0, shouted.stderr + installed.logs()
    assert json.loads(shouted.stdout) == {"text": "HI"}
    slept = installed.cli("submit", "sleep", "--param", "worktime=0", "--wait")
    assert slept.returncode == 0, slept.stderr + installed.logs()


@pytest.mark.parametrize("command", ["longrun-server", "longrun-worker"])
def test_an_unimportable_task_module_is_a_usage_error(installed: Installed, command: str) -> None:
    run = subprocess.run(
        [installed.venv.bin(command), "--task-module", "nope.tasks"],
        cwd=installed.folder("a"),
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "cannot import task module 'nope.tasks'" in run.stderr
    assert "PYTHONPATH" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_database_that_cannot_be_opened_is_one_clear_line(installed: Installed) -> None:
    not_a_folder = installed.home / "file"
    not_a_folder.write_text("")
    run = subprocess.run(
        [installed.venv.bin("longrun-worker"), "--sqlite-path", str(not_a_folder / "x.db")],
        cwd=installed.folder("a"),
        env=installed.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert f"cannot open the SQLite database {not_a_folder / 'x.db'}" in run.stderr
    assert "Traceback" not in run.stderr
