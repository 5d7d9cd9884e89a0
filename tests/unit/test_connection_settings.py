"""Connection settings: the gRPC options made from ServerSettings, and the
gateway's limits checked when built."""

from __future__ import annotations

import pytest

from longrun_core.settings import ServerSettings
from longrun_server.app import connection_options
from longrun_server.rest_connections import ConnectionLimits


def test_grpc_connection_options_in_milliseconds() -> None:
    settings = ServerSettings(
        grpc_keepalive_time=30,
        grpc_keepalive_timeout=5,
        grpc_max_connection_idle=60,
        grpc_max_connection_age=900.5,
        grpc_handshake_timeout=2,
        max_wait=600,
        grace=5,
    )
    options = dict(connection_options(settings))
    assert options["grpc.keepalive_time_ms"] == 30_000
    assert options["grpc.keepalive_timeout_ms"] == 5_000
    assert options["grpc.max_connection_idle_ms"] == 60_000
    assert options["grpc.max_connection_age_ms"] == 900_500
    # An old connection keeps its calls until the longest WaitOperation can end.
    assert options["grpc.max_connection_age_grace_ms"] == 605_000
    assert options["grpc.server_handshake_timeout_ms"] == 2_000


@pytest.mark.parametrize(
    "change",
    [
        {"header_timeout": 0},
        {"body_timeout": -1},
        {"idle_timeout": 0},
        {"max_connections": 0},
    ],
)
def test_connection_limits_must_be_positive(change: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ConnectionLimits(**change)  # type: ignore[arg-type]
