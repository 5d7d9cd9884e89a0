"""ListDeadLetters: the task queue's dead letters, each listed under the
project of the operation it names, as the stored operation has it.

The task queue keeps one dead-letter destination for every project (the
embedded queue's `dead_letters` table, the Pub/Sub dead-letter topic), and
a rejected message's text is not trusted (it may be forged). So a dead
letter is attributed by reading its operation from the store: a full name
whose project is not the record's, an unparsable name or a missing (or
since deleted) operation attributes it to no project, and such a one is
listed only to callers who may see every project, under `projects/-`. A
dead letter naming a project the caller may not see is skipped without a
read. One call reads at most `scan` dead letters (and at most that many
operations); a page may then be short, with a token to go on.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime

from google.protobuf import timestamp_pb2

from longrun.v1 import queues_pb2
from longrun_core.access import ALL_PROJECTS, Access, Permission
from longrun_core.clock import from_micros, to_micros
from longrun_core.errors import InvalidArgument, NotFound
from longrun_core.model import OperationRecord, queue_name
from longrun_core.names import check_project_id, parse_operation_name
from longrun_core.queue import DeadLetter, TaskQueue
from longrun_core.store import OperationStore

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
#: The parent that lists every project the caller may see (AIP-159).
ANY_PROJECT = "-"

Cursor = tuple[datetime, str]


@dataclass(frozen=True)
class Page:
    letters: list[queues_pb2.DeadLetter]
    next_cursor: Cursor | None


def parse_dead_letters_parent(parent: str) -> str:
    """The project of `projects/{project}` or `projects/-` (`-`)."""
    prefix, _, project = parent.partition("/")
    if prefix != "projects" or not project:
        raise InvalidArgument(
            f"parent {parent[:200]!r} is not projects/PROJECT or projects/-",
            reason="PARENT_INVALID",
        )
    return project if project == ANY_PROJECT else check_project_id(project)


def encode_token(parent: str, cursor: Cursor) -> str:
    raw = json.dumps({"p": parent, "t": to_micros(cursor[0]), "i": cursor[1]})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_token(parent: str, token: str) -> Cursor | None:
    """The cursor of a token this method gave for `parent`; INVALID_ARGUMENT otherwise."""
    if not token:
        return None
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if raw["p"] != parent or not isinstance(raw["i"], str):
            raise ValueError(raw["p"])
        return (from_micros(int(raw["t"])), raw["i"])
    except (ValueError, KeyError, TypeError, binascii.Error, OverflowError):
        raise InvalidArgument(
            "page_token is not one this method gave for this parent", reason="PAGE_TOKEN_INVALID"
        ) from None


def page_size_of(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative", reason="PAGE_SIZE_INVALID")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def dead_letter_message(letter: DeadLetter, rec: OperationRecord | None) -> queues_pb2.DeadLetter:
    project = rec.project if rec is not None else ANY_PROJECT
    message = queues_pb2.DeadLetter(
        name=f"projects/{project}/deadLetters/{letter.id}",
        operation=rec.name if rec is not None else letter.message.operation[:300],
        task=letter.message.task[:300],
        attempt=max(0, min(letter.message.attempt, 2**31 - 1)),
        reason=letter.reason[:1000],
        delivery_count=max(0, min(letter.deliveries, 2**31 - 1)),
        queue=queue_name(rec.project, rec.queue) if rec is not None else "",
    )
    if letter.dead_time is not None:
        message.dead_letter_time.CopyFrom(_timestamp(letter.dead_time))
    return message


class DeadLetterLister:
    def __init__(
        self, queue: TaskQueue, store: OperationStore, access: Access, *, scan: int
    ) -> None:
        self.queue = queue
        self.store = store
        self.access = access
        self.scan = scan

    def allowed(self, project: str) -> frozenset[str] | None:
        """The projects whose dead letters the caller may list here (None: all).
        A named project is checked before anything is read (AIP-211)."""
        if project != ANY_PROJECT:
            self.access.require(Permission.DEAD_LETTERS_LIST, project)
            return frozenset({project})
        return self.access.visible_projects(Permission.DEAD_LETTERS_LIST)

    async def _operation(
        self, letter: DeadLetter, allowed: frozenset[str] | None
    ) -> OperationRecord | bool | None:
        """The stored operation `letter` names; None when it cannot be found;
        False when its name's project is one the caller may not see (not read)."""
        try:
            parsed = parse_operation_name(letter.message.operation)
        except InvalidArgument:
            return None
        if allowed is not None and parsed.project is not None and parsed.project not in allowed:
            return False
        try:
            return await self.store.get(letter.message.operation)
        except NotFound:
            return None

    async def page(self, project: str, size: int, cursor: Cursor | None) -> Page:
        allowed = self.allowed(project)
        if allowed is not ALL_PROJECTS and not allowed:
            return Page([], None)
        # Unattributed dead letters: only for a caller who sees every project.
        show_unattributed = project == ANY_PROJECT and allowed is ALL_PROJECTS
        found: list[queues_pb2.DeadLetter] = []
        # One read of the whole window: a Pub/Sub queue peeks it in one go.
        batch = await self.queue.read_dead_letters(self.scan, before=cursor)
        seen: dict[str, OperationRecord | bool | None] = {}
        for letter in batch:
            cursor = letter.order
            name = letter.message.operation
            if name not in seen:
                seen[name] = await self._operation(letter, allowed)
            rec = seen[name]
            if rec is False:
                continue
            if rec is None or isinstance(rec, bool):
                if show_unattributed:
                    found.append(dead_letter_message(letter, None))
            elif (allowed is None or rec.project in allowed) and (
                project in (ANY_PROJECT, rec.project)
            ):
                found.append(dead_letter_message(letter, rec))
            if len(found) == size:
                return Page(found, cursor)
        return Page(found, cursor if len(batch) == self.scan else None)
