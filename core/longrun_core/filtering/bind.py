"""Type-checks one restriction (`field comparator value`) into a tree leaf."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

from google.rpc import code_pb2

from longrun_core.clock import to_micros
from longrun_core.filtering.ast import Compare, Expr, Op, Pattern, Present, Timestamp, Value
from longrun_core.filtering.errors import filter_error
from longrun_core.filtering.fields import (
    FIELDS,
    KNOWN_FIELDS,
    LABEL_KEY,
    LABELS_PREFIXES,
    Field,
    Kind,
    label_field,
)
from longrun_core.filtering.lexer import Tok, Token
from longrun_core.model import State

_INT = re.compile(r"-?[0-9]+")
_FLOAT = re.compile(r"-?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|-?[0-9]+[eE][+-]?[0-9]+")
_TIMESTAMP = re.compile(
    r"(?P<y>[0-9]{4})-(?P<mo>[0-9]{2})-(?P<d>[0-9]{2})[Tt]"
    r"(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})(?:\.(?P<frac>[0-9]{1,9}))?"
    r"(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>[0-9]{2}):(?P<om>[0-9]{2}))"
)
_INT64 = range(-(2**63), 2**63)
_ORDERED = frozenset({Kind.STRING, Kind.LABEL, Kind.INT, Kind.TIMESTAMP})
_RPC_CODES = {name: int(value) for name, value in code_pb2.Code.items()}
_STATES = ", ".join(s.name for s in State)
_TIMESTAMP_HINT = 'use a quoted RFC 3339 timestamp such as "2026-01-01T00:00:00Z"'


def bind(text: str, member: Token, comparator: Token, arg: Token) -> Expr:
    field = resolve_field(text, member)
    if comparator.text == ":":
        if Pattern.of(arg.parts).matches_all:  # `*`, `"*"`, `**`
            return Present(field)
        if field.kind is Kind.MAP:
            return Present(label_field(_label_key(text, arg)))
        if field.kind is Kind.MESSAGE:
            raise filter_error(
                text,
                arg.column,
                f"'{field.path}:' takes only '*'",
                f"use {field.path}:* to test for an error, or error.code",
            )
        op = Op.EQ
    else:
        op = Op(comparator.text)
    if field.kind is Kind.MAP:
        raise filter_error(
            text,
            member.column,
            f"{field.path} is a map and cannot be compared",
            f"use {field.path}.<key> = value, {field.path}:<key> or {field.path}.<key>:*",
        )
    if field.kind is Kind.MESSAGE:
        raise filter_error(
            text,
            member.column,
            f"{field.path} is a message and cannot be compared",
            f"use {field.path}:* or {field.path}.code",
        )
    if op not in (Op.EQ, Op.NE) and field.kind not in _ORDERED:
        raise filter_error(
            text,
            comparator.column,
            f"operator '{op.value}' does not apply to {field.path} ({field.kind.value})",
            "use =, != or :",
        )
    return Compare(field, op, _value(text, field, op, arg))


def resolve_field(text: str, member: Token) -> Field:
    if member.kind is Tok.STRING:
        raise filter_error(
            text,
            member.column,
            f"field name {member.text} is quoted",
            "write field names without quotes",
        )
    path = member.text
    field = FIELDS.get(path)
    if field is not None:
        return field
    for prefix in LABELS_PREFIXES:
        if path.startswith(prefix):
            key = path[len(prefix) :]
            if not LABEL_KEY.fullmatch(key):
                raise filter_error(
                    text,
                    member.column + len(prefix),
                    f"invalid label key {key!r}",
                    "label keys are 1-63 letters, digits, '_' or '-'",
                )
            return label_field(key)
    raise filter_error(
        text, member.column, f"unknown field {path!r}", f"known fields: {KNOWN_FIELDS}"
    )


def _label_key(text: str, arg: Token) -> str:
    key = "*".join(arg.parts)
    if len(arg.parts) != 1 or not LABEL_KEY.fullmatch(key):
        raise filter_error(
            text,
            arg.column,
            f"invalid label key {arg.text}",
            "labels:<key> takes a key of 1-63 letters, digits, '_' or '-' (no wildcards)",
        )
    return key


def _value(text: str, field: Field, op: Op, arg: Token) -> Value:
    if field.kind in (Kind.STRING, Kind.LABEL):
        pattern = Pattern.of(arg.parts)
        if pattern.has_wildcard and op not in (Op.EQ, Op.NE):
            raise filter_error(
                text,
                arg.column,
                f"wildcard in {arg.text} with '{op.value}'",
                "wildcards work with =, != and :; in a quoted string \\* is a literal star",
            )
        return pattern
    if len(arg.parts) > 1:
        raise filter_error(
            text,
            arg.column,
            f"{field.path} is {field.kind.value}, so {arg.text} cannot be a wildcard",
            "wildcards apply to strings only",
        )
    raw = arg.parts[0]
    if field.kind is Kind.BOOL:
        if raw in ("true", "false"):
            return raw == "true"
        raise _wrong_type(text, field, arg, "use true or false")
    if field.kind is Kind.ENUM:
        if raw in State.__members__:
            return State[raw]
        if _INT.fullmatch(raw) and int(raw) in State._value2member_map_:
            return State(int(raw))
        raise filter_error(
            text, arg.column, f"unknown {field.path} {arg.text}", f"use one of {_STATES}"
        )
    if field.kind is Kind.TIMESTAMP:
        return _timestamp(text, field, arg)
    if field.path == "error.code" and raw in _RPC_CODES:
        return _RPC_CODES[raw]
    return _number(text, field, arg)


def _wrong_type(text: str, field: Field, arg: Token, hint: str) -> Exception:
    return filter_error(
        text, arg.column, f"{field.path} is {field.kind.value}, got {arg.text}", hint
    )


def _number(text: str, field: Field, arg: Token) -> int | float:
    raw = arg.parts[0]
    if _INT.fullmatch(raw):
        value = int(raw)
        if value not in _INT64:
            raise filter_error(text, arg.column, f"number {raw} is out of the 64-bit range")
        return value
    if _FLOAT.fullmatch(raw):
        number = float(raw)
        if not math.isfinite(number):
            raise filter_error(text, arg.column, f"number {raw} is out of range")
        return number
    hint = "use an integer or a decimal number"
    if field.path == "error.code":
        hint += " or a google.rpc.Code name such as NOT_FOUND"
    raise _wrong_type(text, field, arg, hint)


def _timestamp(text: str, field: Field, arg: Token) -> Timestamp:
    m = _TIMESTAMP.fullmatch(arg.parts[0])
    if m is None:
        raise _wrong_type(text, field, arg, _TIMESTAMP_HINT)
    try:
        tz = UTC
        if m["sign"]:
            if int(m["om"]) > 59:
                raise ValueError("offset minutes must be below 60")
            offset = timedelta(hours=int(m["oh"]), minutes=int(m["om"]))
            tz = timezone(-offset if m["sign"] == "-" else offset)
        when = datetime(
            int(m["y"]),
            int(m["mo"]),
            int(m["d"]),
            int(m["h"]),
            int(m["mi"]),
            int(m["s"]),
            tzinfo=tz,
        )
        when.astimezone(UTC)  # OverflowError outside years 1-9999 in UTC
    except (ValueError, OverflowError) as exc:
        raise filter_error(
            text, arg.column, f"invalid timestamp {arg.text} ({exc})", _TIMESTAMP_HINT
        ) from None
    frac = int((m["frac"] or "").ljust(9, "0"))
    return Timestamp(to_micros(when) * 1000 + frac)
