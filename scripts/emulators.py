"""Run a command against the Firestore and Pub/Sub emulators.

    python -m scripts.emulators run -- CMD [ARG...]
        Start both emulators on free loopback ports (or reuse running ones),
        run CMD with FIRESTORE_EMULATOR_HOST and PUBSUB_EMULATOR_HOST set,
        stop what was started, and exit with CMD's exit code.
    python -m scripts.emulators start
        Start both and leave them running; prints `export ...` lines for a
        shell (`eval "$(python -m scripts.emulators start)"`). The process
        groups are recorded in build/emulators/pids.
    python -m scripts.emulators stop
        Stop what `start` started.

Logs and the pids file live in build/emulators/ (or $LONGRUN_EMULATORS_DIR).

An emulator counts as ready only once its HTTP root answers and a real API
call through the client library (a Firestore get of a missing document, a
Pub/Sub list_topics) succeeds; both are retried for at most READY_TIMEOUT
seconds. Each emulator runs in its own process group (its launcher script
starts a JVM that would otherwise outlive it) and is stopped by signalling
the whole group: SIGTERM, then SIGKILL after STOP_GRACE seconds.

Already set and reachable FIRESTORE_EMULATOR_HOST / PUBSUB_EMULATOR_HOST are
reused and never stopped by this script. With LONGRUN_EMULATORS=skip, missing
emulator binaries are not an error: CMD runs without them (the Google tests
then skip, or fail under CI=true).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
#: Logs and the pids file of `start` (LONGRUN_EMULATORS_DIR overrides it).
STATE_DIR = Path(os.environ.get("LONGRUN_EMULATORS_DIR") or ROOT / "build" / "emulators")
PIDS_FILE = STATE_DIR / "pids"
FALLBACK_SDK = Path("/usr/lib/google-cloud-sdk")
READY_TIMEOUT = 60.0
STOP_GRACE = 10.0
PROBE_PROJECT = "emulator-probe"
JAVA_TOOL_OPTIONS = "-Xmx256m"


@dataclass(frozen=True)
class Spec:
    kind: str
    env_var: str
    #: Path of the launcher under the SDK root.
    binary: str
    package: str
    component: str

    def argv(self, sdk: Path, port: int) -> list[str]:
        exe = str(sdk / self.binary)
        if self.kind == "firestore":
            return [exe, "start", "--host=127.0.0.1", f"--port={port}"]
        return [exe, "--host=127.0.0.1", f"--port={port}"]


SPECS = (
    Spec(
        "firestore",
        "FIRESTORE_EMULATOR_HOST",
        "platform/cloud-firestore-emulator/cloud_firestore_emulator",
        "google-cloud-cli-firestore-emulator",
        "cloud-firestore-emulator",
    ),
    Spec(
        "pubsub",
        "PUBSUB_EMULATOR_HOST",
        "platform/pubsub-emulator/bin/cloud-pubsub-emulator",
        "google-cloud-cli-pubsub-emulator",
        "pubsub-emulator",
    ),
)


class EmulatorError(Exception):
    """An emulator could not be started; the message says why and what to do."""


class MissingBinaries(EmulatorError):
    pass


@dataclass
class Running:
    spec: Spec
    host: str
    #: Process group id (= the launcher's pid); None for a reused emulator.
    pgid: int | None
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None


def note(message: str) -> None:
    print(f"emulators: {message}", file=sys.stderr, flush=True)


# ---- locating the SDK ----


def sdk_roots() -> Iterator[Path]:
    """Candidate SDK roots, cheapest first: where the `gcloud` on PATH lives
    (instant), what `gcloud info` reports (a few seconds), FALLBACK_SDK."""
    seen: set[Path] = set()
    gcloud = shutil.which("gcloud")
    candidates: list[Callable[[], Path | None]] = []
    if gcloud:
        candidates.append(lambda: Path(os.path.realpath(gcloud)).parent.parent)
        candidates.append(lambda: _gcloud_info_root(gcloud))
    candidates.append(lambda: FALLBACK_SDK)
    for candidate in candidates:
        root = candidate()
        if root is not None and root not in seen:
            seen.add(root)
            yield root


def _gcloud_info_root(gcloud: str) -> Path | None:
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def find_sdk(specs: Sequence[Spec]) -> Path:
    roots: list[Path] = []
    for root in sdk_roots():
        roots.append(root)
        if all(os.access(root / s.binary, os.X_OK) for s in specs):
            return root
    missing = [s for s in specs if not any(os.access(r / s.binary, os.X_OK) for r in roots)]
    names = missing or list(specs)
    raise MissingBinaries(
        "the "
        + " and ".join(f"{s.kind} emulator" for s in names)
        + f" {'is' if len(names) == 1 else 'are'} not installed (looked under "
        + ", ".join(str(r) for r in roots)
        + "). Install the Debian/RPM package(s) "
        + ", ".join(s.package for s in names)
        + ", or run `gcloud components install "
        + " ".join(s.component for s in names)
        + "` (needs Java 11+). To run without them, set LONGRUN_EMULATORS=skip "
        "(the Google-backed tests then skip)."
    )


# ---- readiness ----


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(host: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://{host}/", timeout=timeout) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def _rest_probe(url: str, ok_codes: tuple[int, ...]) -> None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status not in ok_codes:
        raise EmulatorError(f"GET {url} answered {status}")


def firestore_api_call(host: str) -> None:
    """Get a missing document through the client library (REST if it is absent)."""
    try:
        from google.cloud import firestore
    except ImportError:  # pragma: no cover - the venv has it
        _rest_probe(
            f"http://{host}/v1/projects/{PROBE_PROJECT}/databases/(default)/documents/probe/missing",
            (404,),
        )
        return
    with _env(FIRESTORE_EMULATOR_HOST=host):
        client = firestore.Client(project=PROBE_PROJECT)
    try:
        snap = client.collection("probe").document("missing").get(timeout=5.0, retry=None)
        if snap.exists:
            raise EmulatorError("probe document unexpectedly exists")
    finally:
        _close_transport(client._firestore_api)


def pubsub_api_call(host: str) -> None:
    """List topics through the client library (REST if it is absent)."""
    try:
        from google.cloud.pubsub_v1 import PublisherClient
    except ImportError:  # pragma: no cover - the venv has it
        _rest_probe(f"http://{host}/v1/projects/{PROBE_PROJECT}/topics", (200,))
        return
    with _env(PUBSUB_EMULATOR_HOST=host):
        client = PublisherClient()
    try:
        list(
            client.list_topics(
                request={"project": f"projects/{PROBE_PROJECT}"}, timeout=5.0, retry=None
            )
        )
    finally:
        _close_transport(client)


def _close_transport(api: object) -> None:
    transport = getattr(api, "transport", None) or getattr(api, "_transport", None)
    close = getattr(transport, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


API_CALLS: dict[str, Callable[[str], None]] = {
    "firestore": firestore_api_call,
    "pubsub": pubsub_api_call,
}


def wait_ready(em: Running, deadline: float) -> None:
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if em.proc is not None and em.proc.poll() is not None:
            raise EmulatorError(
                f"the {em.spec.kind} emulator exited with code {em.proc.returncode} before it was "
                f"ready; log {em.log}:\n{_tail(em.log)}"
            )
        if http_ok(em.host):
            try:
                API_CALLS[em.spec.kind](em.host)
                return
            except Exception as exc:
                last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.2)
    raise EmulatorError(
        f"the {em.spec.kind} emulator at {em.host} was not ready within {READY_TIMEOUT:.0f}s "
        f"({last_error}); log {em.log}:\n{_tail(em.log)}"
    )


def _tail(path: Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---- starting and stopping ----


def launch(spec: Spec, sdk: Path, port: int | None = None) -> Running:
    """Start one emulator (on `port`, or a free one); not yet ready."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = STATE_DIR / f"{spec.kind}.{port}.log"
    env = dict(os.environ)
    env["JAVA_TOOL_OPTIONS"] = JAVA_TOOL_OPTIONS
    # The emulator must not think it is itself talking to an emulator.
    env.pop(spec.env_var, None)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            spec.argv(sdk, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    return Running(spec, f"127.0.0.1:{port}", proc.pid, log, proc)


def start_all(specs: Sequence[Spec], env: dict[str, str]) -> list[Running]:
    """Reuse reachable emulators named in `env`, start the others, wait until
    all answer API calls. Returns them all (reused ones have pgid None)."""
    result: list[Running] = []
    to_start: list[Spec] = []
    for spec in specs:
        host = env.get(spec.env_var, "")
        if host and http_ok(host, timeout=2.0):
            note(f"reusing the {spec.kind} emulator at {host} ({spec.env_var})")
            result.append(Running(spec, host, None))
        else:
            if host:
                note(f"{spec.env_var}={host} does not answer; starting a new emulator")
            to_start.append(spec)
    if not to_start:
        return result
    sdk = find_sdk(to_start)
    started: list[Running] = []
    try:
        for spec in to_start:
            started.append(launch(spec, sdk))
        deadline = time.monotonic() + READY_TIMEOUT
        for i, em in enumerate(started):
            try:
                wait_ready(em, deadline)
            except EmulatorError:
                if em.proc is None or em.proc.poll() is None:
                    raise
                # Lost the race for the port (or a transient start failure): once more.
                note(f"the {em.spec.kind} emulator exited early; retrying on another port")
                stop(em)
                em = started[i] = launch(em.spec, sdk)
                wait_ready(em, time.monotonic() + READY_TIMEOUT)
            note(f"{em.spec.kind} emulator ready at {em.host}")
    except BaseException:
        for em in started:
            stop(em)
        raise
    return result + started


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (zombies do not count:
    nobody may reap them when their parent has exited)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def stop(em: Running) -> None:
    """SIGTERM the emulator's process group, SIGKILL it after STOP_GRACE seconds,
    and reap the launcher."""
    _stop_group(em)
    if em.proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            em.proc.wait(timeout=10)


def _stop_group(em: Running) -> None:
    if em.pgid is None:
        return
    pgid = em.pgid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        _reap(em)
        return
    deadline = time.monotonic() + STOP_GRACE
    while time.monotonic() < deadline:
        _reap(em)
        if not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    end = time.monotonic() + 5
    while time.monotonic() < end and _group_alive(pgid):
        _reap(em)
        time.sleep(0.05)


def _reap(em: Running) -> None:
    if em.proc is not None:
        em.proc.poll()


def export_lines(running: Sequence[Running]) -> list[str]:
    return [f"export {em.spec.env_var}={em.host}" for em in running]


# ---- commands ----


def cmd_run(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        note("usage: python -m scripts.emulators run -- CMD [ARG...]")
        return 2
    env = dict(os.environ)
    try:
        running = start_all(SPECS, env)
    except MissingBinaries as exc:
        if os.environ.get("LONGRUN_EMULATORS") == "skip":
            note(f"{exc}\nemulators: LONGRUN_EMULATORS=skip: running the command without them")
            return run_child(argv, env)
        note(str(exc))
        return 3
    except EmulatorError as exc:
        note(str(exc))
        return 4
    for em in running:
        env[em.spec.env_var] = em.host
    rc = 1
    try:
        rc = run_child(argv, env)
    finally:
        for em in running:
            stop(em)
        for em in running:
            if rc == 0 and em.log is not None:
                em.log.unlink(missing_ok=True)
            elif em.log is not None:
                note(f"{em.spec.kind} emulator log kept: {em.log}")
    return rc


def run_child(argv: list[str], env: dict[str, str]) -> int:
    try:
        child = subprocess.Popen(argv, env=env)
    except OSError as exc:
        note(f"cannot run {argv[0]!r}: {exc}")
        return 127

    def forward(signum: int, _frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    # Ctrl-C reaches the child directly (same process group): only wait for it.
    previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
    previous_term = signal.signal(signal.SIGTERM, forward)
    try:
        rc = child.wait()
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    return 128 - rc if rc < 0 else rc


def _load_pids() -> list[dict[str, object]]:
    try:
        data = json.loads(PIDS_FILE.read_text())
    except (OSError, ValueError):
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


def _is_emulator(pgid: int) -> bool:
    """Guard against a recycled pid: the group leader must still be an emulator."""
    cmdline = Path(f"/proc/{pgid}/cmdline")
    if not cmdline.parent.exists():
        return _group_alive(pgid)
    try:
        return b"emulator" in cmdline.read_bytes()
    except OSError:
        return False


def cmd_start() -> int:
    recorded = _load_pids()
    if recorded and all(
        isinstance(d.get("pgid"), int) and _is_emulator(int(d["pgid"]))  # type: ignore[call-overload]
        for d in recorded
    ):
        for d in recorded:
            print(f"export {d['env_var']}={d['host']}")
        note(f"already running (see {PIDS_FILE}); `python -m scripts.emulators stop` stops them")
        return 0
    try:
        running = start_all(SPECS, {})
    except EmulatorError as exc:
        note(str(exc))
        return 3 if isinstance(exc, MissingBinaries) else 4
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    PIDS_FILE.write_text(
        json.dumps(
            [
                {
                    "kind": em.spec.kind,
                    "env_var": em.spec.env_var,
                    "host": em.host,
                    "pgid": em.pgid,
                    "log": str(em.log),
                }
                for em in running
            ],
            indent=2,
        )
    )
    for line in export_lines(running):
        print(line)
    note(f"left running (process groups in {PIDS_FILE}); stop: python -m scripts.emulators stop")
    return 0


def cmd_stop() -> int:
    recorded = _load_pids()
    if not recorded:
        note("nothing to stop")
        return 0
    specs = {s.kind: s for s in SPECS}
    for d in recorded:
        pgid = d.get("pgid")
        spec = specs.get(str(d.get("kind")))
        if not isinstance(pgid, int) or spec is None:
            continue
        if not _is_emulator(pgid):
            note(f"process group {pgid} is no longer a {spec.kind} emulator; left alone")
            continue
        stop(Running(spec, str(d.get("host")), pgid))
        log = d.get("log")
        if isinstance(log, str):
            Path(log).unlink(missing_ok=True)
        note(f"stopped the {spec.kind} emulator at {d.get('host')}")
    PIDS_FILE.unlink(missing_ok=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "run":
        return cmd_run(rest)
    if command == "start":
        return cmd_start()
    if command == "stop":
        return cmd_stop()
    note(f"unknown command {command!r}; use run, start or stop")
    return 2


if __name__ == "__main__":
    sys.exit(main())
