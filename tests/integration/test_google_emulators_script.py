"""scripts/emulators.py: missing binaries, skip mode, reuse, start/stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import emulators
from tests.contract.google_backends import require_emulators

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def no_emulators(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing running, nothing installed."""
    for var in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "LONGRUN_EMULATORS"):
        monkeypatch.delenv(var, raising=False)

    def nowhere() -> Iterator[Path]:
        yield tmp_path

    monkeypatch.setattr(emulators, "sdk_roots", nowhere)


@pytest.mark.usefixtures("no_emulators")
def test_missing_binaries_fail_naming_what_to_install(capsys: pytest.CaptureFixture[str]) -> None:
    assert emulators.main(["run", "--", sys.executable, "-c", "raise SystemExit(7)"]) == 3
    err = capsys.readouterr().err
    for hint in (
        "google-cloud-cli-firestore-emulator",
        "google-cloud-cli-pubsub-emulator",
        "gcloud components install cloud-firestore-emulator pubsub-emulator",
        "LONGRUN_EMULATORS=skip",
    ):
        assert hint in err


@pytest.mark.usefixtures("no_emulators")
def test_skip_runs_the_command_without_emulators_and_passes_its_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LONGRUN_EMULATORS", "skip")
    check = "import os, sys; sys.exit(5 if 'FIRESTORE_EMULATOR_HOST' in os.environ else 7)"
    assert emulators.main(["run", "--", sys.executable, "-c", check]) == 7
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    assert emulators.main(["run", sys.executable, "-c", killed]) == 128 + 15


def test_usage_errors() -> None:
    assert emulators.main(["run", "--"]) == 2
    assert emulators.main(["frobnicate"]) == 2


@pytest.mark.google
def test_reachable_emulators_are_reused(capsys: pytest.CaptureFixture[str]) -> None:
    require_emulators()
    fs, ps = os.environ["FIRESTORE_EMULATOR_HOST"], os.environ["PUBSUB_EMULATOR_HOST"]
    check = (
        "import os, sys; e = os.environ; "
        f"sys.exit(0 if (e['FIRESTORE_EMULATOR_HOST'], e['PUBSUB_EMULATOR_HOST']) == "
        f"({fs!r}, {ps!r}) else 9)"
    )
    assert emulators.main(["run", "--", sys.executable, "-c", check]) == 0
    err = capsys.readouterr().err
    assert err.count("reusing") == 2 and "ready at" not in err


@pytest.mark.slow
def test_start_prints_exports_and_stop_ends_both_process_groups(tmp_path: Path) -> None:
    try:
        emulators.find_sdk(emulators.SPECS)
    except emulators.MissingBinaries as exc:
        pytest.skip(str(exc))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST")
    }
    env["LONGRUN_EMULATORS_DIR"] = str(tmp_path)

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scripts.emulators", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    started = script("start")
    try:
        assert started.returncode == 0, started.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines()
        )
        assert set(exports) == {"FIRESTORE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST"}
        assert all(emulators.http_ok(host) for host in exports.values())
        recorded = json.loads((tmp_path / "pids").read_text())
        groups = [int(entry["pgid"]) for entry in recorded]
        again = script("start")
        assert again.returncode == 0 and again.stdout == started.stdout  # still running
    finally:
        stopped = script("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert not any(emulators._group_alive(g) for g in groups)
    assert not any(emulators.http_ok(host) for host in exports.values())
    assert not (tmp_path / "pids").exists()
