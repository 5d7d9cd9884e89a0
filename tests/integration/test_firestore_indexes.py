"""Every query the Firestore store runs is served by an index declared in
firestore.indexes.json: the emulator executes any query, but reports which
composite indexes its queries would need in production
(`/emulator/v1/projects/P:indexUsage`); they must all be declared."""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from longrun_core.filtering import parse_filter
from longrun_core.model import State
from longrun_core.store import ScanBudget
from tests.contract.google_backends import make_firestore_store, require_emulators
from tests.contract.records import BASE, make_record

pytestmark = pytest.mark.google

ROOT = Path(__file__).resolve().parents[2]

#: One filter per shape of pushed-down query (and some that push nothing).
FILTERS = [
    "",
    "done = true",
    "done = false AND metadata.attempt > 1",
    "metadata.state = FAILED",
    "metadata.state != RUNNING",
    'metadata.task = "noop"',
    'metadata.task = "noop" AND done = true',
    'labels.env = "test"',
    'labels.env = "test" AND metadata.state = QUEUED',
    'metadata.create_time >= "2026-01-01T00:00:00Z"',
    'metadata.create_time < "2027-01-01T00:00:00Z" AND done = false',
    'labels.env = "test" AND metadata.create_time > "2026-01-01T00:00:00Z"',
    'error.message = "x"',
]


def _fields(index: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """An index's fields, without a last `__name__` in the direction of the
    field before it (Firestore adds that one implicitly)."""
    fields = [(f["fieldPath"], f.get("order") or f.get("arrayConfig", "")) for f in index["fields"]]
    if len(fields) > 1 and fields[-1][0] == "__name__" and fields[-1][1] == fields[-2][1]:
        fields.pop()
    return tuple(fields)


def _index_usage(project: str) -> list[dict[str, Any]]:
    host = os.environ["FIRESTORE_EMULATOR_HOST"]
    url = (
        f"http://{host}/emulator/v1/projects/{project}:indexUsage"
        f"?database=projects/{project}/databases/(default)"
    )
    with urllib.request.urlopen(url, timeout=10) as response:
        reports: list[dict[str, Any]] = json.load(response).get("reports", [])
    return reports


def _declared() -> set[tuple[tuple[str, str], ...]]:
    data = json.loads((ROOT / "firestore.indexes.json").read_text())
    return {_fields(i) for i in data["indexes"] if i["collectionGroup"] == "operations"}


async def test_every_query_the_store_runs_has_a_declared_index() -> None:
    require_emulators()
    store = await make_firestore_store()
    try:
        for _ in range(3):
            await store.create(make_record())
        for _ in range(3):
            await store.create(make_record(project="acme"))
        # Every filter over every project, one project, and a set of projects.
        scopes: list[frozenset[str] | None] = [None, frozenset({"acme"}), frozenset({"acme", "b"})]
        for text in FILTERS:
            flt = parse_filter(text)
            for projects in scopes:
                page = await store.list(
                    page_size=1, after=None, flt=flt, budget=ScanBudget(2), projects=projects
                )
                if page.next_cursor is not None:
                    await store.list(
                        page_size=1, after=page.next_cursor, flt=flt, projects=projects
                    )
        await store.due_for_dispatch(BASE + timedelta(days=1), 10)
        waiting = await store.queued_in("acme", "default", limit=2)
        await store.queued_in("acme", "default", after=waiting[-1].id, limit=2)
        for state in (State.QUEUED, State.RUNNING):  # Queue.stats
            await store.count_in_queue("acme", "default", state, 100)
        await store.delete_expired(BASE + timedelta(days=400), 10)
        reports = await asyncio.to_thread(_index_usage, store.project)
    finally:
        await store.close()
    needed = {_fields(r["index"]) for r in reports}
    # The list queries with a pushed-down equality are among them, so the
    # report is what this test thinks it is.
    assert (("state", "ASCENDING"), ("create_time", "DESCENDING")) in needed
    assert (("project", "ASCENDING"), ("create_time", "DESCENDING")) in needed
    assert (("project", "ASCENDING"), ("state", "ASCENDING"), ("create_time", "DESCENDING")) in (
        needed
    )
    assert (("project", "ASCENDING"), ("queue", "ASCENDING"), ("state", "ASCENDING")) in needed
    missing = needed - _declared()
    assert not missing, f"firestore.indexes.json lacks {sorted(missing)}"
