"""sqlite3 errors become domain errors in one place, and retryable domain
errors reach clients with a RetryInfo (gRPC) and Retry-After (HTTP)."""

from __future__ import annotations

import sqlite3

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2

from longrun_core.errors import (
    NotFound,
    StorageFull,
    StoreReplaced,
    StoreUnavailable,
    Unavailable,
)
from longrun_core.sqlite.db import storage_error
from longrun_server.rest_errors import error_body, error_headers, http_status
from longrun_server.status import to_status


def _error(
    code: int, name: str, cls: type[sqlite3.Error] = sqlite3.OperationalError
) -> sqlite3.Error:
    exc = cls("boom")
    exc.sqlite_errorcode = code  # type: ignore[attr-defined]
    exc.sqlite_errorname = name  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("code", "name", "reason"),
    [
        (sqlite3.SQLITE_BUSY, "SQLITE_BUSY", "STORE_BUSY"),
        (sqlite3.SQLITE_LOCKED, "SQLITE_LOCKED", "STORE_BUSY"),
        (sqlite3.SQLITE_READONLY, "SQLITE_READONLY", "STORE_READ_ONLY"),
        (sqlite3.SQLITE_READONLY | (4 << 8), "SQLITE_READONLY_DBMOVED", "STORE_READ_ONLY"),
        (sqlite3.SQLITE_IOERR | (3 << 8), "SQLITE_IOERR_WRITE", "STORE_IO_ERROR"),
        (sqlite3.SQLITE_CANTOPEN, "SQLITE_CANTOPEN", "STORE_UNAVAILABLE"),
        (sqlite3.SQLITE_CORRUPT, "SQLITE_CORRUPT", "STORE_CORRUPT"),
    ],
)
def test_outages_map_to_store_unavailable(code: int, name: str, reason: str) -> None:
    mapped = storage_error(_error(code, name))
    assert isinstance(mapped, StoreUnavailable)
    assert mapped.code is grpc.StatusCode.UNAVAILABLE
    assert (mapped.reason, mapped.metadata) == (reason, {"sqlite_error": name})


def test_a_full_disk_maps_to_storage_full() -> None:
    mapped = storage_error(_error(sqlite3.SQLITE_FULL, "SQLITE_FULL"))
    assert isinstance(mapped, StorageFull) and isinstance(mapped, Unavailable)
    assert mapped.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert mapped.reason == "STORAGE_FULL"


@pytest.mark.parametrize(
    "exc",
    [
        _error(sqlite3.SQLITE_CONSTRAINT, "SQLITE_CONSTRAINT", sqlite3.IntegrityError),
        _error(sqlite3.SQLITE_ERROR, "SQLITE_ERROR"),  # a bad statement: a bug
        sqlite3.ProgrammingError("closed"),  # no code at all
    ],
)
def test_bugs_are_not_mapped(exc: sqlite3.Error) -> None:
    assert storage_error(exc) is None


def _details(error: Unavailable | NotFound) -> dict[str, object]:
    out: dict[str, object] = {}
    for detail in to_status(error).details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            if detail.Is(cls.DESCRIPTOR):
                message = cls()
                detail.Unpack(message)
                out[cls.DESCRIPTOR.name] = message
    return out


def test_retryable_errors_carry_retry_info_and_retry_after() -> None:
    full = StorageFull("disk full")
    status = to_status(full)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    details = _details(full)
    info = details["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("STORAGE_FULL", "longrun.dev")
    retry = details["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta().total_seconds() == full.retry_delay == 5.0
    assert http_status(status.code) == 429
    assert error_headers(status) == {"Retry-After": "5"}
    body = error_body(status)["error"]
    assert body["status"] == "RESOURCE_EXHAUSTED" and len(body["details"]) == 2

    lost = to_status(StoreReplaced("gone", reason="STORE_FILE_DELETED"))
    assert (lost.code, http_status(lost.code)) == (code_pb2.UNAVAILABLE, 503)
    assert error_headers(lost) == {"Retry-After": "10"}


def test_errors_a_retry_cannot_fix_carry_no_retry_info() -> None:
    missing = NotFound("no such operation")
    assert "RetryInfo" not in _details(missing)
    assert error_headers(to_status(missing)) == {}
