"""Concurrency slots kept as holder maps (the Firestore adapter's way): one
slot document per limited queue, and one per (queue, concurrency key), each
holding `{operation id: attempt}` for the attempts that took a slot.

An entry is live while its operation is RUNNING that very attempt. Once it
is not (finished, taken back to QUEUED after a lost lease, deleted, or
running a later attempt) it can never be live again: attempts only grow. So
an entry judged dead from a read taken at any time may be dropped by any
later write, and a crashed holder's entry goes when the dispatcher's lease
check (or a redelivery's claim) takes its operation out of RUNNING: no
leak, and no clock comparison that a skewed worker could get wrong.

Pure functions; the adapter does the reads and the guarded writes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from longrun_core.model import OperationRecord, State
from longrun_core.transitions import SlotRequest


def queue_slot_id(project: str, queue: str) -> str:
    return f"{project}~{queue}"


def bucket_id(project: str, queue: str) -> str:
    """The document id of a queue's rate bucket (longrun_core.rate_bucket), in
    the slot documents' collection (a queue id holds no '~', so it cannot
    clash with a slot document's)."""
    return f"{project}~{queue}~rate"


def key_slot_id(project: str, queue: str, key: str) -> str:
    """A document id for any key (keys may hold '/', which ids may not)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:40]
    return f"{project}~{queue}~key~{digest}"


def slots_of(request: SlotRequest) -> list[tuple[str, int]]:
    """(slot document id, limit) of every limit `request` is under."""
    slots = []
    if request.queue_limit is not None:
        slots.append((queue_slot_id(request.project, request.queue), request.queue_limit))
    if request.key is not None and request.key_limit is not None:
        slots.append((key_slot_id(request.project, request.queue, request.key), request.key_limit))
    return slots


def is_live(attempt: int, rec: OperationRecord | None) -> bool:
    """Whether an entry for `attempt` still holds its slot, `rec` being its
    operation as read (None: deleted)."""
    return rec is not None and rec.state is State.RUNNING and rec.attempt == attempt


def without_dead(
    holders: Mapping[str, int], records: Mapping[str, OperationRecord | None]
) -> dict[str, int]:
    """`holders` less the entries `records` (the holders' operations as read;
    an id missing from it is not judged) show dead."""
    return {
        op_id: attempt
        for op_id, attempt in holders.items()
        if op_id not in records or is_live(attempt, records[op_id])
    }


def admit(
    holders: Mapping[str, int], op_id: str, attempt: int, limit: int
) -> dict[str, int] | None:
    """The holders with `op_id`'s `attempt` added (replacing an earlier
    attempt's entry of it), or None when the other holders fill `limit`."""
    others = {k: v for k, v in holders.items() if k != op_id}
    if len(others) >= limit:
        return None
    return others | {op_id: attempt}
