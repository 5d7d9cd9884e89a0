"""The Cloud Storage side of the docx_to_pdf storage seam, against a fake
google-cloud-storage client (no Cloud Storage emulator exists): what it
asks for and how it classifies errors."""

from __future__ import annotations

from typing import Any

import pytest
from google.api_core import exceptions as gexc

from examples.convert.documents import _check, output_name
from examples.convert.storage import FolderStorage, GcsStorage, storage_from_env
from longrun_core.tasks import PermanentError, TransientError


class FakeBlob:
    def __init__(self, store: FakeClient, bucket: str, name: str, generation: int | None) -> None:
        self.store, self.key, self.generation = store, (bucket, name), generation
        self.size: int | None = None

    def reload(self) -> None:
        self.store.calls.append(("reload", *self.key, self.generation))
        if self.store.fail is not None:
            raise self.store.fail
        if self.key not in self.store.objects:
            raise gexc.NotFound("no such object")
        self.size = len(self.store.objects[self.key])

    def download_as_bytes(self) -> bytes:
        return self.store.objects[self.key]

    def upload_from_string(self, data: bytes, content_type: str) -> None:
        if self.store.fail is not None:
            raise self.store.fail
        self.store.calls.append(("upload", *self.key, content_type))
        self.store.objects[self.key] = data


class FakeBucket:
    def __init__(self, store: FakeClient, name: str) -> None:
        self.store, self.name = store, name

    def blob(self, name: str, generation: int | None = None) -> FakeBlob:
        return FakeBlob(self.store, self.name, name, generation)


class FakeClient:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail: Exception | None = None

    def bucket(self, name: str) -> FakeBucket:
        return FakeBucket(self, name)


def test_gcs_reads_the_generation_and_writes_with_a_content_type() -> None:
    client = FakeClient()
    client.objects[("uploads", "a.docx")] = b"doc"
    gcs = GcsStorage(client)
    assert gcs.read("uploads", "a.docx", 17, 100) == b"doc"
    assert client.calls == [("reload", "uploads", "a.docx", 17)]
    assert gcs.write("out", "a.pdf", b"%PDF", "application/pdf") == "gs://out/a.pdf"
    assert client.objects[("out", "a.pdf")] == b"%PDF"
    assert client.calls[-1] == ("upload", "out", "a.pdf", "application/pdf")


def test_gcs_errors_are_permanent_or_transient() -> None:
    client = FakeClient()
    gcs = GcsStorage(client)
    with pytest.raises(PermanentError, match="cannot read gs://uploads/missing"):
        gcs.read("uploads", "missing", None, 100)
    client.objects[("uploads", "big")] = b"x" * 10
    with pytest.raises(PermanentError, match="at most 5"):
        gcs.read("uploads", "big", None, 5)
    client.fail = gexc.ServiceUnavailable("try later")
    with pytest.raises(TransientError):
        gcs.read("uploads", "big", None, 100)
    with pytest.raises(TransientError):
        gcs.write("out", "x.pdf", b"", "application/pdf")
    client.fail = gexc.Forbidden("no")
    with pytest.raises(PermanentError):
        gcs.write("out", "x.pdf", b"", "application/pdf")


def test_storage_is_chosen_from_the_environment(tmp_path: Any) -> None:
    chosen = storage_from_env({"LONGRUN_CONVERT_STORAGE": str(tmp_path)})
    assert isinstance(chosen, FolderStorage) and chosen.root == tmp_path
    default = storage_from_env({})
    assert isinstance(default, FolderStorage) and str(default.root) == "longrun-objects"


def test_params_are_checked_before_an_operation_is_made() -> None:
    _check({"bucket": "b", "object": "a.docx", "generation": "12"})
    cases: list[tuple[dict[str, Any], str]] = [
        ({"object": "a.docx"}, "bucket is required"),
        ({"bucket": "b", "object": "a.docx", "generation": "x"}, "generation must be"),
        ({"bucket": "b", "object": "../a.docx"}, "'..' segment"),
        ({"bucket": "b", "object": "a.docx", "extra": 1}, "unknown params"),
    ]
    for bad, fragment in cases:
        with pytest.raises(ValueError, match=fragment):
            _check(bad)
    assert output_name({"object": "in/Report.DOCX"}) == "in/Report.pdf"
    assert output_name({"object": "in/a.docx", "output_object": "x/y.pdf"}) == "x/y.pdf"
