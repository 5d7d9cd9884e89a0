"""The triggers file: TOML, one `[[trigger]]` table per trigger.

    [[trigger]]
    name = "docx-to-pdf"
    subscription = "projects/my-gcp/subscriptions/uploads"   # or: folder = "PATH"
    project = "docs"                  # longrun project (default: the server's)
    task = "docx_to_pdf"
    identity = "auto"                 # auto | storage | message
    dead_letter_topic = "projects/my-gcp/topics/uploads-dead"   # optional

    [trigger.filter]                  # every entry must hold (attributes only)
    eventType = "OBJECT_FINALIZE"
    objectId = { suffix = ".docx" }

    [trigger.params]                  # "{path}" alone keeps the value's JSON type
    bucket = "{attributes.bucketId}"
    object = "{data.name}"
    generation = "{attributes.objectGeneration}"
    output_bucket = "converted"

    [trigger.labels]                  # strings; "trigger" is added unless given
    object = "{attributes.objectId}"

`folder = "PATH"` instead of a subscription watches a local folder and
makes Cloud Storage notifications of its files (folder.py): the embedded
stand-in for a bucket. Paths: `attributes.NAME`, `data` / `data.KEY.KEY...` (the message data as
JSON), `message.id`, `message.publish_time`. Errors are `TriggerConfigError`
naming the trigger and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from longrun_core.errors import LongrunError
from longrun_core.names import check_project_id
from longrun_core.validation import json_problem

Identity = Literal["auto", "storage", "message"]
IDENTITIES: tuple[Identity, ...] = ("auto", "storage", "message")
#: Most triggers one file may declare (each runs a pull loop).
MAX_TRIGGERS = 64

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_SUBSCRIPTION = re.compile(r"^projects/[^/]+/subscriptions/[^/]+$")
_TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
_TASK = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")
_MATCHERS = ("equals", "prefix", "suffix", "any_of", "present")


class TriggerConfigError(ValueError):
    """The triggers file cannot be used (one line saying where and why)."""


@dataclass(frozen=True)
class AttributeMatch:
    """One filter entry: the attribute `name` must satisfy every given test."""

    name: str
    equals: str | None = None
    prefix: str | None = None
    suffix: str | None = None
    any_of: tuple[str, ...] | None = None
    #: True: the attribute must be there; False: it must be absent.
    present: bool | None = None

    def mismatch(self, attributes: Mapping[str, str]) -> str | None:
        """Why `attributes` fail this entry; None when they pass."""
        value = attributes.get(self.name)
        if self.present is False:
            return None if value is None else f"{self.name} is present"
        if value is None:
            return f"{self.name} is missing"
        if self.equals is not None and value != self.equals:
            return f"{self.name} is not {self.equals!r}"
        if self.prefix is not None and not value.startswith(self.prefix):
            return f"{self.name} does not start with {self.prefix!r}"
        if self.suffix is not None and not value.endswith(self.suffix):
            return f"{self.name} does not end with {self.suffix!r}"
        if self.any_of is not None and value not in self.any_of:
            return f"{self.name} is not one of {list(self.any_of)!r}"
        return None


@dataclass(frozen=True)
class Trigger:
    name: str
    #: Where events come from: a Pub/Sub subscription, or a local folder.
    subscription: str | None
    task: str
    #: The longrun project operations are created in ("" = the server's default).
    project: str = ""
    identity: Identity = "auto"
    dead_letter_topic: str | None = None
    filter: tuple[AttributeMatch, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    folder: Path | None = None
    #: Seconds a file's size and mtime must stay unchanged (folder triggers).
    settle: float = 1.0

    @property
    def source(self) -> str:
        return self.subscription or f"folder:{self.folder}"

    @property
    def parent(self) -> str:
        return f"projects/{self.project}" if self.project else ""


def load_triggers(path: Path) -> list[Trigger]:
    """The triggers `path` declares (TriggerConfigError when unusable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TriggerConfigError(f"cannot read {path}: {exc.strerror}") from exc
    return parse_triggers(text, source=str(path))


def parse_triggers(text: str, source: str = "<triggers>") -> list[Trigger]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TriggerConfigError(f"{source}: not TOML: {exc}") from exc
    unknown = set(doc) - {"trigger"}
    if unknown:
        raise TriggerConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
    tables = doc.get("trigger", [])
    if not isinstance(tables, list) or not tables:
        raise TriggerConfigError(f"{source}: declare at least one [[trigger]]")
    if len(tables) > MAX_TRIGGERS:
        raise TriggerConfigError(f"{source}: {len(tables)} triggers; at most {MAX_TRIGGERS}")
    triggers = [_trigger(t, i, source) for i, t in enumerate(tables)]
    names = [t.name for t in triggers]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TriggerConfigError(f"{source}: trigger names must be unique: {dupes}")
    return triggers


_KEYS = {
    "name",
    "subscription",
    "task",
    "project",
    "identity",
    "dead_letter_topic",
    "filter",
    "params",
    "labels",
    "folder",
    "settle",
}


def _trigger(table: Any, index: int, source: str) -> Trigger:
    where = f"{source}: trigger #{index + 1}"
    if not isinstance(table, dict):
        raise TriggerConfigError(f"{where}: not a table")
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TriggerConfigError(
            f"{where}: name must be 1-63 lowercase letters, digits or '-', starting with a letter"
        )
    where = f"{source}: trigger {name!r}"
    unknown = set(table) - _KEYS
    if unknown:
        raise TriggerConfigError(f"{where}: unknown keys {sorted(unknown)}")
    subscription = table.get("subscription")
    folder = table.get("folder")
    if (subscription is None) == (folder is None):
        raise TriggerConfigError(f"{where}: give a subscription or a folder (one of them)")
    if subscription is not None and (
        not isinstance(subscription, str) or not _SUBSCRIPTION.fullmatch(subscription)
    ):
        raise TriggerConfigError(
            f"{where}: subscription must be projects/PROJECT/subscriptions/NAME"
        )
    if folder is not None and (not isinstance(folder, str) or not folder):
        raise TriggerConfigError(f"{where}: folder must be a path")
    settle = table.get("settle", 1.0)
    if isinstance(settle, bool) or not isinstance(settle, (int, float)) or not 0 <= settle <= 3600:
        raise TriggerConfigError(f"{where}: settle must be 0..3600 seconds")
    task = table.get("task")
    if not isinstance(task, str) or not _TASK.fullmatch(task):
        raise TriggerConfigError(f"{where}: task must name a task")
    project = table.get("project", "")
    if not isinstance(project, str):
        raise TriggerConfigError(f"{where}: project must be a string")
    if project:
        try:
            check_project_id(project, field="project")
        except LongrunError as exc:
            raise TriggerConfigError(f"{where}: {exc}") from exc
    identity = table.get("identity", "auto")
    if identity not in IDENTITIES:
        raise TriggerConfigError(f"{where}: identity must be one of {', '.join(IDENTITIES)}")
    dead = table.get("dead_letter_topic")
    if dead is not None and (not isinstance(dead, str) or not _TOPIC.fullmatch(dead)):
        raise TriggerConfigError(f"{where}: dead_letter_topic must be projects/PROJECT/topics/NAME")
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise TriggerConfigError(f"{where}: params must be a table")
    problem = json_problem(params, "params")
    if problem is not None:
        raise TriggerConfigError(f"{where}: {problem[0]} {problem[1]}")
    labels = table.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise TriggerConfigError(f"{where}: labels must be a table of strings")
    labels = {"trigger": name, **labels}
    return Trigger(
        name=name,
        subscription=subscription,
        task=task,
        project=project,
        identity=identity,
        dead_letter_topic=dead,
        filter=_filter(table.get("filter", {}), where),
        params=params,
        labels=labels,
        folder=Path(folder) if folder is not None else None,
        settle=float(settle),
    )


def _filter(table: Any, where: str) -> tuple[AttributeMatch, ...]:
    if not isinstance(table, dict):
        raise TriggerConfigError(f"{where}: filter must be a table of attribute tests")
    out = []
    for name, test in table.items():
        if isinstance(test, str):
            out.append(AttributeMatch(name, equals=test))
            continue
        if not isinstance(test, dict) or not test or set(test) - set(_MATCHERS):
            raise TriggerConfigError(
                f"{where}: filter.{name} must be a string or a table of {', '.join(_MATCHERS)}"
            )
        any_of = test.get("any_of")
        if any_of is not None and not (
            isinstance(any_of, list) and all(isinstance(v, str) for v in any_of)
        ):
            raise TriggerConfigError(f"{where}: filter.{name}.any_of must be a list of strings")
        present = test.get("present")
        if present is not None and not isinstance(present, bool):
            raise TriggerConfigError(f"{where}: filter.{name}.present must be true or false")
        for key in ("equals", "prefix", "suffix"):
            if key in test and not isinstance(test[key], str):
                raise TriggerConfigError(f"{where}: filter.{name}.{key} must be a string")
        out.append(
            AttributeMatch(
                name,
                equals=test.get("equals"),
                prefix=test.get("prefix"),
                suffix=test.get("suffix"),
                any_of=tuple(any_of) if any_of is not None else None,
                present=present,
            )
        )
    return tuple(out)
