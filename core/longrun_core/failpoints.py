"""Failpoints for fault-injection tests: named places in the code that can be
made to crash the process, set through `LONGRUN_FAILPOINTS` (comma-separated
`name=action`, action `exit` = `os._exit(86)` at once, no clean-up).

Known names:
* `after_store`: CreateJob has stored the operation and not yet published it.
* `before_ack`: a worker has written an outcome and not yet acked the message.

An unset variable costs one dict lookup per point; nothing else changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

EXIT_CODE = 86


class Failpoints:
    def __init__(self, spec: str = "") -> None:
        self._actions: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            name, _, action = item.partition("=")
            if action != "exit":
                raise ValueError(f"failpoint {item!r}: the only action is 'exit'")
            self._actions[name] = action

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> Failpoints:
        return Failpoints((os.environ if env is None else env).get("LONGRUN_FAILPOINTS", ""))

    def hit(self, name: str) -> None:
        if self._actions.get(name) == "exit":
            os._exit(EXIT_CODE)
