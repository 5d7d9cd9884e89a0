"""The `docx_to_pdf` task of seed 002: a .docx in object storage becomes a
PDF beside it, converted by LibreOffice headless.

Load it in the server and every worker:

    LONGRUN_TASK_MODULES="longrun_worker.builtin_tasks examples.convert.documents"

Params: `bucket`, `object` (the .docx), optional `generation` (read that
generation), `output_bucket` (default: `bucket`), `output_object`
(default: the object's name with `.pdf` for `.docx`). The response names
the PDF: {"bucket", "object", "uri", "bytes", "pages"}.

Storage: examples/convert/storage.py (LONGRUN_CONVERT_STORAGE). Limits,
each an environment variable of the worker:
* LONGRUN_CONVERT_TIMEOUT (120): seconds one conversion may take; past
  it LibreOffice is killed (its whole process group) and the attempt is
  retried (TransientError, at most 2 attempts).
* LONGRUN_CONVERT_MAX_BYTES (20 MiB): the largest .docx read, and the
  largest total uncompressed size of its zip members.
* LONGRUN_SOFFICE (soffice): the LibreOffice program.

Every conversion has a private LibreOffice profile
(-env:UserInstallation in a temporary folder), so parallel conversions on
one machine never share (or lock) a profile. A file that is not a .docx
(not a zip, no word/document.xml, a bad CRC) fails at once with
PermanentError, and so does a document LibreOffice cannot convert: no
retries for what cannot get better.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from examples.convert.storage import check_object_name, storage_from_env
from longrun_core.tasks import PermanentError, RetryPolicy, TaskContext, TaskSet, TransientError

tasks = TaskSet()

TIMEOUT_VAR = "LONGRUN_CONVERT_TIMEOUT"
MAX_BYTES_VAR = "LONGRUN_CONVERT_MAX_BYTES"
SOFFICE_VAR = "LONGRUN_SOFFICE"
DEFAULT_TIMEOUT = 120.0
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
MAX_TIMEOUT = 3600.0
_PARAMS = {"bucket", "object", "generation", "output_bucket", "output_object"}
#: A page object of a PDF (not the /Pages tree nodes).
_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def conversion_timeout(env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(TIMEOUT_VAR) or str(DEFAULT_TIMEOUT)
    value = float(raw)
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(f"{TIMEOUT_VAR} must be in (0, {MAX_TIMEOUT:g}] seconds")
    return value


def max_bytes(env: Mapping[str, str] | None = None) -> int:
    value = int((os.environ if env is None else env).get(MAX_BYTES_VAR) or DEFAULT_MAX_BYTES)
    if value < 1:
        raise ValueError(f"{MAX_BYTES_VAR} must be a positive number of bytes")
    return value


def _check(params: Mapping[str, Any]) -> None:
    unknown = set(params) - _PARAMS
    if unknown:
        raise ValueError(f"unknown params {sorted(unknown)}; docx_to_pdf takes {sorted(_PARAMS)}")
    for key in ("bucket", "object"):
        if not isinstance(params.get(key), str) or not params[key]:
            raise ValueError(f"{key} is required (a string)")
    for key in ("output_bucket", "output_object"):
        if key in params and (not isinstance(params[key], str) or not params[key]):
            raise ValueError(f"{key} must be a non-empty string")
    generation = params.get("generation")
    if generation is not None and not str(generation).isdigit():
        raise ValueError("generation must be a number (as Cloud Storage sends it, a string)")
    try:
        check_object_name(params["object"])
        check_object_name(output_name(params))
    except PermanentError as exc:
        raise ValueError(str(exc)) from exc


def output_name(params: Mapping[str, Any]) -> str:
    if params.get("output_object"):
        return str(params["output_object"])
    name = str(params["object"])
    stem = name[: -len(".docx")] if name.lower().endswith(".docx") else name
    return f"{stem}.pdf"


def check_docx(data: bytes, limit: int) -> None:
    """PermanentError unless `data` is a sound .docx package (a zip holding
    [Content_Types].xml and word/document.xml, every CRC right, within
    `limit` bytes uncompressed)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = set(zf.namelist())
            missing = {"[Content_Types].xml", "word/document.xml"} - names
            if missing:
                raise PermanentError(
                    f"not a .docx document: no {sorted(missing)[0]} in the package"
                )
            total = sum(info.file_size for info in zf.infolist())
            if total > limit:
                raise PermanentError(f"the .docx unpacks to {total} bytes; at most {limit}")
            bad = zf.testzip()
            if bad is not None:
                raise PermanentError(f"the .docx is corrupt: bad CRC in {bad}")
    except zipfile.BadZipFile as exc:
        raise PermanentError(f"not a .docx document (not a zip package): {exc}") from exc


def count_pages(pdf: bytes) -> int:
    return len(_PAGE.findall(pdf))


def soffice_pdf(
    docx: bytes, timeout: float, ctx: TaskContext | None = None, soffice: str | None = None
) -> bytes:
    """Convert with LibreOffice headless in a private profile and folder;
    the PDF's bytes. Kills LibreOffice's process group at `timeout` or when
    `ctx` is cancelled."""
    program = soffice or os.environ.get(SOFFICE_VAR) or "soffice"
    with tempfile.TemporaryDirectory(prefix="longrun-soffice-") as tmp:
        work = Path(tmp)
        source = work / "document.docx"
        source.write_bytes(docx)
        args = [
            program,
            f"-env:UserInstallation={(work / 'profile').as_uri()}",
            "--headless",
            "--norestore",
            "--nologo",
            "--nolockcheck",
            "--nodefault",
            "--convert-to",
            "pdf:writer_pdf_Export",
            "--outdir",
            str(work / "out"),
            str(source),
        ]
        try:
            proc = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "HOME": str(work)},
            )
        except OSError as exc:
            raise PermanentError(f"cannot run LibreOffice ({program}): {exc.strerror}") from exc
        output = _wait(proc, timeout, ctx)
        pdf = work / "out" / "document.pdf"
        if proc.returncode != 0 or not pdf.exists():
            text = output.decode(errors="replace").strip()[-500:]
            raise PermanentError(
                f"LibreOffice could not convert the document (exit {proc.returncode}): {text}"
            )
        data = pdf.read_bytes()
    if not data.startswith(b"%PDF"):
        raise PermanentError("LibreOffice wrote something that is not a PDF")
    return data


def _wait(proc: subprocess.Popen[bytes], timeout: float, ctx: TaskContext | None) -> bytes:
    deadline = timeout
    waited = 0.0
    step = 0.25
    while True:
        try:
            out, _ = proc.communicate(timeout=min(step, max(deadline - waited, 0.01)))
            return out or b""
        except subprocess.TimeoutExpired:
            waited += step
        if ctx is not None and ctx.cancelled:
            _kill(proc)
            raise PermanentError("cancelled while converting")
        if waited >= deadline:
            _kill(proc)
            raise TransientError(f"LibreOffice took longer than {timeout:g}s; stopped")


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


@tasks.task(
    "docx_to_pdf",
    validate=_check,
    retry=RetryPolicy(
        max_attempts=2, min_backoff=1.0, max_backoff=10.0, retry_on=(TransientError,)
    ),
    isolation="process",
    timeout=MAX_TIMEOUT + 60,
)
def docx_to_pdf(ctx: TaskContext) -> dict[str, Any]:
    """Read the .docx, convert it, write the PDF; progress at each step."""
    params = ctx.params
    bucket, name = str(params["bucket"]), str(params["object"])
    generation = int(params["generation"]) if params.get("generation") is not None else None
    out_bucket = str(params.get("output_bucket") or bucket)
    out_name = output_name(params)
    storage = storage_from_env()
    limit = max_bytes()
    ctx.progress_threadsafe(5, f"reading {bucket}/{name}")
    docx = storage.read(bucket, name, generation, limit)
    check_docx(docx, limit)
    ctx.progress_threadsafe(20, f"converting {len(docx)} bytes with LibreOffice")
    pdf = soffice_pdf(docx, conversion_timeout(), ctx)
    pages = count_pages(pdf)
    ctx.progress_threadsafe(80, f"writing {out_bucket}/{out_name} ({pages} pages)")
    uri = storage.write(out_bucket, out_name, pdf, "application/pdf")
    ctx.progress_threadsafe(100, f"wrote {uri}")
    return {"bucket": out_bucket, "object": out_name, "uri": uri, "bytes": len(pdf), "pages": pages}
