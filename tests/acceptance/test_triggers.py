"""Seed 002 end to end on real processes: Cloud Storage notifications
published to the Pub/Sub emulator -> `longrun-trigger` -> operations on the
server -> `docx_to_pdf` on a worker (real LibreOffice) -> PDFs in the
object folder (the local storage seam; there is no Cloud Storage emulator).
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from examples.convert.documents import count_pages
from longrun.v1 import jobs_pb2
from longrun_client import Client
from tests.acceptance.harness import Service, backend_env, wait_for
from tests.acceptance.notifications import notification
from tests.acceptance.test_clients import BACKENDS
from tests.support.docx_files import docx_bytes

pytestmark = pytest.mark.slow

TASK_MODULES = "longrun_worker.builtin_tasks examples.convert.documents"
TRIGGERS = """
[[trigger]]
name = "docx-to-pdf"
subscription = "{subscription}"
project = "docs"
task = "docx_to_pdf"
dead_letter_topic = "{dead_topic}"

[trigger.filter]
eventType = "OBJECT_FINALIZE"
objectId = {{ suffix = ".docx" }}

[trigger.params]
bucket = "{{attributes.bucketId}}"
object = "{{data.name}}"
generation = "{{attributes.objectGeneration}}"
output_bucket = "converted"

[trigger.labels]
object = "{{attributes.objectId}}"
generation = "{{attributes.objectGeneration}}"
"""


@dataclass
class Uploads:
    svc: Service
    objects: Path
    topic: str
    dead_subscription: str
    stats: Path
    publisher: Any
    subscriber: Any

    def upload(self, name: str, content: bytes, generation: int) -> tuple[bytes, dict[str, str]]:
        path = self.objects / "uploads" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return notification("uploads", name, generation, content)

    def publish(self, data: bytes, attributes: dict[str, str]) -> str:
        return str(self.publisher.publish(self.topic, data, **attributes).result(timeout=30))

    def counters(self) -> dict[str, int]:
        if not self.stats.exists():
            return {}
        totals: dict[str, int] = json.loads(self.stats.read_text())["totals"]
        return totals

    def settled(self, n: int) -> bool:
        c = self.counters()
        return (
            sum(c.get(k, 0) for k in ("created", "deduplicated", "filtered", "dead_lettered")) >= n
        )


def _require() -> None:
    from tests.contract.google_backends import require_emulators

    require_emulators()
    if shutil.which("soffice") is None:
        if os.environ.get("CI"):
            pytest.fail("soffice is missing: apt-get install -y libreoffice-writer-nogui")
        pytest.skip("LibreOffice (soffice) is not installed")


@pytest.fixture(scope="module", params=BACKENDS)
def uploads(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Uploads]:
    _require()
    from google.cloud.pubsub_v1 import PublisherClient, SubscriberClient

    workdir = tmp_path_factory.mktemp("triggers")
    objects = workdir / "objects"
    env = backend_env(str(request.param), workdir) | {
        "LONGRUN_TASK_MODULES": TASK_MODULES,
        "LONGRUN_CONVERT_STORAGE": str(objects),
    }
    gcp = f"trg-{uuid.uuid4().hex[:10]}"
    topic = f"projects/{gcp}/topics/uploads"
    subscription = f"projects/{gcp}/subscriptions/uploads-docx"
    dead_topic = f"projects/{gcp}/topics/uploads-dead"
    dead_subscription = f"projects/{gcp}/subscriptions/uploads-dead"
    publisher, subscriber = PublisherClient(), SubscriberClient()
    for name in (topic, dead_topic):
        publisher.create_topic(name=name)
    subscriber.create_subscription(
        request={"name": subscription, "topic": topic, "ack_deadline_seconds": 10}
    )
    subscriber.create_subscription(request={"name": dead_subscription, "topic": dead_topic})
    triggers_file = workdir / "triggers.toml"
    triggers_file.write_text(TRIGGERS.format(subscription=subscription, dead_topic=dead_topic))
    stats = workdir / "trigger-stats.json"
    svc = Service(workdir, env)
    try:
        with svc.kept():
            svc.start_server()
            svc.start_worker("--concurrency", "2")
            svc._spawn(
                [
                    "-m",
                    "longrun_worker.triggers",
                    "--triggers-file",
                    str(triggers_file),
                    "--target",
                    svc.target,
                    "--stats-file",
                    str(stats),
                    "--pull-wait",
                    "1",
                    "--stats-interval",
                    "0",
                ],
                "trigger.log",
            )
            wait_for(stats.exists, 60, "the trigger process to start")
            yield Uploads(svc, objects, topic, dead_subscription, stats, publisher, subscriber)
    finally:
        subscriber.close()
        publisher.transport.close()


def _done(client: Client, name: str) -> bool:
    return bool(client.get(name).done)


def test_each_event_is_one_operation_once_and_every_pdf_is_written(uploads: Uploads) -> None:
    rng = random.Random(16)
    # 12 .docx uploads of 1-4 pages: each must give one operation and one PDF.
    pages = {f"in/report-{i:02d}.docx": 1 + i % 4 for i in range(12)}
    good = [
        uploads.upload(name, docx_bytes(n, title=name), generation=1000 + i)
        for i, (name, n) in enumerate(pages.items())
    ]
    # 5 of them notified a second time (Pub/Sub may deliver any message twice;
    # a second notification of one generation is the same event).
    duplicates = rng.sample(good, 5)
    # 3 that do not match the filter: a deletion, a non-.docx upload, a
    # metadata update.
    not_matching = [
        notification("uploads", "in/report-00.docx", 1000, event_type="OBJECT_DELETE"),
        uploads.upload("in/notes.txt", b"plain text", generation=77),
        notification("uploads", "in/report-01.docx", 1001, event_type="OBJECT_METADATA_UPDATE"),
    ]
    # 1 malformed: it matches, but its data is not the object resource.
    malformed_data, malformed_attrs = notification("uploads", "in/broken.docx", 5)
    malformed = (b"{not json" + malformed_data[:20], malformed_attrs)
    messages = good + duplicates + not_matching + [malformed]
    order = list(range(len(good))) + rng.sample(
        range(len(good), len(messages)), len(messages) - len(good)
    )
    for i in order:
        uploads.publish(*messages[i])
    assert len(messages) == 21

    wait_for(lambda: uploads.settled(len(messages)), 120, "every message to be settled")
    counters = uploads.counters()
    assert counters == {
        "received": 21,
        "created": 12,
        "deduplicated": 5,
        "filtered": 3,
        "dead_lettered": 1,
        "retried": 0,
    }, uploads.svc.logs()

    with Client(uploads.svc.target, project="docs") as client:
        ops = list(client.list(filter='labels.trigger = "docx-to-pdf"'))
        assert len(ops) == 12
        assert {op.name.rpartition("/")[0] for op in ops} == {"projects/docs/operations"}
        for name in [op.name for op in ops]:
            wait_for(functools.partial(_done, client, name), 240, f"{name} to finish")
        by_object: dict[str, jobs_pb2.JobMetadata] = {}
        for op in ops:
            done = client.get(op.name)
            meta = jobs_pb2.JobMetadata()
            done.metadata.Unpack(meta)
            assert meta.state == jobs_pb2.JobMetadata.SUCCEEDED, (done, uploads.svc.logs())
            assert meta.progress_percent == 100
            response = struct_pb2.Struct()
            done.response.Unpack(response)
            name = meta.labels["object"]
            by_object[name] = meta
            pdf_name = name.removesuffix(".docx") + ".pdf"
            assert dict(response)["object"] == pdf_name
            assert dict(response)["bucket"] == "converted"
            pdf = (uploads.objects / "converted" / pdf_name).read_bytes()
            assert pdf.startswith(b"%PDF")
            assert count_pages(pdf) == pages[name] == response["pages"]
        assert sorted(by_object) == sorted(pages)

        # A client follows the operation an upload started: a label filter.
        (found,) = client.list(filter='labels.object = "in/report-03.docx"')
        assert client.follow(found.name).result(timeout=30)["pages"] == pages["in/report-03.docx"]

    # The malformed one is in the dead-letter topic, with its reason.
    pulled = uploads.subscriber.pull(
        request={"subscription": uploads.dead_subscription, "max_messages": 10}, timeout=30
    )
    (dead,) = pulled.received_messages
    assert dead.message.attributes["objectId"] == "in/broken.docx"
    assert dead.message.attributes["longrunTrigger"] == "docx-to-pdf"
    assert dead.message.attributes["longrunReason"].startswith("data is not JSON")
    assert bytes(dead.message.data) == malformed[0]
    uploads.subscriber.acknowledge(
        request={"subscription": uploads.dead_subscription, "ack_ids": [dead.ack_id]}
    )


def test_a_corrupt_upload_ends_failed_with_a_reason_and_no_retry(uploads: Uploads) -> None:
    before = uploads.counters()
    uploads.publish(*uploads.upload("in/corrupt.docx", b"PK\x03\x04 not really", 9))
    with Client(uploads.svc.target, project="docs") as client:
        wait_for(
            lambda: any(client.list(filter='labels.object = "in/corrupt.docx"')),
            60,
            "the operation of the corrupt upload",
        )
        (op,) = client.list(filter='labels.object = "in/corrupt.docx"')
        wait_for(lambda: _done(client, op.name), 120, "the corrupt upload's operation to end")
        done = client.get(op.name)
    meta = jobs_pb2.JobMetadata()
    done.metadata.Unpack(meta)
    assert meta.state == jobs_pb2.JobMetadata.FAILED
    assert meta.attempt == 1  # not retried
    assert "not a .docx document" in done.error.message, done.error
    assert not (uploads.objects / "converted" / "in" / "corrupt.pdf").exists()
    assert uploads.counters()["created"] == before["created"] + 1


FOLDER_TRIGGERS = """
[[trigger]]
name = "folder-docx"
folder = "{folder}"
settle = 0.3
project = "local"
task = "docx_to_pdf"

[trigger.filter]
objectId = {{ suffix = ".docx" }}

[trigger.params]
bucket = "{{attributes.bucketId}}"
object = "{{data.name}}"
output_bucket = "converted"

[trigger.labels]
object = "{{attributes.objectId}}"
"""


def _start_trigger(svc: Service, triggers_file: Path, stats: Path) -> Any:
    proc = svc._spawn(
        [
            "-m",
            "longrun_worker.triggers",
            "--triggers-file",
            str(triggers_file),
            "--target",
            svc.target,
            "--stats-file",
            str(stats),
            "--pull-wait",
            "0.5",
            "--stats-interval",
            "0",
        ],
        f"trigger-{stats.stem}.log",
    )
    wait_for(stats.exists, 60, "the trigger process to start")
    return proc


def test_a_folder_trigger_converts_on_the_embedded_default_and_a_restart_dedupes(
    tmp_path: Path,
) -> None:
    """No Pub/Sub at all: the folder stand-in for a bucket notification."""
    if shutil.which("soffice") is None:
        if os.environ.get("CI"):
            pytest.fail("soffice is missing: apt-get install -y libreoffice-writer-nogui")
        pytest.skip("LibreOffice (soffice) is not installed")
    objects = tmp_path / "objects"
    (objects / "uploads" / "in").mkdir(parents=True)
    env = backend_env("embedded", tmp_path) | {
        "LONGRUN_TASK_MODULES": TASK_MODULES,
        "LONGRUN_CONVERT_STORAGE": str(objects),
    }
    env.pop("PUBSUB_EMULATOR_HOST", None)
    triggers_file = tmp_path / "triggers.toml"
    triggers_file.write_text(FOLDER_TRIGGERS.format(folder=objects / "uploads"))
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server()
        svc.start_worker()
        first_stats = tmp_path / "first.json"
        first = _start_trigger(svc, triggers_file, first_stats)
        (objects / "uploads" / "in" / "two.docx").write_bytes(docx_bytes(2))
        (objects / "uploads" / "in" / "three.docx").write_bytes(docx_bytes(3))
        (objects / "uploads" / "in" / "readme.txt").write_text("not a document")

        def totals(path: Path) -> dict[str, int]:
            return dict(json.loads(path.read_text())["totals"])

        wait_for(lambda: totals(first_stats)["received"] == 3, 60, "three files seen")
        assert totals(first_stats) | {"received": 0} == {
            "received": 0,
            "created": 2,
            "deduplicated": 0,
            "filtered": 1,
            "dead_lettered": 0,
            "retried": 0,
        }
        with Client(svc.target, project="local") as client:
            names = [op.name for op in client.list(filter='labels.trigger = "folder-docx"')]
            assert len(names) == 2
            for name in names:
                wait_for(functools.partial(_done, client, name), 120, f"{name} to finish")
            for stem, n in (("two", 2), ("three", 3)):
                pdf = (objects / "converted" / "in" / f"{stem}.pdf").read_bytes()
                assert pdf.startswith(b"%PDF") and count_pages(pdf) == n
            # A restarted trigger sees both files again: the server answers with
            # the operations made before.
            first.terminate()
            first.wait(timeout=30)
            second_stats = tmp_path / "second.json"
            _start_trigger(svc, triggers_file, second_stats)
            wait_for(lambda: totals(second_stats)["received"] == 3, 60, "the files seen again")
            assert totals(second_stats)["deduplicated"] == 2
            assert totals(second_stats)["created"] == 0
            assert len(list(client.list(filter='labels.trigger = "folder-docx"'))) == 2


AUTH_TRIGGERS = """
[[trigger]]
name = "allowed"
folder = "{folder}"
settle = 0
project = "docs"
task = "noop"
params = {{ object = "{{attributes.objectId}}" }}

[[trigger]]
name = "elsewhere"
folder = "{folder}"
settle = 0
project = "other"
task = "noop"
params = {{ object = "{{attributes.objectId}}" }}
"""


def test_a_trigger_creates_with_its_credentials_and_roles(tmp_path: Path) -> None:
    """The trigger is a client like any other: with API keys on, it creates
    where its key's role allows and an event it may not create is refused
    (PERMISSION_DENIED) and dead-lettered, not retried."""
    import subprocess
    import sys

    from tests.acceptance.harness import ROOT

    env = backend_env("embedded", tmp_path)
    minted = subprocess.run(
        [
            sys.executable,
            "-m",
            "longrun_server",
            "keys",
            "create",
            "--project",
            "docs",
            "--role",
            "editor",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    key = minted.stdout.strip()
    folder = tmp_path / "inbox"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    triggers_file = tmp_path / "triggers.toml"
    triggers_file.write_text(AUTH_TRIGGERS.format(folder=folder))
    svc = Service(tmp_path, env)
    with svc.kept():
        svc.start_server("--api-keys")
        stats = tmp_path / "stats.json"
        svc.env = env | {"LONGRUN_API_KEY": key}
        _start_trigger(svc, triggers_file, stats)

        def per_trigger() -> dict[str, dict[str, int]]:
            return dict(json.loads(stats.read_text())["triggers"])

        wait_for(
            lambda: (
                per_trigger()["allowed"]["created"] == 1
                and per_trigger()["elsewhere"]["dead_lettered"] == 1
            ),
            60,
            "one created, one refused",
        )
        assert per_trigger()["elsewhere"]["retried"] == 0
        log = (tmp_path / "trigger-stats.log").read_text()
        assert "PERMISSION_DENIED" in log
        with Client(svc.target, project="docs", metadata=[("x-goog-api-key", key)]) as client:
            (op,) = client.list()
            assert op.name.startswith("projects/docs/operations/")
