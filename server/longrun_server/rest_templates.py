"""`google.api.http` path templates (google/api/http.proto): parse
`/v1/{name=operations/**}:cancel`, match a request path against it, and return
the values of its variables.

Grammar (the subset of http.proto this gateway accepts):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

`*` matches one path segment, `**` zero or more (it must be the last segment),
`{var}` is `{var=*}`. Matching works on the raw (percent-encoded) path, so an
encoded `%3A` or `%2F` inside a name never acts as a verb or segment separator.
A variable of one segment is fully percent-decoded; a variable of several
segments keeps `%2F` encoded, as http.proto specifies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LITERAL_FORBIDDEN = set("{}=:/*?#")


class TemplateError(ValueError):
    """A path template that does not follow the grammar."""


@dataclass(frozen=True)
class Variable:
    """`{field.path=...}` covering template segments [start, end)."""

    field_path: str
    start: int
    end: int


@dataclass(frozen=True)
class PathTemplate:
    text: str
    #: Each segment is a literal, "*" or "**".
    segments: tuple[str, ...]
    variables: tuple[Variable, ...]
    verb: str

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        return _Parser(text).parse()

    @property
    def specificity(self) -> tuple[int, int, int, int]:
        """Sort key, larger is more specific: when several templates match a
        path (`operations` and `operations/**` both match `/v1/operations`),
        the most specific one wins."""
        literals = sum(1 for s in self.segments if s not in ("*", "**"))
        return (
            literals,
            1 if self.verb else 0,
            0 if "**" in self.segments else 1,
            len(self.segments),
        )

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Variable values ({field path: value}) if `raw_path` (percent-encoded,
        without the query string) matches, else None."""
        if not raw_path.startswith("/"):
            return None
        path = raw_path[1:]
        if self.verb:
            suffix = ":" + self.verb
            if not path.endswith(suffix):
                return None
            path = path[: -len(suffix)]
        parts = path.split("/")
        spans = self._spans(parts)
        if spans is None:
            return None
        values: dict[str, str] = {}
        for var in self.variables:
            first = spans[var.start][0]
            last = spans[var.end - 1][1]
            chosen = parts[first:last]
            single = var.end - var.start == 1 and self.segments[var.start] != "**"
            if single:
                values[var.field_path] = unquote(chosen[0])
            else:
                values[var.field_path] = "/".join(_unquote_keep_slash(p) for p in chosen)
        return values

    def _spans(self, parts: list[str]) -> list[tuple[int, int]] | None:
        """For each template segment, the [start, end) range of `parts` it
        covers; None when the path does not match."""
        open_ended = bool(self.segments) and self.segments[-1] == "**"
        fixed = len(self.segments) - 1 if open_ended else len(self.segments)
        if len(parts) < fixed or (not open_ended and len(parts) != fixed):
            return None
        spans: list[tuple[int, int]] = []
        for i in range(fixed):
            seg, part = self.segments[i], parts[i]
            if not part:
                return None
            if seg != "*" and unquote(part) != seg:
                return None
            spans.append((i, i + 1))
        if open_ended:
            if any(not p for p in parts[fixed:]):
                return None
            spans.append((fixed, len(parts)))
        return spans


def _unquote_keep_slash(part: str) -> str:
    pieces = re.split(r"(%2[Ff])", part)
    return "".join(p if i % 2 else unquote(p) for i, p in enumerate(pieces))


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.segments: list[str] = []
        self.variables: list[Variable] = []

    def fail(self, what: str) -> TemplateError:
        return TemplateError(f"bad path template {self.text!r} at {self.pos}: {what}")

    def parse(self) -> PathTemplate:
        if not self.text.startswith("/"):
            raise self.fail("must start with '/'")
        self.pos = 1
        self.parse_segments(inside_variable=False)
        verb = ""
        if self.pos < len(self.text) and self.text[self.pos] == ":":
            verb = self.text[self.pos + 1 :]
            if not verb or any(c in _LITERAL_FORBIDDEN for c in verb):
                raise self.fail(f"bad verb {verb!r}")
            self.pos = len(self.text)
        if self.pos != len(self.text):
            raise self.fail(f"unexpected {self.text[self.pos]!r}")
        if "**" in self.segments[:-1]:
            raise self.fail("'**' must be the last segment")
        names = [v.field_path for v in self.variables]
        if len(set(names)) != len(names):
            raise self.fail("a field is bound twice")
        return PathTemplate(self.text, tuple(self.segments), tuple(self.variables), verb)

    def parse_segments(self, *, inside_variable: bool) -> None:
        while True:
            self.parse_segment(inside_variable=inside_variable)
            if self.pos < len(self.text) and self.text[self.pos] == "/":
                self.pos += 1
                continue
            return

    def parse_segment(self, *, inside_variable: bool) -> None:
        if self.pos < len(self.text) and self.text[self.pos] == "{":
            if inside_variable:
                raise self.fail("variables cannot nest")
            self.parse_variable()
            return
        end = self.pos
        while end < len(self.text) and self.text[end] not in "/:}{":
            end += 1
        literal = self.text[self.pos : end]
        if literal not in ("*", "**") and (
            not literal or any(c in _LITERAL_FORBIDDEN for c in literal)
        ):
            raise self.fail(f"bad segment {literal!r}")
        self.segments.append(literal)
        self.pos = end

    def parse_variable(self) -> None:
        self.pos += 1  # "{"
        end = self.pos
        while end < len(self.text) and self.text[end] not in "=}":
            end += 1
        if end == len(self.text):
            raise self.fail("unclosed '{'")
        field_path = self.text[self.pos : end]
        if not all(_IDENT.match(part) for part in field_path.split(".")):
            raise self.fail(f"bad field path {field_path!r}")
        start = len(self.segments)
        self.pos = end
        if self.text[self.pos] == "=":
            self.pos += 1
            self.parse_segments(inside_variable=True)
        else:
            self.segments.append("*")
        if self.pos >= len(self.text) or self.text[self.pos] != "}":
            raise self.fail("expected '}'")
        self.pos += 1
        self.variables.append(Variable(field_path, start, len(self.segments)))
