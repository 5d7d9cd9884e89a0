"""A client target naming several servers gets round_robin, and a list of
loopback addresses counts as loopback (credentials may go in plaintext)."""

from __future__ import annotations

import pytest

from longrun_client.credentials import balancing_options, is_loopback_target


@pytest.mark.parametrize(
    "target",
    ["ipv4:127.0.0.1:50051,127.0.0.1:50052", "dns:///longrun.internal:50051", "ipv6:[::1]:1"],
)
def test_multi_address_targets_get_round_robin(target: str) -> None:
    assert balancing_options(target) == [("grpc.lb_policy_name", "round_robin")]


@pytest.mark.parametrize("target", ["localhost:50051", "10.0.0.1:443", "unix:/tmp/s"])
def test_single_targets_keep_the_default_policy(target: str) -> None:
    assert balancing_options(target) == []


def test_an_address_list_is_loopback_only_if_every_address_is() -> None:
    assert is_loopback_target("ipv4:127.0.0.1:50051,127.0.0.1:50052")
    assert not is_loopback_target("ipv4:127.0.0.1:50051,10.0.0.2:50052")
