"""Task messages that cannot be forged: the publisher signs every message,
receivers verify it before anything in it is used, and a worker runs only
the task its operation's record names.

Signature
    HMAC-SHA256 over a canonical encoding of the message's data, the key id,
    and every attribute except the signature itself and Pub/Sub's reserved
    `goog*` ones (so `operation`, `task`, `attempt`, and any attribute added
    later, are covered). The hex digest travels in attribute `signature`,
    the key id in `signature_key`. The encoding is length-prefixed and
    sorted by attribute name: no two different messages encode the same.

Keys
    A key ring (`SigningKeys`): the first key signs, every key verifies, so
    keys rotate by adding the new one second, then moving it first once
    every process has it, then dropping the old one. Configured with
    `--message-signing-keys` / LONGRUN_MESSAGE_SIGNING_KEYS as
    `kid:secret[,kid:secret]`. Secrets never appear in a repr.

Rejection
    A message that is unsigned, signed with a key id the ring does not hold,
    or whose signature does not match (forged, or tampered with in transit)
    raises `MessageRejected`; so does a message naming another task than its
    operation's record (`guard_task`). The receiver dead-letters it with the
    rejection's `reason`, logs it and counts it in `Rejections`; it never
    runs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from longrun_core.model import OperationRecord
    from longrun_core.queue import TaskMessage, Transition

log = logging.getLogger("longrun.signing")

SIGNATURE_ATTR = "signature"
KEY_ID_ATTR = "signature_key"
#: Attributes with this prefix are Pub/Sub's (reserved); they are not signed.
RESERVED_PREFIX = "goog"
#: Separates longrun's task-message MACs from any other use of the same secret.
_DOMAIN = b"longrun.dev/task-message/v1"
#: Shortest secret accepted: 16 bytes (128 bits) of key material.
MIN_SECRET_BYTES = 16
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

# Kinds of rejection (the dead-letter reason starts with one; counters use them).
UNSIGNED = "unsigned"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
TASK_MISMATCH = "task_mismatch"
KINDS = (UNSIGNED, UNKNOWN_KEY, BAD_SIGNATURE, TASK_MISMATCH)

#: Why a queue without a database of its own (Pub/Sub) will not start keyless.
KEYS_REQUIRED = (
    "the Pub/Sub queue needs message signing keys: set LONGRUN_MESSAGE_SIGNING_KEYS "
    "(or --message-signing-keys) to kid:secret, the same on the server and every "
    "worker, e.g. k1:$(openssl rand -hex 32) (see docs/security.md)"
)


class MessageRejected(Exception):
    """A message that must not run: `kind` is one of KINDS."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail

    @property
    def reason(self) -> str:
        """The dead-letter reason: `rejected (<kind>): <detail>`."""
        return f"rejected ({self.kind}): {self.detail}"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KID.match(self.kid):
            raise ValueError(
                f"signing key id {self.kid!r}: use 1 to 64 letters, digits, '.', '_' or '-'"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ValueError(
                f"signing key {self.kid!r}: the secret must be at least {MIN_SECRET_BYTES} bytes"
            )


@dataclass(frozen=True)
class SigningKeys:
    """A key ring: `keys[0]` signs, every key verifies."""

    keys: tuple[SigningKey, ...]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a signing key ring needs at least one key")
        kids = [k.kid for k in self.keys]
        if len(set(kids)) != len(kids):
            raise ValueError(f"signing key ids repeat: {', '.join(kids)}")

    def __repr__(self) -> str:
        return f"SigningKeys(kids={tuple(k.kid for k in self.keys)!r})"

    @classmethod
    def parse(cls, text: str) -> SigningKeys:
        """`kid:secret[,kid:secret]` (the secret is taken as UTF-8 bytes; it may
        hold ':' but not ','). ValueError says what is wrong, never the secret."""
        keys = []
        for i, item in enumerate(p.strip() for p in text.split(",")):
            kid, sep, secret = item.partition(":")
            if not sep or not kid.strip() or not secret:
                raise ValueError(
                    f"signing key {i + 1} is not `kid:secret` (expected "
                    "kid:secret[,kid:secret], e.g. k1:$(openssl rand -hex 32))"
                )
            keys.append(SigningKey(kid.strip(), secret.encode()))
        return cls(tuple(keys))

    @classmethod
    def generate(cls, kid: str = "local") -> tuple[SigningKeys, str]:
        """A ring with one fresh random key, and its `kid:secret` text."""
        secret = secrets.token_hex(32)
        return cls((SigningKey(kid, secret.encode()),)), f"{kid}:{secret}"

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(k.kid for k in self.keys)

    def find(self, kid: str) -> SigningKey | None:
        for key in self.keys:
            if hmac.compare_digest(key.kid, kid):
                return key
        return None

    def sign(self, data: bytes, attributes: Mapping[str, str]) -> dict[str, str]:
        """The two attributes that sign `data` with `attributes`."""
        key = self.keys[0]
        return {KEY_ID_ATTR: key.kid, SIGNATURE_ATTR: _mac(key, data, attributes)}

    def signed(self, data: bytes, attributes: Mapping[str, str]) -> dict[str, str]:
        """`attributes` with the signature added."""
        return dict(attributes) | self.sign(data, attributes)

    def verify(self, data: bytes, attributes: Mapping[str, str]) -> None:
        """Raise MessageRejected unless `attributes` carry a valid signature of
        `data` and the other attributes by a key of this ring."""
        signature = attributes.get(SIGNATURE_ATTR)
        kid = attributes.get(KEY_ID_ATTR)
        if not signature or not kid:
            raise MessageRejected(UNSIGNED, "the message carries no signature")
        key = self.find(kid)
        if key is None:
            raise MessageRejected(
                UNKNOWN_KEY, f"signed with key id {kid[:64]!r}, which this process does not hold"
            )
        if not hmac.compare_digest(_mac(key, data, attributes), signature.lower()):
            raise MessageRejected(
                BAD_SIGNATURE, "the signature does not match the data and attributes"
            )


def _mac(key: SigningKey, data: bytes, attributes: Mapping[str, str]) -> str:
    signed = sorted(
        (k, v)
        for k, v in attributes.items()
        if k not in (SIGNATURE_ATTR, KEY_ID_ATTR) and not k.startswith(RESERVED_PREFIX)
    )
    mac = hmac.new(key.secret, digestmod=hashlib.sha256)
    for part in (_DOMAIN, key.kid.encode(), data):
        mac.update(_framed(part))
    mac.update(len(signed).to_bytes(4, "big"))
    for name, value in signed:
        mac.update(_framed(name.encode()))
        mac.update(_framed(value.encode()))
    return mac.hexdigest()


def _framed(part: bytes) -> bytes:
    return len(part).to_bytes(8, "big") + part


def message_fields(message: TaskMessage) -> tuple[bytes, dict[str, str]]:
    """How a TaskMessage travels: data = the operation name, attributes
    `operation`, `task`, `attempt`, and `traceparent` when it has one (what
    is signed, on every queue)."""
    attributes = {
        "operation": message.operation,
        "task": message.task,
        "attempt": str(message.attempt),
    }
    if message.trace:
        attributes["traceparent"] = message.trace
    return message.operation.encode(), attributes


def guard_task(claim: Transition, task: str) -> Transition:
    """`claim`, refused with MessageRejected(TASK_MISMATCH) when the message's
    `task` is not the one the operation's record names: a worker runs the
    record's task and params, never what a message says."""

    def guarded(rec: OperationRecord) -> OperationRecord | None:
        if rec.task != task:
            raise MessageRejected(
                TASK_MISMATCH,
                f"the message names task {task[:100]!r} but {rec.name} is a {rec.task!r} task",
            )
        return claim(rec)

    return guarded


class Rejections:
    """Counts (and logs) the messages a process refused, by kind."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def record(
        self,
        rejected: MessageRejected,
        *,
        message_id: str | None = None,
        operation: str | None = None,
    ) -> None:
        self._counts[rejected.kind] += 1
        log.warning(
            "rejected message %s for %s: %s (rejected so far: %s)",
            message_id or "?",
            (operation or "?")[:200],
            rejected,
            self.summary(),
            extra={"action": "message_rejected", "reason": rejected.kind, "operation": operation},
        )

    def count(self, kind: str | None = None) -> int:
        """Rejections of `kind`, or of every kind."""
        return self._counts[kind] if kind is not None else sum(self._counts.values())

    def summary(self) -> str:
        """`kind=n` pairs, e.g. `unsigned=2 task_mismatch=1` (the log shows it)."""
        return " ".join(f"{k}={self._counts[k]}" for k in KINDS if self._counts[k]) or "none"
