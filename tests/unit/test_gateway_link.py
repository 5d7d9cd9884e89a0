"""forwarded_sans believes the gateway's metadata only with this process's key."""

from __future__ import annotations

import json
import secrets

from longrun_server.gateway_link import (
    MAC_KEY,
    SANS_KEY,
    GatewayLink,
    forwarded_sans,
    forwarding_metadata,
)

SECRET = secrets.token_bytes(32)
SANS = ["svc.example", "spiffe://t/ns/a", "ops@example.com", "127.0.0.1"]


def test_the_gateway_metadata_round_trips() -> None:
    metadata = [("authorization", "Bearer x"), *forwarding_metadata(SANS, SECRET)]
    assert forwarded_sans(metadata, SECRET) == SANS


def test_a_certificate_without_sans_forwards_nothing() -> None:
    assert forwarding_metadata([], SECRET) == []


def test_without_the_key_nothing_is_believed() -> None:
    metadata = forwarding_metadata(SANS, SECRET)
    assert forwarded_sans(metadata, secrets.token_bytes(32)) == []
    assert forwarded_sans(metadata, None) == []
    assert forwarded_sans(metadata, b"") == []
    assert forwarded_sans(None, SECRET) == []


def test_the_header_without_its_mac_names_nobody() -> None:
    assert forwarded_sans([(SANS_KEY, json.dumps(SANS).encode())], SECRET) == []


def test_tampered_sans_fail_the_mac() -> None:
    (_, payload), (_, mac) = forwarding_metadata(["user.example"], SECRET)
    assert isinstance(payload, bytes)
    tampered = payload.replace(b"user", b"root")
    assert forwarded_sans([(SANS_KEY, tampered), (MAC_KEY, mac)], SECRET) == []


def test_a_second_set_beside_the_gateway_one_names_nobody() -> None:
    ours = forwarding_metadata(["user.example"], SECRET)
    forged: list[tuple[str, str | bytes]] = [(SANS_KEY, b'["admin.example"]'), (MAC_KEY, "0" * 64)]
    assert forwarded_sans([*forged, *ours], SECRET) == []
    assert forwarded_sans([*ours, *forged], SECRET) == []


def test_a_signed_payload_that_is_not_a_list_of_strings_names_nobody() -> None:
    from longrun_server.gateway_link import _mac

    for payload in (b'{"a": 1}', b"[1, 2]", b"not json"):
        assert forwarded_sans([(SANS_KEY, payload), (MAC_KEY, _mac(SECRET, payload))], SECRET) == []


def test_the_link_folder_is_private_and_removed(tmp_path: object) -> None:
    link = GatewayLink.create()
    try:
        assert link.folder.stat().st_mode & 0o777 == 0o700
        assert len(str(link.socket_path)) <= 107
        assert link.target == f"unix:{link.socket_path}"
        assert link.secret.hex() not in repr(link)
    finally:
        link.close()
    assert not link.folder.exists()


def test_with_the_peer_only_the_private_socket_counts() -> None:
    metadata = forwarding_metadata(SANS, SECRET)
    assert forwarded_sans(metadata, SECRET, peer="unix:") == SANS
    assert forwarded_sans(metadata, SECRET, peer="ipv4:127.0.0.1:5555") == []
    assert forwarded_sans(metadata, SECRET, peer="ipv6:[::1]:5555") == []
