"""Triggers: the TOML file, the filter, the mapping, event identity and the
request id, and what the runner does with each decision (fakes for Pub/Sub
and CreateJob; the real ones are in tests/acceptance/test_triggers.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from longrun_core.validation import check_request_id
from longrun_worker.triggers.config import TriggerConfigError, parse_triggers
from longrun_worker.triggers.events import (
    Create,
    EventMessage,
    Filtered,
    Malformed,
    decide,
    request_id_for,
)
from longrun_worker.triggers.runner import (
    CreateRefused,
    CreateUnavailable,
    RunnerSettings,
    StatsWriter,
    TriggerRunner,
)

DOCX = """
[[trigger]]
name = "docx-to-pdf"
subscription = "projects/gcp/subscriptions/uploads"
project = "docs"
task = "docx_to_pdf"
dead_letter_topic = "projects/gcp/topics/dead"

[trigger.filter]
eventType = "OBJECT_FINALIZE"
objectId = { suffix = ".docx" }

[trigger.params]
bucket = "{attributes.bucketId}"
object = "{data.name}"
size = "{data.size}"
meta = { gen = "{attributes.objectGeneration}", note = "gen {attributes.objectGeneration}" }
output_bucket = "converted"

[trigger.labels]
object = "{attributes.objectId}"
"""


def notification(
    obj: str = "in/a.docx",
    generation: str = "17",
    event: str = "OBJECT_FINALIZE",
    message_id: str = "m1",
    data: bytes | None = None,
) -> EventMessage:
    resource = {
        "kind": "storage#object",
        "bucket": "uploads",
        "name": obj,
        "generation": generation,
        "size": "1234",
    }
    return EventMessage(
        message_id=message_id,
        data=json.dumps(resource).encode() if data is None else data,
        attributes={
            "eventType": event,
            "bucketId": "uploads",
            "objectId": obj,
            "objectGeneration": generation,
            "payloadFormat": "JSON_API_V1",
            "notificationConfig": "projects/_/buckets/uploads/notificationConfigs/1",
        },
    )


def test_config_parses_filter_mapping_and_adds_the_trigger_label() -> None:
    (t,) = parse_triggers(DOCX)
    assert t.parent == "projects/docs"
    assert [(m.name, m.equals, m.suffix) for m in t.filter] == [
        ("eventType", "OBJECT_FINALIZE", None),
        ("objectId", None, ".docx"),
    ]
    assert t.labels == {"trigger": "docx-to-pdf", "object": "{attributes.objectId}"}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "at least one"),
        ('[[trigger]]\nname="Bad Name"', "name must be"),
        ('[[trigger]]\nname="a"\nsubscription="uploads"\ntask="t"', "subscription must be"),
        ('[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"', "task must"),
        (
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
            'identity="x"',
            "identity must be",
        ),
        (
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
            'filter={k={contains="x"}}',
            "filter.k must be",
        ),
        (
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
            "params={when=1979-05-27}",
            "params.when",
        ),
        (
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
            'project="Not A Project"',
            "project",
        ),
        (
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"',
            "unique",
        ),
        (
            '[[trigger]]\nname="a"\nsubscription="projects/p/subscriptions/s"\ntask="t"\nx=1',
            "unknown keys",
        ),
    ],
)
def test_config_errors_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(TriggerConfigError, match=fragment):
        parse_triggers(text)


def test_a_storage_notification_maps_to_params_labels_and_a_stable_request_id() -> None:
    (t,) = parse_triggers(DOCX)
    decision = decide(t, notification())
    assert isinstance(decision, Create)
    assert decision.identity == "gcs:uploads/in/a.docx#17"
    assert decision.parent == "projects/docs"
    assert decision.task == "docx_to_pdf"
    assert decision.params == {
        "bucket": "uploads",
        "object": "in/a.docx",
        "size": "1234",
        "meta": {"gen": "17", "note": "gen 17"},
        "output_bucket": "converted",
    }
    assert decision.labels == {"trigger": "docx-to-pdf", "object": "in/a.docx"}
    assert check_request_id(decision.request_id) == decision.request_id
    # The same upload notified again (another message id) is the same event...
    again = decide(t, notification(message_id="m2"))
    assert isinstance(again, Create) and again.request_id == decision.request_id
    # ...a new generation of the object is not.
    newer = decide(t, notification(generation="18"))
    assert isinstance(newer, Create) and newer.request_id != decision.request_id


def test_request_ids_differ_per_trigger_and_identity_and_are_uuid4() -> None:
    ids = {request_id_for(t, i) for t in ("a", "b") for i in ("x", "y")}
    assert len(ids) == 4
    assert all(uuid.UUID(i).version == 4 for i in ids)


def test_message_identity_uses_the_message_id() -> None:
    (t,) = parse_triggers(
        '[[trigger]]\nname="m"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
        'identity="message"\nparams={who="{data.who}", id="{message.id}"}'
    )
    msg = EventMessage(message_id="42", data=b'{"who": "ada"}')
    d = decide(t, msg)
    assert isinstance(d, Create)
    assert d.identity == "pubsub:projects/p/subscriptions/s/42"
    assert d.params == {"who": "ada", "id": "42"}
    other = decide(t, EventMessage(message_id="43", data=b'{"who": "ada"}'))
    assert isinstance(other, Create) and other.request_id != d.request_id


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (notification(event="OBJECT_DELETE"), "eventType is not 'OBJECT_FINALIZE'"),
        (notification(obj="in/a.pdf"), "objectId does not end with '.docx'"),
        (EventMessage("m", b"{}", {"objectId": "x.docx"}), "eventType is missing"),
    ],
)
def test_non_matching_messages_are_filtered(message: EventMessage, reason: str) -> None:
    (t,) = parse_triggers(DOCX)
    assert decide(t, message) == Filtered(reason)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (notification(data=b"{not json"), "data is not JSON"),
        (notification(data=b'{"bucket": "uploads"}'), "data.name is missing"),
        (notification(generation="x1"), "objectGeneration 'x1' is not a number"),
    ],
)
def test_matching_messages_without_what_the_mapping_needs_are_malformed(
    message: EventMessage, fragment: str
) -> None:
    (t,) = parse_triggers(DOCX)
    d = decide(t, message)
    assert isinstance(d, Malformed)
    assert fragment in d.reason


def test_storage_identity_requires_the_storage_attributes() -> None:
    (t,) = parse_triggers(
        '[[trigger]]\nname="s"\nsubscription="projects/p/subscriptions/s"\ntask="t"\n'
        'identity="storage"'
    )
    d = decide(t, EventMessage("m", b"{}", {"bucketId": "b", "objectId": "o"}))
    assert isinstance(d, Malformed)
    assert "objectGeneration" in d.reason


class FakeSubscription:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.delayed: list[tuple[str, int]] = []
        self.dead: list[tuple[str, str]] = []

    async def pull(self, max_messages: int, wait: float) -> list[tuple[str, EventMessage]]:
        return []

    async def ack(self, ack_ids: Sequence[str]) -> None:
        self.acked.extend(ack_ids)

    async def delay(self, ack_ids: Sequence[str], seconds: int) -> None:
        self.delayed.extend((a, seconds) for a in ack_ids)

    async def dead_letter(self, message: EventMessage, reason: str) -> None:
        self.dead.append((message.message_id, reason))


class FakeJobs:
    """A server with per-request-id deduplication; objects named in `refuse`
    are refused, those in `down` unavailable."""

    def __init__(self) -> None:
        self.ops: dict[str, str] = {}
        self.refuse: set[str] = set()
        self.down: set[str] = set()

    async def create(self, request: Create) -> tuple[str, bool]:
        obj = request.params["object"]
        if obj in self.refuse:
            raise CreateRefused("CreateJob: INVALID_ARGUMENT: bad params")
        if obj in self.down:
            raise CreateUnavailable("CreateJob: UNAVAILABLE: down")
        if request.request_id in self.ops:
            return self.ops[request.request_id], True
        self.ops[request.request_id] = f"projects/docs/operations/{len(self.ops)}"
        return self.ops[request.request_id], False


async def test_runner_settles_each_decision_and_counts_it(tmp_path: Path) -> None:
    (t,) = parse_triggers(DOCX)
    sub, jobs = FakeSubscription(), FakeJobs()
    jobs.refuse.add("in/refused.docx")
    jobs.down.add("in/later.docx")
    runner = TriggerRunner(t, sub, jobs, RunnerSettings(retry_delay=7))
    stats = StatsWriter([runner], tmp_path / "stats.json", interval=0)
    runner._on_change = stats.changed
    batch = [
        ("a1", notification("in/a.docx", message_id="1")),
        ("a2", notification("in/a.docx", message_id="2")),  # the same upload again
        ("b", notification("in/b.docx", message_id="3")),
        ("f", notification("in/b.txt", message_id="4")),
        ("m", notification("in/c.docx", message_id="5", data=b"\xff")),
        ("r", notification("in/refused.docx", message_id="6")),
        ("l", notification("in/later.docx", message_id="7")),
    ]
    await runner.handle_batch(batch)
    assert len(jobs.ops) == 2
    assert sorted(sub.acked) == ["a1", "a2", "b", "f", "m", "r"]
    assert sub.delayed == [("l", 7)]
    assert [m for m, _ in sub.dead] == ["5", "6"]
    assert "data is not JSON" in sub.dead[0][1]
    assert sub.dead[1][1] == "CreateJob: INVALID_ARGUMENT: bad params"
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written["triggers"]["docx-to-pdf"] == {
        "received": 7,
        "created": 2,
        "deduplicated": 1,
        "filtered": 1,
        "dead_lettered": 2,
        "retried": 1,
    }
    assert written["totals"]["received"] == 7
    # Redelivered once the server is back: one operation, counted created.
    jobs.down.clear()
    await runner.handle_batch([("l2", notification("in/later.docx", message_id="7"))])
    assert len(jobs.ops) == 3
    assert runner.counters.created == 3


def test_the_runner_reads_the_key_the_server_sets() -> None:
    from longrun_server.jobs_service import REPLAYED_METADATA_KEY as server_key
    from longrun_worker.triggers.runner import REPLAYED_METADATA_KEY as trigger_key

    assert trigger_key == server_key


def test_the_command_refuses_an_unusable_triggers_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from longrun_worker.triggers.cli import main

    bad = tmp_path / "t.toml"
    bad.write_text('[[trigger]]\nname = "a"\nsubscription = "nope"\ntask = "t"\n')
    result = CliRunner().invoke(main, ["--triggers-file", str(bad)])
    assert result.exit_code == 2
    assert "subscription must be projects/PROJECT/subscriptions/NAME" in result.output
    missing = CliRunner().invoke(main, ["--triggers-file", str(tmp_path / "none.toml")])
    assert missing.exit_code == 2
    assert "cannot read" in missing.output


async def test_a_long_reason_is_cut_to_what_pubsub_accepts() -> None:
    from longrun_worker.triggers.runner import PubSubSubscription

    class Publisher:
        def __init__(self) -> None:
            self.sent: list[dict[str, str]] = []

        def publish(self, topic: str, data: bytes, **attributes: str) -> Any:
            import concurrent.futures

            self.sent.append(attributes)
            done: concurrent.futures.Future[str] = concurrent.futures.Future()
            done.set_result("1")
            return done

    (t,) = parse_triggers(DOCX)
    publisher = Publisher()
    await PubSubSubscription(t, None, publisher).dead_letter(notification(), "é" * 1000)
    (sent,) = publisher.sent
    assert len(sent["longrunReason"].encode()) <= 1024
    assert sent["longrunTrigger"] == "docx-to-pdf" and sent["longrunMessageId"] == "m1"
    assert sent["objectId"] == "in/a.docx"
