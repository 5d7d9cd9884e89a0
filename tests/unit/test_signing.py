"""Signed task messages: keys, signatures, what each change to a message does
to its verification, and the task guard."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from longrun_core.model import OperationRecord, State
from longrun_core.queue import TaskMessage
from longrun_core.settings import BackendSettings
from longrun_core.signing import (
    BAD_SIGNATURE,
    KEY_ID_ATTR,
    SIGNATURE_ATTR,
    TASK_MISMATCH,
    UNKNOWN_KEY,
    UNSIGNED,
    MessageRejected,
    Rejections,
    SigningKey,
    SigningKeys,
    guard_task,
    message_fields,
)

SECRET_A = "a" * 32
SECRET_B = "b" * 32
RING = SigningKeys.parse(f"k1:{SECRET_A},k2:{SECRET_B}")
MESSAGE = TaskMessage("operations/abc", "sleep", 0)


def signed() -> tuple[bytes, dict[str, str]]:
    data, attributes = message_fields(MESSAGE)
    return data, RING.signed(data, attributes)


def rejection(keys: SigningKeys, data: bytes, attributes: dict[str, str]) -> MessageRejected:
    with pytest.raises(MessageRejected) as caught:
        keys.verify(data, attributes)
    return caught.value


def test_a_signed_message_verifies_with_the_first_key() -> None:
    data, attributes = signed()
    assert attributes[KEY_ID_ATTR] == "k1"
    assert len(attributes[SIGNATURE_ATTR]) == 64
    assert {k: attributes[k] for k in ("operation", "task", "attempt")} == {
        "operation": "operations/abc",
        "task": "sleep",
        "attempt": "0",
    }
    RING.verify(data, attributes)


def test_every_key_of_the_ring_verifies_so_keys_rotate() -> None:
    old = SigningKeys.parse(f"k2:{SECRET_B}")
    data, attributes = message_fields(MESSAGE)
    by_old = old.signed(data, attributes)
    RING.verify(data, by_old)  # the new ring still holds k2
    assert rejection(SigningKeys.parse(f"k1:{SECRET_A}"), data, by_old).kind == UNKNOWN_KEY


@pytest.mark.parametrize(
    "change",
    [
        {"task": "noop"},
        {"operation": "operations/other"},
        {"attempt": "7"},
        {"extra": "steering"},
    ],
    ids=["task", "operation", "attempt", "added-attribute"],
)
def test_a_changed_attribute_breaks_the_signature(change: dict[str, str]) -> None:
    data, attributes = signed()
    found = rejection(RING, data, attributes | change)
    assert found.kind == BAD_SIGNATURE
    assert found.reason.startswith("rejected (bad_signature): ")


def test_changed_data_or_a_dropped_attribute_breaks_the_signature() -> None:
    data, attributes = signed()
    assert rejection(RING, b"operations/other", attributes).kind == BAD_SIGNATURE
    del attributes["attempt"]
    assert rejection(RING, data, attributes).kind == BAD_SIGNATURE


def test_pubsub_reserved_attributes_are_not_signed() -> None:
    data, attributes = signed()
    RING.verify(data, attributes | {"googclient_trace": "x"})


def test_a_signature_from_another_secret_under_a_known_key_id_is_refused() -> None:
    data, attributes = message_fields(MESSAGE)
    forged = SigningKeys.parse(f"k1:{'z' * 32}").signed(data, attributes)
    assert rejection(RING, data, forged).kind == BAD_SIGNATURE


def test_a_signature_moved_to_another_key_id_is_refused() -> None:
    data, attributes = signed()
    assert rejection(RING, data, attributes | {KEY_ID_ATTR: "k2"}).kind == BAD_SIGNATURE


@pytest.mark.parametrize(
    "attributes",
    [
        {"operation": "operations/abc", "task": "sleep", "attempt": "0"},
        {"operation": "operations/abc", "task": "sleep", "attempt": "0", SIGNATURE_ATTR: "00"},
        {"operation": "operations/abc", "task": "sleep", "attempt": "0", KEY_ID_ATTR: "k1"},
    ],
    ids=["none", "no-key-id", "no-signature"],
)
def test_an_unsigned_message_is_refused(attributes: dict[str, str]) -> None:
    assert rejection(RING, b"operations/abc", attributes).kind == UNSIGNED


def test_secrets_never_show_in_a_repr() -> None:
    assert SECRET_A not in repr(RING)
    assert SECRET_A not in repr(RING.keys[0])
    assert repr(RING) == "SigningKeys(kids=('k1', 'k2'))"
    settings = BackendSettings(message_signing_keys=RING)
    assert SECRET_A not in repr(settings)
    assert "k1" in repr(settings)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not `kid:secret`"),
        ("k1", "not `kid:secret`"),
        (f":{SECRET_A}", "not `kid:secret`"),
        ("k1:short", "at least 16 bytes"),
        (f"k1:{SECRET_A},k1:{SECRET_B}", "repeat"),
        (f"bad kid:{SECRET_A}", "letters, digits"),
    ],
    ids=["empty", "no-colon", "no-kid", "short", "repeated", "bad-kid"],
)
def test_a_malformed_key_ring_says_what_is_wrong_without_the_secret(
    text: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        SigningKeys.parse(text)
    assert SECRET_A not in str(caught.value)


def test_a_secret_may_hold_a_colon() -> None:
    ring = SigningKeys.parse(f" k1 : {SECRET_A}:x ")
    assert ring.keys[0] == SigningKey("k1", f" {SECRET_A}:x".encode())


def test_generated_keys_differ_and_parse_back() -> None:
    ring1, text1 = SigningKeys.generate()
    _, text2 = SigningKeys.generate()
    assert text1 != text2
    assert SigningKeys.parse(text1) == ring1
    assert ring1.kids == ("local",)


def test_settings_read_the_keys_from_the_environment() -> None:
    env = {"LONGRUN_MESSAGE_SIGNING_KEYS": f"k1:{SECRET_A},k2:{SECRET_B}"}
    assert BackendSettings.from_env(env).message_signing_keys == RING
    assert BackendSettings.from_env({}).message_signing_keys is None


# ---- the task guard ----


def _record(task: str) -> OperationRecord:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return OperationRecord(
        id="abc", task=task, params=b"", state=State.QUEUED, create_time=now, update_time=now
    )


def test_guard_task_claims_only_for_the_records_task() -> None:
    claimed: list[str] = []

    def claim(rec: OperationRecord) -> OperationRecord:
        claimed.append(rec.task)
        return rec

    assert guard_task(claim, "sleep")(_record("sleep")) is not None
    with pytest.raises(MessageRejected) as caught:
        guard_task(claim, "noop")(_record("sleep"))
    assert caught.value.kind == TASK_MISMATCH
    assert "'noop'" in caught.value.detail and "'sleep'" in caught.value.detail
    assert claimed == ["sleep"]  # the mismatch never reached the claim


def test_rejections_count_by_kind() -> None:
    counts = Rejections()
    counts.record(MessageRejected(UNSIGNED, "x"), message_id="1", operation="operations/a")
    counts.record(MessageRejected(UNSIGNED, "x"))
    counts.record(MessageRejected(TASK_MISMATCH, "y"))
    assert (counts.count(UNSIGNED), counts.count(TASK_MISMATCH), counts.count()) == (2, 1, 3)
    assert counts.count(BAD_SIGNATURE) == 0
    assert counts.summary() == "unsigned=2 task_mismatch=1"
