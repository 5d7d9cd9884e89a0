"""Page tokens: opaque, URL-safe, signed, bound to the query they page."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from longrun_core.errors import InvalidArgument
from longrun_core.store import Cursor, PageTokens

SECRET = b"s3cret-for-tests"
BINDING = "operations|filter=done = true"
URL_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")

CURSOR = Cursor(datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), "0f3e9a")

cursors = st.builds(
    Cursor,
    create_time=st.datetimes(
        min_value=datetime(1970, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.just(UTC),
    ),
    id=st.text(max_size=200),
)


def _reason(token: str, binding: str = BINDING, secret: bytes = SECRET) -> str:
    with pytest.raises(InvalidArgument) as info:
        PageTokens(secret).decode(token, binding)
    return info.value.reason


def test_a_token_decodes_to_its_cursor() -> None:
    tokens = PageTokens(SECRET)
    assert tokens.decode(tokens.encode(CURSOR, BINDING), BINDING) == CURSOR


@settings(database=None, deadline=None)
@given(cursor=cursors, binding=st.text())
def test_any_cursor_round_trips_through_a_url_safe_token(cursor: Cursor, binding: str) -> None:
    tokens = PageTokens(SECRET)

    token = tokens.encode(cursor, binding)

    assert URL_SAFE.match(token), token
    assert tokens.decode(token, binding) == cursor


def test_a_token_does_not_show_the_binding() -> None:
    token = PageTokens(SECRET).encode(CURSOR, BINDING)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"filter" not in raw


def test_every_single_bit_flip_is_detected() -> None:
    token = PageTokens(SECRET).encode(CURSOR, BINDING)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))

    for index in range(len(raw)):
        for bit in range(8):
            tampered = bytearray(raw)
            tampered[index] ^= 1 << bit
            forged = base64.urlsafe_b64encode(bytes(tampered)).decode().rstrip("=")
            assert _reason(forged) == "PAGE_TOKEN_INVALID", (index, bit)


def test_a_truncated_or_extended_token_is_invalid() -> None:
    token = PageTokens(SECRET).encode(CURSOR, BINDING)
    assert _reason(token[:-4]) == "PAGE_TOKEN_INVALID"
    assert _reason(token + "AAAA") == "PAGE_TOKEN_INVALID"
    assert _reason("") == "PAGE_TOKEN_INVALID"


def test_a_token_for_another_query_is_a_mismatch() -> None:
    token = PageTokens(SECRET).encode(CURSOR, BINDING)

    with pytest.raises(InvalidArgument) as info:
        PageTokens(SECRET).decode(token, "operations|filter=done = false")

    assert info.value.reason == "PAGE_TOKEN_MISMATCH"
    assert "same" in info.value.message


def test_a_token_signed_with_another_secret_is_invalid() -> None:
    token = PageTokens(b"another secret").encode(CURSOR, BINDING)
    assert _reason(token) == "PAGE_TOKEN_INVALID"


def test_a_hand_made_token_without_the_secret_is_invalid() -> None:
    body = b'[1893553445678901,"0f3e9a","0000000000000000"]'
    forged = base64.urlsafe_b64encode(b"\0" * 16 + body).decode().rstrip("=")
    assert _reason(forged) == "PAGE_TOKEN_INVALID"


@settings(database=None, deadline=None, max_examples=300)
@given(
    token=st.one_of(
        st.text(),
        st.from_regex(r"[A-Za-z0-9_=-]*", fullmatch=True),
        st.binary().map(lambda b: base64.urlsafe_b64encode(b).decode()),
    )
)
def test_garbage_is_only_ever_invalid_argument(token: str) -> None:
    try:
        PageTokens(SECRET).decode(token, BINDING)
    except InvalidArgument as exc:
        assert exc.reason == "PAGE_TOKEN_INVALID"
    else:  # pragma: no cover - would mean a forged signature
        pytest.fail(f"garbage accepted: {token!r}")
