"""Tokens of the filter language.

Words run until whitespace or one of `( ) " ' < > = ! : ,`; so a word may hold
dots (`metadata.task`), dashes (`-3`, `my-key`) and stars (`sle*`). Quoted
strings (double or single quotes) take backslash escapes; an unescaped `*` in
either is a wildcard, so values are kept as the parts between wildcards.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from longrun_core.filtering.errors import filter_error

AND, OR, NOT = "AND", "OR", "NOT"
_SPECIAL = frozenset("()\"'<>=!:,")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t", "r": "\r"}
_HEX4 = re.compile(r"[0-9A-Fa-f]{4}")


class Tok(enum.Enum):
    WORD = "word"
    STRING = "string"
    LPAREN = "("
    RPAREN = ")"
    CMP = "comparator"
    AND = AND
    OR = OR
    NOT = NOT
    END = "end of filter"


@dataclass(frozen=True, slots=True)
class Token:
    kind: Tok
    #: The source text of the token (a string with its quotes).
    text: str
    #: 0-based offsets into the filter text.
    start: int
    end: int
    #: WORD and STRING: the decoded value split at unescaped `*` wildcards.
    parts: tuple[str, ...] = ()

    @property
    def column(self) -> int:
        return self.start + 1

    def describe(self) -> str:
        if self.kind is Tok.END:
            return "the end of the filter"
        return repr(self.text)


def tokenize(text: str) -> list[Token]:
    """All tokens of `text`, ending with one END token."""
    _check_characters(text)
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "(":
            tokens.append(Token(Tok.LPAREN, c, i, i + 1))
            i += 1
        elif c == ")":
            tokens.append(Token(Tok.RPAREN, c, i, i + 1))
            i += 1
        elif c in "\"'":
            token = _string(text, i)
            tokens.append(token)
            i = token.end
        elif c in "<>":
            width = 2 if text.startswith("=", i + 1) else 1
            tokens.append(Token(Tok.CMP, text[i : i + width], i, i + width))
            i += width
        elif c in "=:":
            tokens.append(Token(Tok.CMP, c, i, i + 1))
            i += 1
        elif c == "!":
            if not text.startswith("=", i + 1):
                raise filter_error(text, i + 1, "unexpected '!'", "use '!=' or NOT")
            tokens.append(Token(Tok.CMP, "!=", i, i + 2))
            i += 2
        elif c == ",":
            raise filter_error(text, i + 1, "unexpected ','", "functions are not supported")
        else:
            j = i
            while j < n and text[j] not in _SPECIAL and not text[j].isspace():
                j += 1
            word = text[i:j]
            kind = Tok[word] if word in (AND, OR, NOT) else Tok.WORD
            tokens.append(Token(kind, word, i, j, tuple(word.split("*"))))
            i = j
    tokens.append(Token(Tok.END, "", n, n))
    return tokens


def word_token(text: str, start: int, end: int) -> Token:
    """A WORD (or keyword) token for `text[start:end]` (used to split `-word`)."""
    word = text[start:end]
    kind = Tok[word] if word in (AND, OR, NOT) else Tok.WORD
    return Token(kind, word, start, end, tuple(word.split("*")))


def _check_characters(text: str) -> None:
    for i, c in enumerate(text):
        if c == "\0":
            raise filter_error(text, i + 1, "NUL character")
        if "\ud800" <= c <= "\udfff":
            raise filter_error(text, i + 1, "unpaired surrogate (not valid Unicode text)")


def _string(text: str, start: int) -> Token:
    quote = text[start]
    parts: list[str] = []
    buf: list[str] = []
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if c == quote:
            parts.append("".join(buf))
            return Token(Tok.STRING, text[start : i + 1], start, i + 1, tuple(parts))
        if c == "*":
            parts.append("".join(buf))
            buf = []
            i += 1
        elif c != "\\":
            buf.append(c)
            i += 1
        elif i + 1 >= n:
            break
        else:
            e = text[i + 1]
            if e in _ESCAPES:
                buf.append(_ESCAPES[e])
                i += 2
            elif e == "*":
                buf.append("*")
                i += 2
            elif e == "u" and _HEX4.fullmatch(text, i + 2, i + 6):
                code = int(text[i + 2 : i + 6], 16)
                if code == 0 or 0xD800 <= code <= 0xDFFF:
                    raise filter_error(
                        text,
                        i + 1,
                        f"escape '\\u{text[i + 2 : i + 6]}' is not allowed",
                        "NUL and surrogates cannot appear in a filter",
                    )
                buf.append(chr(code))
                i += 6
            else:
                raise filter_error(
                    text,
                    i + 1,
                    f"unknown escape '\\{e}' in a string",
                    "use \\\\ \\\" \\' \\* \\n \\t \\r or \\uXXXX",
                )
    raise filter_error(text, start + 1, "unterminated string", f"close it with {quote}")
