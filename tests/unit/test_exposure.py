"""The exposure check: a listener other machines can reach needs
authentication or --allow-unauthenticated; loopback never does."""

from __future__ import annotations

import pytest

from longrun_server.exposure import ExposureRefused, check_exposure, host_of, non_loopback

HOSTS = {
    "localhost": ["127.0.0.1", "::1"],
    "lan-box": ["192.168.1.20"],
    "mixed": ["127.0.0.1", "10.0.0.5"],
}


def resolver(host: str) -> list[str]:
    if host not in HOSTS:
        raise OSError("Name or service not known")
    return HOSTS[host]


@pytest.mark.parametrize(
    "address",
    ["localhost:50051", "127.0.0.1:0", "127.9.9.9:1", "[::1]:50051", "unix:/tmp/x.sock"],
)
def test_loopback_and_unix_sockets_need_nothing(address: str) -> None:
    assert non_loopback(address, resolver) is None
    check_exposure(
        [address], authentication_configured=False, allow_unauthenticated=False, resolver=resolver
    )


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("0.0.0.0:50051", "every interface"),
        ("[::]:50051", "every interface"),
        (":8080", "every interface"),
        ("192.168.1.20:50051", "not loopback"),
        ("[2001:db8::1]:50051", "not loopback"),
        ("lan-box:50051", "192.168.1.20, not a loopback address"),
        ("mixed:50051", "10.0.0.5, not a loopback address"),
        ("nowhere.invalid:1", "'nowhere.invalid' does not resolve"),
    ],
)
def test_other_addresses_are_refused_without_authentication(address: str, reason: str) -> None:
    assert non_loopback(address, resolver) is not None
    assert reason in str(non_loopback(address, resolver))
    with pytest.raises(ExposureRefused) as refused:
        check_exposure(
            ["localhost:1", address],
            authentication_configured=False,
            allow_unauthenticated=False,
            resolver=resolver,
        )
    text = str(refused.value)
    assert text.startswith(f"refusing to listen on {address} (")
    assert "--allow-unauthenticated" in text and "\n" not in text


@pytest.mark.parametrize(
    ("authentication_configured", "allow_unauthenticated"), [(True, False), (False, True)]
)
def test_authentication_or_the_flag_allows_any_address(
    authentication_configured: bool, allow_unauthenticated: bool
) -> None:
    check_exposure(
        ["0.0.0.0:50051", "lan-box:8080"],
        authentication_configured=authentication_configured,
        allow_unauthenticated=allow_unauthenticated,
        resolver=resolver,
    )


def test_hosts_of_listen_addresses() -> None:
    assert host_of("[::1]:5") == "::1"
    assert host_of(":5") == ""
    assert host_of("unix:/x") is None
    assert host_of("example.com:443") == "example.com"
