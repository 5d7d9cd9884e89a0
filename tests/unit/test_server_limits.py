"""The server's limits fit together: message sizes, the list page budget,
WaitOperation's timeout (clamped to the max wait; INVALID_ARGUMENT outside
the range of a Duration, never an overflow)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from google.longrunning import operations_pb2
from google.protobuf import duration_pb2

from longrun_core.errors import InvalidArgument
from longrun_core.settings import PAGE_HEADROOM_BYTES, ServerSettings
from longrun_server.__main__ import main as server_main
from longrun_server.app import message_limit_options, page_limits
from longrun_server.operations_service import MAX_DURATION_SECONDS, wait_timeout
from longrun_server.rest import RestGateway, build_routes, served_services

MIB = 1024 * 1024


def test_the_page_budget_derives_from_the_max_send_size() -> None:
    settings = ServerSettings(max_send_message_bytes=8 * MIB)
    assert settings.page_budget == 8 * MIB - PAGE_HEADROOM_BYTES
    limits = page_limits(settings)
    assert (limits.max_bytes, limits.max_message_bytes) == (8 * MIB - PAGE_HEADROOM_BYTES, 8 * MIB)
    assert ServerSettings(list_page_max_bytes=MIB).page_budget == MIB


def test_the_message_limits_are_set_explicitly_on_the_server() -> None:
    settings = ServerSettings(max_send_message_bytes=6 * MIB, max_receive_message_bytes=2 * MIB)
    assert dict(message_limit_options(settings)) == {
        "grpc.max_send_message_length": 6 * MIB,
        "grpc.max_receive_message_length": 2 * MIB,
    }


def test_the_gateway_mirrors_the_server_limits() -> None:
    gateway = RestGateway(
        "127.0.0.1:1",
        build_routes(served_services()),
        max_wait=600,
        max_request_bytes=2 * MIB,
        max_response_bytes=6 * MIB,
    )
    options = dict(gateway.channel_options())
    assert options["grpc.max_send_message_length"] == 2 * MIB  # what the server receives
    assert options["grpc.max_receive_message_length"] == 6 * MIB  # what the server sends
    assert gateway.app()._client_max_size == 2 * MIB


def test_a_page_budget_above_the_max_send_size_is_refused() -> None:
    ServerSettings(list_page_max_bytes=4 * MIB - PAGE_HEADROOM_BYTES).check()
    with pytest.raises(ValueError, match="list_page_max_bytes must be at most"):
        ServerSettings(list_page_max_bytes=4 * MIB).check()


def test_the_server_cli_refuses_a_page_budget_above_the_max_send_size() -> None:
    result = CliRunner().invoke(
        server_main, ["--list-page-max-bytes", str(8 * MIB), "--max-send-message-bytes", "4194304"]
    )
    assert result.exit_code == 2
    assert "--list-page-max-bytes" in result.output


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [(0, 0, 0.0), (30, 500_000_000, 30.5), (MAX_DURATION_SECONDS, 999_999_999, 315576000000.0)],
)
def test_a_valid_timeout_is_its_seconds(seconds: int, nanos: int, expected: float) -> None:
    assert wait_timeout(duration_pb2.Duration(seconds=seconds, nanos=nanos)) == pytest.approx(
        expected
    )


@pytest.mark.parametrize(
    ("seconds", "nanos", "reason"),
    [
        (2**62, 0, "TIMEOUT_INVALID"),
        (MAX_DURATION_SECONDS + 1, 0, "TIMEOUT_INVALID"),
        (1, 1_000_000_000, "TIMEOUT_INVALID"),
        (-1, 0, "TIMEOUT_NEGATIVE"),
        (0, -5, "TIMEOUT_NEGATIVE"),
    ],
)
def test_a_timeout_outside_a_duration_is_invalid_argument(
    seconds: int, nanos: int, reason: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        wait_timeout(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    assert info.value.reason == reason


def test_the_gateway_deadline_of_a_huge_timeout_is_the_max_wait() -> None:
    gateway = RestGateway("127.0.0.1:1", build_routes(served_services()), max_wait=600)
    route, *_ = [r for r in gateway.router.routes if r.method.name == "WaitOperation"]
    request = operations_pb2.WaitOperationRequest(
        name="operations/x", timeout=duration_pb2.Duration(seconds=2**62)
    )
    assert gateway.deadline(route, request) == 600 + gateway.wait_margin
