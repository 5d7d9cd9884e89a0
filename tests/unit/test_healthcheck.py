"""The image health check's target: the server's own address, a wildcard
host meaning this host."""

from __future__ import annotations

import pytest

from longrun_server.healthcheck import local_target


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("localhost:50051", "localhost:50051"),
        ("127.0.0.1:7", "127.0.0.1:7"),
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "[::1]:50051"),
        ("[::1]:7", "[::1]:7"),
        (":50051", "127.0.0.1:50051"),
    ],
)
def test_local_target(address: str, target: str) -> None:
    assert local_target(address) == target
