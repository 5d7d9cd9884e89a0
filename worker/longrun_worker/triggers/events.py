"""One Pub/Sub message through one trigger: filtered, malformed, or the
CreateJob request it makes. Pure (no I/O), so every rule is unit-tested.

Order: the attribute filter first (a message that does not match is
filtered, whatever its data), then the event's identity and the mapping
(a matching message that lacks what they need is malformed).

Identity (`Trigger.identity`):
* "storage": a Cloud Storage notification, `gcs:BUCKET/OBJECT#GENERATION`
  from the attributes bucketId, objectId, objectGeneration; the same
  upload notified twice (or redelivered) is one event.
* "message": `pubsub:SUBSCRIPTION/MESSAGE_ID`; Pub/Sub redelivery keeps
  the message id, a second publish of the same content does not.
* "auto": storage when the three attributes are there, else message.

The request id is a UUID4-shaped hash of the trigger's name and the
identity, so the server's per-project request-id deduplication (AIP-155)
makes one operation per event and trigger, across restarts and replicas.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from longrun_worker.triggers.config import Trigger

#: Cloud Storage notification attributes (JSON_API_V1 payload).
STORAGE_ATTRIBUTES = ("bucketId", "objectId", "objectGeneration")
JSON_API_V1 = "JSON_API_V1"
#: Largest message data decoded as JSON (Pub/Sub allows 10 MB messages).
MAX_DATA_BYTES = 1024 * 1024

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.-]*)\}")
_MISSING = object()


@dataclass(frozen=True)
class EventMessage:
    """The parts of a Pub/Sub message a trigger reads."""

    message_id: str
    data: bytes
    attributes: Mapping[str, str] = field(default_factory=dict)
    publish_time: str = ""


@dataclass(frozen=True)
class Filtered:
    reason: str


@dataclass(frozen=True)
class Malformed:
    reason: str


@dataclass(frozen=True)
class Create:
    """The CreateJob request for a matching event."""

    identity: str
    request_id: str
    parent: str
    task: str
    params: dict[str, Any]
    labels: dict[str, str]


Decision = Filtered | Malformed | Create


class _Bad(Exception):
    pass


def request_id_for(trigger_name: str, identity: str) -> str:
    """A UUID4 (AIP-155 form) that is a function of the trigger and event."""
    digest = bytearray(hashlib.sha256(f"{trigger_name}\0{identity}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    return str(uuid.UUID(bytes=bytes(digest)))


def event_identity(trigger: Trigger, message: EventMessage) -> str:
    attrs = message.attributes
    storage = all(attrs.get(a) for a in STORAGE_ATTRIBUTES)
    if trigger.identity == "storage" or (trigger.identity == "auto" and storage):
        missing = [a for a in STORAGE_ATTRIBUTES if not attrs.get(a)]
        if missing:
            raise _Bad(f"not a Cloud Storage notification: missing attributes {missing}")
        generation = attrs["objectGeneration"]
        if not generation.isdigit():
            raise _Bad(f"objectGeneration {generation[:40]!r} is not a number")
        return f"gcs:{attrs['bucketId']}/{attrs['objectId']}#{generation}"
    if not message.message_id:
        raise _Bad("the message has no message id")
    return f"pubsub:{trigger.source}/{message.message_id}"


def decide(trigger: Trigger, message: EventMessage) -> Decision:
    for match in trigger.filter:
        why = match.mismatch(message.attributes)
        if why is not None:
            return Filtered(why)
    try:
        identity = event_identity(trigger, message)
        source = _Source(message)
        if message.attributes.get("payloadFormat") == JSON_API_V1:
            source.json()  # the object resource must be there and be JSON
        params = _render(trigger.params, source, "params")
        labels = {k: _text(_render(v, source, f"labels.{k}")) for k, v in trigger.labels.items()}
    except _Bad as exc:
        return Malformed(str(exc))
    if not isinstance(params, dict):  # pragma: no cover - config guarantees a table
        return Malformed("params did not map to an object")
    return Create(
        identity=identity,
        request_id=request_id_for(trigger.name, identity),
        parent=trigger.parent,
        task=trigger.task,
        params=params,
        labels=labels,
    )


class _Source:
    """What placeholders read, the data decoded once on first use."""

    def __init__(self, message: EventMessage) -> None:
        self.message = message
        self._json: Any = _MISSING

    def json(self) -> Any:
        if self._json is _MISSING:
            data = self.message.data
            if len(data) > MAX_DATA_BYTES:
                raise _Bad(f"data is {len(data)} bytes; at most {MAX_DATA_BYTES} are decoded")
            try:
                self._json = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                raise _Bad(f"data is not JSON: {exc}") from exc
        return self._json

    def lookup(self, path: str) -> Any:
        head, _, rest = path.partition(".")
        if head == "attributes" and rest:
            value = self.message.attributes.get(rest)
            if value is None:
                raise _Bad(f"attribute {rest!r} is missing")
            return value
        if head == "message" and rest == "id":
            return self.message.message_id
        if head == "message" and rest == "publish_time":
            return self.message.publish_time
        if head == "data":
            value = self.json()
            walked = "data"
            for key in rest.split(".") if rest else []:
                if not isinstance(value, dict) or key not in value:
                    raise _Bad(f"{walked}.{key} is missing")
                value = value[key]
                walked = f"{walked}.{key}"
            return value
        raise _Bad(f"unknown placeholder {{{path}}}")


def _render(template: Any, source: _Source, where: str) -> Any:
    if isinstance(template, str):
        whole = _PLACEHOLDER.fullmatch(template)
        if whole:
            return source.lookup(whole.group(1))
        return _PLACEHOLDER.sub(lambda m: _text(source.lookup(m.group(1))), template)
    if isinstance(template, dict):
        return {k: _render(v, source, f"{where}.{k}") for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, source, f"{where}[{i}]") for i, v in enumerate(template)]
    return template


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
