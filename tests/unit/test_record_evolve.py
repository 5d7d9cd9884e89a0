"""`evolve` is `dataclasses.replace` for operation records, only faster."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longrun_core.model import OperationRecord, State, evolve

BASE = OperationRecord(
    id="op1",
    task="noop",
    params=b"",
    state=State.QUEUED,
    create_time=datetime(2026, 1, 1, tzinfo=UTC),
    update_time=datetime(2026, 1, 1, tzinfo=UTC),
    labels={"a": "b"},
    max_attempts=3,
)

changes = st.fixed_dictionaries(
    {},
    optional={
        "state": st.sampled_from(State),
        "attempt": st.integers(0, 10),
        "progress_message": st.text(max_size=5),
        "cancel_requested": st.booleans(),
        "lease_owner": st.none() | st.text(max_size=5),
        "end_time": st.none()
        | st.integers(0, 10**6).map(lambda s: BASE.create_time + timedelta(seconds=s)),
        "labels": st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=3),
        "version": st.integers(0, 100),
    },
)


@given(changes)
def test_evolve_equals_replace(change: dict[str, object]) -> None:
    new = evolve(BASE, **change)
    assert new == dataclasses.replace(BASE, **change)  # type: ignore[arg-type]
    assert type(new) is OperationRecord
    assert BASE.version == 0 and BASE.attempt == 0  # the original is untouched


def test_an_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no field attemps"):
        evolve(BASE, attemps=2)


def test_the_new_record_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolve(BASE, attempt=1).attempt = 2  # type: ignore[misc]
