"""The folder stand-in for a bucket notification (triggers/folder.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from longrun_worker.triggers.config import TriggerConfigError, parse_triggers
from longrun_worker.triggers.events import Create, decide
from longrun_worker.triggers.folder import FolderSubscription


def _write(path: Path, data: bytes, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))


async def test_settled_files_become_storage_notifications_once(tmp_path: Path) -> None:
    bucket = tmp_path / "uploads"
    _write(bucket / "in" / "a.docx", b"doc-a", 1_700_000_000_000_000_000)
    _write(bucket / ".a.docx.123.tmp", b"partial", 1_700_000_000_000_000_000)
    sub = FolderSubscription("t", bucket, settle=0)
    # First sight only records the file; an unchanged second sight hands it out.
    assert await sub.pull(10, 0) == []
    ((ack_id, message),) = await sub.pull(10, 0)
    assert message.attributes == {
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": "uploads",
        "objectId": "in/a.docx",
        "objectGeneration": "1700000000000000000",
        "eventTime": "2023-11-14T22:13:20Z",
    }
    resource = json.loads(message.data)
    assert (resource["name"], resource["bucket"], resource["size"]) == ("in/a.docx", "uploads", "5")
    assert await sub.pull(10, 0) == []  # handed out, not settled yet
    await sub.ack([ack_id])
    assert await sub.pull(10, 0) == []  # done: not again
    # A rewrite is a new generation: a new event.
    _write(bucket / "in" / "a.docx", b"doc-a v2", 1_700_000_001_000_000_000)
    await sub.pull(10, 0)
    ((_, again),) = await sub.pull(10, 0)
    assert again.attributes["objectGeneration"] == "1700000001000000000"


async def test_a_file_still_changing_waits_and_a_delayed_one_comes_back(tmp_path: Path) -> None:
    bucket = tmp_path / "b"
    sub = FolderSubscription("t", bucket, settle=0)
    _write(bucket / "x.docx", b"1", 1)
    await sub.pull(10, 0)
    _write(bucket / "x.docx", b"12", 2)  # changed since: starts over
    assert await sub.pull(10, 0) == []
    ((ack_id, _),) = await sub.pull(10, 0)
    await sub.delay([ack_id], 0)
    ((back, _),) = await sub.pull(10, 0)
    assert back == ack_id


def test_a_folder_trigger_maps_like_a_bucket(tmp_path: Path) -> None:
    (t,) = parse_triggers(
        f'[[trigger]]\nname="f"\nfolder="{tmp_path}"\ntask="docx_to_pdf"\n'
        'params={bucket="{attributes.bucketId}", object="{data.name}"}'
    )
    assert t.source == f"folder:{tmp_path}"
    sub = FolderSubscription("f", tmp_path)
    d = decide(t, sub._event("a.docx", 3, 42))
    assert isinstance(d, Create)
    assert d.identity == f"gcs:{tmp_path.name}/a.docx#42"
    assert d.params == {"bucket": tmp_path.name, "object": "a.docx"}


@pytest.mark.parametrize(
    "source",
    ['subscription="projects/p/subscriptions/s"\nfolder="x"', ""],
)
def test_a_trigger_has_one_source(source: str) -> None:
    with pytest.raises(TriggerConfigError, match="a subscription or a folder"):
        parse_triggers(f'[[trigger]]\nname="a"\ntask="t"\n{source}')
