"""The HTTP gateway's private way into this process's gRPC server.

The gateway turns each HTTP request into a gRPC call to its own server.
It does not go through the public port (which may demand TLS and client
certificates the gateway does not hold): the server also listens, in
plaintext, on a Unix socket in a folder only this user can enter (0700,
made fresh per process), and the gateway's channel goes there.

An HTTPS caller's verified client certificate cannot travel over that
channel, so the gateway forwards its SANs in call metadata, signed with a
random key this process made at start and never sends anywhere: the
metadata holds the SANs and an HMAC-SHA256 over them, not the key. The gRPC
side believes forwarded SANs only through `forwarded_sans(metadata, secret)`
with that key; a caller on the public port who sends the same metadata names
nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: JSON list of the forwarded SANs (binary metadata: any UTF-8 survives).
SANS_KEY = "x-longrun-forwarded-sans-bin"
#: hex HMAC-SHA256(secret, MAC_CONTEXT + the SANS_KEY value).
MAC_KEY = "x-longrun-forwarded-sans-mac"
MAC_CONTEXT = b"longrun forwarded client certificate SANs v1\x00"
#: Longest Unix socket path (sun_path holds 108 bytes with the NUL).
MAX_SOCKET_PATH = 107

MetadataValue = str | bytes


@dataclass(frozen=True)
class GatewayLink:
    """A private plaintext listener for the gateway and the key that signs
    what the gateway forwards. `close()` removes the folder."""

    folder: Path
    secret: bytes = field(repr=False)

    @staticmethod
    def create() -> GatewayLink:
        base = tempfile.gettempdir()
        if len(base) + 40 > MAX_SOCKET_PATH:
            base = "/tmp"  # a deep TMPDIR would pass the socket path limit
        folder = Path(tempfile.mkdtemp(prefix="longrun-gateway-", dir=base))  # mode 0700
        return GatewayLink(folder, secrets.token_bytes(32))

    @property
    def socket_path(self) -> Path:
        return self.folder / "grpc.sock"

    @property
    def target(self) -> str:
        """The gRPC address of the socket, for add_insecure_port and channels."""
        return f"unix:{self.socket_path}"

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _mac(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, MAC_CONTEXT + payload, hashlib.sha256).hexdigest()


def forwarding_metadata(sans: Sequence[str], secret: bytes) -> list[tuple[str, MetadataValue]]:
    """The metadata the gateway adds to a call for an HTTPS caller whose
    client certificate had these SANs (nothing when it had none)."""
    if not sans:
        return []
    payload = json.dumps(list(sans), separators=(",", ":")).encode()
    return [(SANS_KEY, payload), (MAC_KEY, _mac(secret, payload))]


def forwarded_sans(
    metadata: Iterable[tuple[str, MetadataValue]] | None,
    secret: bytes | None,
    *,
    peer: str | None = None,
) -> list[str]:
    """The client certificate SANs the gateway forwarded with this call
    (`context.invocation_metadata()`), or [] unless they carry a valid MAC
    made with `secret` (this process's `GatewayLink.secret`). Each key must
    appear once: a caller cannot add a second set next to the gateway's.
    Pass `peer=context.peer()` too, and they are believed only on a call
    that came in over the private Unix socket (defence in depth: a MAC'd
    set copied from somewhere is worthless on the public port)."""
    if not secret or metadata is None:
        return []
    if peer is not None and not peer.startswith("unix:"):
        return []
    payloads = [v for k, v in metadata if k == SANS_KEY]
    macs = [v for k, v in metadata if k == MAC_KEY]
    if len(payloads) != 1 or len(macs) != 1:
        return []
    payload, mac = payloads[0], macs[0]
    if isinstance(payload, str):
        payload = payload.encode()
    if isinstance(mac, bytes):
        mac = mac.decode("ascii", "replace")
    if not hmac.compare_digest(_mac(secret, payload), mac):
        return []
    try:
        sans = json.loads(payload)
    except ValueError:
        return []
    if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
        return []
    return sans
