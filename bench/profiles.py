"""Summarize a py-spy collapsed-stack profile (`bench/results/<name>.txt`,
written next to the flame graph by `--profile`): the share of samples
spent in (inclusive) and directly inside (self) each function.

    python -m bench.profiles bench/results/get_operation.txt [--top 25] [--match lro/]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


@dataclass
class Summary:
    samples: int
    inclusive: Counter[str]
    self_: Counter[str]


def frame_key(frame: str) -> str:
    """`fn (path/file.py:123)` -> `fn (path/file.py)`; short paths for site-packages."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker.startswith("lib/"):
                path = "stdlib/" + path.split("/", 1)[-1]
    return f"{m.group('fn')} ({path})"


def summarize(lines: Iterable[str]) -> Summary:
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in lines:
        m = _LINE.match(line.rstrip("\n"))
        if not m:
            continue
        stack, count = m.group(1), int(m.group(2))
        frames = [frame_key(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += count
        for key in set(frames):
            inclusive[key] += count
        self_[frames[-1]] += count
    return Summary(total, inclusive, self_)


def report(summary: Summary, top: int, match: str | None) -> str:
    def rows(counter: Counter[str]) -> list[str]:
        out = []
        for key, n in counter.most_common():
            if match and match not in key:
                continue
            out.append(f"  {100 * n / summary.samples:5.1f}%  {key}")
            if len(out) == top:
                break
        return out

    return "\n".join(
        [
            f"{summary.samples} samples",
            "inclusive:",
            *rows(summary.inclusive),
            "self:",
            *rows(summary.self_),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default=None, help="only frames whose text contains this")
    args = parser.parse_args()
    with args.profile.open() as f:
        print(report(summarize(f), args.top, args.match))


if __name__ == "__main__":
    main()
