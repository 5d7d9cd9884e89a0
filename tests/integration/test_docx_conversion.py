"""The docx_to_pdf task (examples/convert/documents.py) with the real
LibreOffice: page counts, private profiles in parallel, corrupt input,
the timeout, the folder storage."""

from __future__ import annotations

import os
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

import pytest

from examples.convert.documents import check_docx, count_pages, docx_to_pdf, soffice_pdf
from examples.convert.storage import FolderStorage
from longrun_core.tasks import PermanentError, TransientError
from tests.acceptance.harness import wait_for
from tests.support.docx_files import docx_bytes


@pytest.fixture(autouse=True)
def _soffice() -> None:
    if shutil.which("soffice") is None:
        if os.environ.get("CI"):
            pytest.fail("soffice is missing: apt-get install -y libreoffice-writer-nogui")
        pytest.skip("LibreOffice (soffice) is not installed")


@pytest.mark.parametrize("pages", [1, 4])
def test_a_docx_becomes_a_pdf_with_as_many_pages(pages: int) -> None:
    pdf = soffice_pdf(docx_bytes(pages), timeout=120)
    assert pdf.startswith(b"%PDF")
    assert count_pages(pdf) == pages


def test_parallel_conversions_do_not_share_a_profile() -> None:
    results: dict[int, bytes | BaseException] = {}

    def run(i: int) -> None:
        try:
            results[i] = soffice_pdf(docx_bytes(i + 1), timeout=120)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pages = {i: count_pages(r) if isinstance(r, bytes) else r for i, r in results.items()}
    assert pages == {0: 1, 1: 2, 2: 3}


def test_files_that_are_not_docx_packages_fail_permanently(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="not a zip package"):
        check_docx(b"this is not a document", 1 << 20)
    no_document = tmp_path / "x.docx"
    with zipfile.ZipFile(no_document, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(PermanentError, match=r"no word/document.xml"):
        check_docx(no_document.read_bytes(), 1 << 20)
    with pytest.raises(PermanentError, match="unpacks to"):
        check_docx(docx_bytes(2), 100)
    check_docx(docx_bytes(2), 1 << 20)  # a sound one passes


def test_a_conversion_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    fake = tmp_path / "soffice"
    fake.write_text(f"#!/bin/sh\nsleep 60 &\necho $! > {pid_file}\nwait\n")
    fake.chmod(0o755)
    with pytest.raises(TransientError, match=r"longer than 0\.5s"):
        soffice_pdf(docx_bytes(1), timeout=0.5, soffice=str(fake))
    child = int(pid_file.read_text())
    wait_for(lambda: not _running(child), 10, "the converter's child to be gone")


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan killed here may wait for its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class FakeContext:
    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.operation = "projects/p/operations/x"
        self.attempt = 1
        self.progress_seen: list[tuple[int, str]] = []

    def progress_threadsafe(self, percent: int, message: str = "") -> None:
        self.progress_seen.append((percent, message))

    @property
    def cancelled(self) -> bool:
        return False


def test_the_task_reads_converts_writes_and_names_the_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LONGRUN_CONVERT_STORAGE", str(tmp_path))
    (tmp_path / "uploads" / "in").mkdir(parents=True)
    (tmp_path / "uploads" / "in" / "report.docx").write_bytes(docx_bytes(3))
    ctx = FakeContext(
        {
            "bucket": "uploads",
            "object": "in/report.docx",
            "generation": "7",
            "output_bucket": "converted",
        }
    )
    result = docx_to_pdf(ctx)  # type: ignore[arg-type]
    written = tmp_path / "converted" / "in" / "report.pdf"
    assert result == {
        "bucket": "converted",
        "object": "in/report.pdf",
        "uri": written.resolve().as_uri(),
        "bytes": written.stat().st_size,
        "pages": 3,
    }
    assert written.read_bytes().startswith(b"%PDF")
    percents = [p for p, _ in ctx.progress_seen]
    assert percents == sorted(percents) and percents[-1] == 100


def test_a_corrupt_upload_fails_the_task_permanently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LONGRUN_CONVERT_STORAGE", str(tmp_path))
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "bad.docx").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PermanentError, match=r"not a \.docx document"):
        docx_to_pdf(FakeContext({"bucket": "uploads", "object": "bad.docx"}))  # type: ignore[arg-type]
    assert not (tmp_path / "uploads" / "bad.pdf").exists()


def test_folder_storage_keeps_objects_inside_their_bucket(tmp_path: Path) -> None:
    storage = FolderStorage(tmp_path)
    with pytest.raises(PermanentError, match=r"'\.\.' segment"):
        storage.read("b", "../../etc/passwd", None, 1 << 20)
    with pytest.raises(PermanentError, match="invalid bucket"):
        storage.write("..", "x", b"", "text/plain")
    with pytest.raises(PermanentError, match="no object b/missing"):
        storage.read("b", "missing", None, 1 << 20)
    uri = storage.write("b", "d/x.txt", b"hello", "text/plain")
    assert uri == (tmp_path / "b" / "d" / "x.txt").resolve().as_uri()
    assert storage.read("b", "d/x.txt", None, 1 << 20) == b"hello"
    with pytest.raises(PermanentError, match="at most 3"):
        storage.read("b", "d/x.txt", None, 3)
