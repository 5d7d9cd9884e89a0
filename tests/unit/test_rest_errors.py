"""google.rpc status -> HTTP status and the AIP-193 JSON error body."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from longrun_core.errors import DOMAIN, NotFound
from longrun_server.rest_errors import (
    HTTP_STATUS,
    detail_json,
    error_body,
    http_status,
    make_status,
    status_from_rpc_error,
)
from longrun_server.status import to_status


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (0, 200),
        (1, 499),
        (2, 500),
        (3, 400),
        (4, 504),
        (5, 404),
        (6, 409),
        (7, 403),
        (8, 429),
        (9, 400),
        (10, 409),
        (11, 400),
        (12, 501),
        (13, 500),
        (14, 503),
        (15, 500),
        (16, 401),
    ],
)
def test_code_to_http(code: int, http: int) -> None:
    assert http_status(code) == http


def test_every_canonical_code_is_mapped_and_unknown_codes_are_500() -> None:
    assert set(HTTP_STATUS) == set(code_pb2.Code.values())
    assert http_status(99) == 500


def test_error_body_has_the_aip193_form() -> None:
    status = to_status(NotFound("operation 'operations/x' not found", metadata={"name": "x"}))
    assert error_body(status) == {
        "error": {
            "code": 404,
            "status": "NOT_FOUND",
            "message": "operation 'operations/x' not found",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "OPERATION_NOT_FOUND",
                    "domain": DOMAIN,
                    "metadata": {"name": "x"},
                }
            ],
        }
    }


def test_the_http_code_can_be_overridden_for_405() -> None:
    status = make_status(code_pb2.UNIMPLEMENTED, "use POST", "METHOD_NOT_ALLOWED")
    body = error_body(status, http=405)["error"]
    assert (body["code"], body["status"]) == (405, "UNIMPLEMENTED")
    assert body["details"][0]["reason"] == "METHOD_NOT_ALLOWED"


def test_a_detail_of_an_unknown_type_is_kept_base64() -> None:
    detail = any_pb2.Any(type_url="type.googleapis.com/no.such.Type", value=b"\x01\x02")
    shown = detail_json(detail)
    assert shown.pop("@unprintable").startswith("TypeError: ")  # says why
    assert shown == {"@type": "type.googleapis.com/no.such.Type", "value": "AQI="}


class FakeRpcError(grpc.RpcError):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailers: tuple[tuple[str, Any], ...] = ()
    ) -> None:
        self._code, self._details, self._trailers = code, details, trailers

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailers


def _rich(status: status_pb2.Status) -> tuple[tuple[str, Any], ...]:
    return tuple(rpc_status.to_status(status).trailing_metadata)


def test_status_details_sent_by_the_server_are_used() -> None:
    sent = to_status(NotFound("gone"))
    error = FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone", _rich(sent))
    assert status_from_rpc_error(error) == sent


def test_an_error_without_details_gets_an_error_info() -> None:
    error = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses")
    status = status_from_rpc_error(error)
    assert status.code == code_pb2.UNAVAILABLE
    assert status.message == "failed to connect to all addresses"
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("UNAVAILABLE", DOMAIN)
    assert error_body(status)["error"]["code"] == 503


def test_details_that_disagree_with_the_call_are_ignored() -> None:
    sent = to_status(NotFound("gone"))
    error = FakeRpcError(grpc.StatusCode.INTERNAL, "boom", _rich(sent))
    status = status_from_rpc_error(error)
    assert (status.code, status.message) == (code_pb2.INTERNAL, "boom")
