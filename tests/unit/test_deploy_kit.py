"""The Cloud Run deploy kit, deploy/cloudrun.sh: shellcheck-clean, and its
--dry-run prints a complete, concrete gcloud plan without ever calling gcloud
(a fake gcloud that fails is first on PATH). One test runs it for real against
a recording fake gcloud, to check the parts a dry run cannot show (the worker
URL read back with describe, the secret kept off the output)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "cloudrun.sh"
INDEXES = ROOT / "firestore.indexes.json"
PROJECT = "demo-project"
REGION = "us-central1"
IMAGE = f"{REGION}-docker.pkg.dev/{PROJECT}/longrun/longrun:test"
SERVER_SA = f"longrun-server@{PROJECT}.iam.gserviceaccount.com"
WORKER_SA = f"longrun-worker@{PROJECT}.iam.gserviceaccount.com"
PUSH_SA = f"longrun-push@{PROJECT}.iam.gserviceaccount.com"
PUBSUB_AGENT_SUFFIX = "@gcp-sa-pubsub.iam.gserviceaccount.com"
#: Settings the script reads from the environment; a developer's own must not leak in.
CONFIG_VARS = {
    "PROJECT", "REGION", "IMAGE", "WORKERS", "DRY_RUN", "STRICT_IAM", "ENABLE_CLOUDBUILD",
    "SERVER_INVOKERS", "SERVER_SERVICE", "WORKER_SERVICE", "WORKER_POOL", "SERVER_SA_NAME",
    "WORKER_SA_NAME", "PUSH_SA_NAME", "TOPIC", "DEAD_LETTER_TOPIC", "SUBSCRIPTION",
    "PUSH_SUBSCRIPTION", "SECRET_NAME", "SIGNING_SECRET_NAME", "FIRESTORE_DATABASE",
    "FIRESTORE_LOCATION", "COLLECTION", "MAX_DELIVERY_ATTEMPTS", "PULL_ACK_DEADLINE",
    "PUSH_ACK_DEADLINE",
    "MIN_RETRY_DELAY", "MAX_RETRY_DELAY", "SERVER_MIN_INSTANCES", "SERVER_TIMEOUT",
    "WORKER_INSTANCES", "WORKER_CONCURRENCY", "SHUTDOWN_GRACE", "PROJECT_NUMBER", "INDEXES_FILE",
}  # fmt: skip

Command = list[str]


def run_kit(
    tmp_path: Path, *args: str, fake: str = "failing", **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the script with PROJECT and IMAGE set (unless overridden with "")
    and a fake gcloud first on PATH: "failing" (exits 99) or "recording"."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    gcloud = bin_dir / "gcloud"
    if fake == "failing":
        gcloud.write_text('#!/bin/sh\ntouch "$(dirname "$0")/called"\nexit 99\n')
    else:
        gcloud.write_text(f"#!{sys.executable}\n{RECORDING_GCLOUD}")
    gcloud.chmod(0o755)
    full_env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    full_env.update(PROJECT=PROJECT, IMAGE=IMAGE)
    full_env.update(env)
    full_env = {k: v for k, v in full_env.items() if v}
    full_env["PATH"] = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def dry_run(tmp_path: Path, *args: str, **env: str) -> str:
    result = run_kit(tmp_path, "--dry-run", *args, **env)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "bin" / "called").exists(), "the dry run called gcloud"
    return result.stdout


def commands(output: str) -> list[Command]:
    """Every command of the printed plan ("+ " lines); `a || b | c` gives a, b and c."""
    found: list[Command] = []
    for line in output.splitlines():
        if not line.startswith("+ "):
            continue
        current: Command = []
        for word in [*shlex.split(line[2:]), "||"]:
            if word in ("||", "|"):
                assert current, f"empty command in {line!r}"
                found.append(current)
                current = []
            elif word not in (">/dev/null", "2>&1"):
                current.append(word)
    return found


def gcloud(cmds: list[Command], *verb: str) -> list[Command]:
    """The gcloud commands starting with `verb` (e.g. "run", "deploy")."""
    return [c for c in cmds if c[0] == "gcloud" and tuple(c[1 : 1 + len(verb)]) == verb]


def flags(cmd: Command, name: str) -> list[str]:
    """Values of --name=VALUE in `cmd` (repeatable)."""
    return [w.split("=", 1)[1] for w in cmd if w.startswith(f"--{name}=")]


def flag(cmd: Command, name: str) -> str:
    values = flags(cmd, name)
    assert len(values) == 1, f"--{name} given {len(values)} times in {shlex.join(cmd)}"
    return values[0]


def env_vars(cmd: Command, name: str = "set-env-vars") -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in flag(cmd, name).split(","))


def bindings(cmds: list[Command]) -> list[tuple[str, str, str, str]]:
    """(kind, resource, member, role) of every add-iam-policy-binding."""
    found: list[tuple[str, str, str, str]] = []
    for c in cmds:
        if c[0] == "gcloud" and "add-iam-policy-binding" in c:
            verb = c.index("add-iam-policy-binding")
            kind = " ".join(c[1:verb])
            found.append((kind, c[verb + 1], flag(c, "member"), flag(c, "role")))
    return found


def position(cmds: list[Command], *verb: str) -> int:
    """Index in `cmds` of the one gcloud command starting with `verb`."""
    return cmds.index(only(gcloud(cmds, *verb)))


def only(cmds: list[Command]) -> Command:
    assert len(cmds) == 1, [shlex.join(c) for c in cmds]
    return cmds[0]


@pytest.fixture
def push_plan(tmp_path: Path) -> list[Command]:
    return commands(dry_run(tmp_path, "--push-workers"))


@pytest.fixture
def pull_plan(tmp_path: Path) -> list[Command]:
    return commands(dry_run(tmp_path, "--pull-workers"))


def test_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is not installed, and CI must check deploy/cloudrun.sh")
        pytest.skip("shellcheck is not installed (apt-get install shellcheck); CI runs this")
    result = subprocess.run(
        [shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dry_run_prints_commands_and_never_calls_gcloud(tmp_path: Path) -> None:
    output = dry_run(tmp_path, "--push-workers")
    cmds = commands(output)
    assert len(gcloud(cmds)) > 30
    # Every line is a command ("+ "), a note ("# ") or blank.
    for line in output.splitlines():
        assert line == "" or line.startswith(("+ ", "# ")), line


def test_server_is_private_grpc_over_end_to_end_http2(push_plan: list[Command]) -> None:
    deploy = only([c for c in gcloud(push_plan, "run", "deploy") if c[3] == "longrun-server"])
    assert "--use-http2" in deploy
    assert "--no-allow-unauthenticated" in deploy
    # Cloud Run's IAM authenticates callers, so the server may listen on 0.0.0.0.
    assert env_vars(deploy)["LONGRUN_ADDRESS"] == "0.0.0.0:50051"
    assert env_vars(deploy)["LONGRUN_ALLOW_UNAUTHENTICATED"] == "true"
    assert flag(deploy, "port") == "50051"
    assert flag(deploy, "image") == IMAGE
    assert flag(deploy, "region") == REGION
    assert flag(deploy, "service-account") == SERVER_SA
    assert flag(deploy, "command") == "longrun-server"
    env = env_vars(deploy)
    assert env["LONGRUN_STORE"] == "firestore"
    assert env["LONGRUN_QUEUE"] == "pubsub"
    assert env["GOOGLE_CLOUD_PROJECT"] == PROJECT
    assert "LONGRUN_PAGE_TOKEN_SECRET" not in env  # from Secret Manager, not in plain text
    assert flag(deploy, "set-secrets").startswith("LONGRUN_PAGE_TOKEN_SECRET=")
    secret = flag(deploy, "set-secrets").split("=", 1)[1].split(":")[0]
    assert gcloud(push_plan, "secrets", "create", secret)


def test_ttl_policy_on_expire_time(push_plan: list[Command]) -> None:
    ttl = only(gcloud(push_plan, "firestore", "fields", "ttls", "update"))
    assert ttl[5] == "expire_time"
    assert flag(ttl, "collection-group") == "operations"
    assert "--enable-ttl" in ttl


def field_config(field: dict[str, str]) -> str:
    """gcloud's --field-config for one field of firestore.indexes.json."""
    if "order" in field:
        return f"field-path={field['fieldPath']},order={field['order'].lower()}"
    return f"field-path={field['fieldPath']},array-config={field['arrayConfig'].lower()}"


def test_one_composite_index_per_index_file_entry(push_plan: list[Command]) -> None:
    spec: dict[str, Any] = json.loads(INDEXES.read_text())
    created = gcloud(push_plan, "firestore", "indexes", "composite", "create")
    assert len(spec["indexes"]) >= 1
    assert len(created) == len(spec["indexes"])
    for index, cmd in zip(spec["indexes"], created, strict=True):
        assert flag(cmd, "collection-group") == index["collectionGroup"]
        assert flag(cmd, "query-scope") == index["queryScope"].lower()
        assert flags(cmd, "field-config") == [field_config(f) for f in index["fields"]]


def test_firestore_native_database(push_plan: list[Command]) -> None:
    create = only(gcloud(push_plan, "firestore", "databases", "create"))
    assert flag(create, "type") == "firestore-native"


def test_push_subscription_with_oidc_token_and_dead_letters(push_plan: list[Command]) -> None:
    sub = only(gcloud(push_plan, "pubsub", "subscriptions", "create", "longrun-push"))
    assert flag(sub, "topic") == "longrun-tasks"
    assert flag(sub, "push-endpoint") == "https://WORKER_URL/push"
    assert flag(sub, "push-auth-service-account") == PUSH_SA
    assert flag(sub, "push-auth-token-audience") == "https://WORKER_URL"
    assert flag(sub, "dead-letter-topic") == "longrun-dead-letters"
    assert flag(sub, "max-delivery-attempts") == "10"
    assert flag(sub, "min-retry-delay")
    # In push mode the push subscription is the queue's: no pull subscription to pile up.
    assert not gcloud(push_plan, "pubsub", "subscriptions", "create", "longrun-workers")
    server = only([c for c in gcloud(push_plan, "run", "deploy") if c[3] == "longrun-server"])
    assert env_vars(server)["LONGRUN_PUBSUB_SUBSCRIPTION"] == "longrun-push"


def test_push_worker_service_is_private_and_checks_the_token(push_plan: list[Command]) -> None:
    deploy = only([c for c in gcloud(push_plan, "run", "deploy") if c[3] == "longrun-worker"])
    assert "--no-allow-unauthenticated" in deploy
    assert flag(deploy, "command") == "longrun-worker"
    assert flag(deploy, "args") == "--push"
    assert flag(deploy, "service-account") == WORKER_SA
    assert env_vars(deploy)["LONGRUN_PUSH_ALLOWED_SA"] == PUSH_SA
    url = only(gcloud(push_plan, "run", "services", "describe", "longrun-worker"))
    assert flag(url, "format") == "value(status.url)"
    update = only(gcloud(push_plan, "run", "services", "update", "longrun-worker"))
    assert env_vars(update, "update-env-vars") == {"LONGRUN_PUSH_AUDIENCE": "https://WORKER_URL"}


def test_server_and_workers_share_the_message_signing_keys(tmp_path: Path) -> None:
    secret = "LONGRUN_MESSAGE_SIGNING_KEYS=longrun-message-signing-keys:latest"
    for mode in ("--push-workers", "--pull-workers"):
        cmds = commands(dry_run(tmp_path, mode))
        create = only(gcloud(cmds, "secrets", "create", "longrun-message-signing-keys"))
        assert flag(create, "data-file") == "-"  # from stdin: never on a command line
        deploys = gcloud(cmds, "run", "deploy") + gcloud(cmds, "beta", "run", "worker-pools")
        assert len(deploys) == 2
        for deploy in deploys:
            assert secret in flag(deploy, "set-secrets").split(","), shlex.join(deploy)
        readers = {
            member
            for kind, resource, member, role in bindings(cmds)
            if resource == "longrun-message-signing-keys"
            and role == "roles/secretmanager.secretAccessor"
        }
        assert readers == {f"serviceAccount:{SERVER_SA}", f"serviceAccount:{WORKER_SA}"}


def test_the_push_worker_always_deploys_with_an_audience(push_plan: list[Command]) -> None:
    deploy = only([c for c in gcloud(push_plan, "run", "deploy") if c[3] == "longrun-worker"])
    audience = env_vars(deploy)["LONGRUN_PUSH_AUDIENCE"]
    assert audience == f"https://longrun-worker-PROJECT_NUMBER.{REGION}.run.app"


def test_invoker_role_scoped_to_the_worker_service(push_plan: list[Command]) -> None:
    invokers = [b for b in bindings(push_plan) if b[3] == "roles/run.invoker"]
    assert invokers == [("run services", "longrun-worker", f"serviceAccount:{PUSH_SA}",
                         "roles/run.invoker")]  # fmt: skip


def test_least_privilege_bindings(push_plan: list[Command]) -> None:
    found = bindings(push_plan)
    agent = next(m for _, _, m, _ in found if m.endswith(PUBSUB_AGENT_SUFFIX))
    assert agent == "serviceAccount:service-PROJECT_NUMBER" + PUBSUB_AGENT_SUFFIX
    expected = {
        ("projects", PROJECT, f"serviceAccount:{SERVER_SA}", "roles/datastore.user"),
        ("projects", PROJECT, f"serviceAccount:{WORKER_SA}", "roles/datastore.user"),
        ("pubsub topics", "longrun-tasks", f"serviceAccount:{SERVER_SA}", "roles/pubsub.publisher"),
        ("pubsub topics", "longrun-dead-letters", f"serviceAccount:{WORKER_SA}",
         "roles/pubsub.publisher"),
        ("iam service-accounts", PUSH_SA, agent, "roles/iam.serviceAccountTokenCreator"),
        ("pubsub topics", "longrun-dead-letters", agent, "roles/pubsub.publisher"),
        ("pubsub subscriptions", "longrun-push", agent, "roles/pubsub.subscriber"),
    }  # fmt: skip
    assert expected <= set(found)
    for kind, resource, member, role in found:
        assert role not in ("roles/owner", "roles/editor", "roles/pubsub.editor"), role
        assert not role.endswith(".admin"), role
        if kind == "projects":  # project-wide grants: the store, and the start-up role
            assert role == "roles/datastore.user" or role.endswith("/roles/longrunPubsubStartup")
        if role == "roles/pubsub.publisher" and member == f"serviceAccount:{SERVER_SA}":
            assert resource == "longrun-tasks"
        if role == "roles/pubsub.subscriber" and member == f"serviceAccount:{SERVER_SA}":
            assert kind == "pubsub topics"  # attach only: the server never consumes tasks


def test_strict_iam_leaves_out_the_startup_grants(tmp_path: Path) -> None:
    cmds = commands(dry_run(tmp_path, "--pull-workers", "--strict-iam"))
    assert not gcloud(cmds, "iam", "roles", "create")
    roles = {b[3] for b in bindings(cmds)}
    assert "roles/pubsub.viewer" not in roles
    assert not [r for r in roles if "longrunPubsubStartup" in r]


def test_nothing_is_public(tmp_path: Path) -> None:
    for mode in ("--push-workers", "--pull-workers"):
        output = dry_run(tmp_path, mode, "--invoker", "user:alice@example.com")
        assert "allUsers" not in output
        assert "allAuthenticatedUsers" not in output
        assert "--allow-unauthenticated" not in output
        for deploy in gcloud(commands(output), "run", "deploy"):
            assert "--no-allow-unauthenticated" in deploy


def test_pull_workers_run_in_a_worker_pool(pull_plan: list[Command]) -> None:
    pool = only(gcloud(pull_plan, "beta", "run", "worker-pools", "deploy"))
    assert pool[5] == "longrun-workers"
    assert flag(pool, "command") == "longrun-worker"
    assert flag(pool, "image") == IMAGE
    assert flag(pool, "service-account") == WORKER_SA
    assert env_vars(pool)["LONGRUN_PUBSUB_SUBSCRIPTION"] == "longrun-workers"
    sub = only(gcloud(pull_plan, "pubsub", "subscriptions", "create", "longrun-workers"))
    assert flag(sub, "topic") == "longrun-tasks"
    assert flag(sub, "dead-letter-topic") == "longrun-dead-letters"
    assert flag(sub, "max-delivery-attempts") == "10"
    assert int(flag(sub, "ack-deadline")) == int(env_vars(pool)["LONGRUN_VISIBILITY_TIMEOUT"])
    assert not [c for c in pull_plan if "--push-endpoint" in " ".join(c)]
    assert ("pubsub subscriptions", "longrun-workers", f"serviceAccount:{WORKER_SA}",
            "roles/pubsub.subscriber") in bindings(pull_plan)  # fmt: skip


def test_missing_project_fails_naming_it(tmp_path: Path) -> None:
    result = run_kit(tmp_path, "--dry-run", PROJECT="")
    assert result.returncode != 0
    assert "PROJECT" in result.stderr
    assert "gcloud " not in result.stdout
    assert not (tmp_path / "bin" / "called").exists()


def test_missing_image_fails_naming_it(tmp_path: Path) -> None:
    result = run_kit(tmp_path, "--dry-run", IMAGE="")
    assert result.returncode != 0
    assert "IMAGE" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--pull-workers", "--push-workers"), "choose one"),
        (("--invoker", "allUsers"), "must not be public"),
        (("--invoker", "allAuthenticatedUsers"), "must not be public"),
        (("--no-such-flag",), "unknown argument"),
    ],
)
def test_refused_arguments(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = run_kit(tmp_path, "--dry-run", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert "gcloud " not in result.stdout


def test_help_documents_the_options(tmp_path: Path) -> None:
    result = run_kit(tmp_path, "--help", PROJECT="", IMAGE="")
    assert result.returncode == 0
    for option in ("--dry-run", "--pull-workers", "--push-workers", "PROJECT", "REGION", "IMAGE"):
        assert option in result.stdout


# A fake gcloud that records its arguments: nothing exists yet but the indexes
# (a re-run), services get a URL once deployed, and `secrets create` keeps what
# it reads from stdin.
RECORDING_GCLOUD = """
import json, sys
from pathlib import Path

here = Path(__file__).parent
args = sys.argv[1:]
with (here / "calls.jsonl").open("a") as log:
    log.write(json.dumps(args) + "\\n")
formatted = any(a.startswith("--format=") for a in args)
if args[:2] == ["projects", "describe"]:
    print("123456789")
elif args[:3] == ["firestore", "databases", "describe"] and formatted:
    print("FIRESTORE_NATIVE")
elif args[:3] == ["run", "services", "describe"]:
    if not (here / ("deployed-" + args[3])).exists():
        sys.exit(1)
    print("https://" + args[3] + "-abc123-uc.a.run.app")
elif args[:2] == ["run", "deploy"]:
    (here / ("deployed-" + args[2])).touch()
elif "describe" in args:
    sys.exit(1)
elif args[:2] == ["secrets", "create"]:
    (here / ("secret-" + args[2])).write_bytes(sys.stdin.buffer.read())
elif args[:4] == ["firestore", "indexes", "composite", "create"]:
    sys.exit("ERROR: (gcloud...composite.create) ALREADY_EXISTS: index already exists")
"""


def test_real_run_against_a_recording_gcloud(tmp_path: Path) -> None:
    result = run_kit(tmp_path, "--push-workers", fake="recording")
    assert result.returncode == 0, result.stderr
    calls = [
        ["gcloud", *json.loads(line)]
        for line in (tmp_path / "bin" / "calls.jsonl").read_text().splitlines()
    ]
    # The script printed each mutating call it made (reads may go unprinted).
    printed = [shlex.join(c) for c in commands(result.stdout)]
    for call in calls:
        if "describe" not in call:
            assert shlex.join(call) in printed
    url = "https://longrun-worker-abc123-uc.a.run.app"
    sub = only(gcloud(calls, "pubsub", "subscriptions", "create", "longrun-push"))
    assert flag(sub, "push-endpoint") == f"{url}/push"
    assert flag(sub, "push-auth-token-audience") == url
    update = only(gcloud(calls, "run", "services", "update", "longrun-worker"))
    assert env_vars(update, "update-env-vars") == {"LONGRUN_PUSH_AUDIENCE": url}
    assert "service-123456789" + PUBSUB_AGENT_SUFFIX in " ".join(map(shlex.join, calls))
    # The worker and the subscription exist before the server first starts.
    server = position(calls, "run", "deploy", "longrun-server")
    assert position(calls, "run", "deploy", "longrun-worker") < server
    assert position(calls, "pubsub", "subscriptions", "create", "longrun-push") < server
    # An index that exists already is no failure.
    indexes = len(json.loads(INDEXES.read_text())["indexes"])
    assert len(gcloud(calls, "firestore", "indexes", "composite", "create")) == indexes
    assert result.stdout.count("# exists, kept\n") == indexes
    secret = (tmp_path / "bin" / "secret-longrun-page-token-secret").read_text()
    assert len(secret) == 44 and "\n" not in secret  # 32 random bytes, base64
    assert secret not in result.stdout + result.stderr
    # The signing keys: one key k1 of 32 random bytes, never printed either.
    keys = (tmp_path / "bin" / "secret-longrun-message-signing-keys").read_text()
    assert re.fullmatch(r"k1:[0-9a-f]{64}", keys), keys
    assert keys.split(":")[1] not in result.stdout + result.stderr
    # The first worker deploy has an explicit audience (the deterministic URL).
    deploy = only(gcloud(calls, "run", "deploy", "longrun-worker"))
    first = "https://longrun-worker-123456789.us-central1.run.app"
    assert env_vars(deploy)["LONGRUN_PUSH_AUDIENCE"] == first
