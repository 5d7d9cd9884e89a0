"""Recursive-descent parser for the AIP-160 subset (grammar in the package
docstring). Each restriction is type-checked as soon as it is read."""

from __future__ import annotations

from longrun_core.filtering.ast import Expr, Not, conjunction, disjunction
from longrun_core.filtering.bind import bind
from longrun_core.filtering.errors import filter_error
from longrun_core.filtering.lexer import Tok, Token, tokenize, word_token

MAX_LENGTH = 2000
MAX_DEPTH = 32
MAX_TERMS = 100

_TERM_START = frozenset({Tok.WORD, Tok.STRING, Tok.LPAREN, Tok.NOT})
_VALUE = frozenset({Tok.WORD, Tok.STRING})


def parse(text: str) -> Expr:
    """The checked tree of a non-blank filter; InvalidArgument if it is not one."""
    if len(text) > MAX_LENGTH:
        raise filter_error(
            text,
            MAX_LENGTH + 1,
            f"filter is {len(text)} characters long, over the limit of {MAX_LENGTH}",
        )
    return _Parser(text).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0
        self.depth = 0
        self.terms = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> Expr:
        expr = self.expression()
        token = self.peek()
        if token.kind is not Tok.END:
            raise self.unexpected(token)
        return expr

    # expression := sequence {AND sequence}
    def expression(self) -> Expr:
        items = [self.sequence()]
        while self.peek().kind is Tok.AND:
            self.advance()
            items.append(self.sequence())
        return conjunction(items)

    # sequence := factor {factor}      (juxtaposition means AND)
    def sequence(self) -> Expr:
        items = [self.factor()]
        while self.peek().kind in _TERM_START:
            items.append(self.factor())
        return conjunction(items)

    # factor := term {OR term}         (OR binds tighter than AND)
    def factor(self) -> Expr:
        items = [self.term()]
        while self.peek().kind is Tok.OR:
            self.advance()
            items.append(self.term())
        return disjunction(items)

    # term := [NOT | '-'] simple
    def term(self) -> Expr:
        token = self.peek()
        if token.kind is Tok.NOT:
            self.advance()
            return Not(self.simple(after=token))
        if token.kind is Tok.WORD and token.text.startswith("-"):
            self.advance()
            if token.text != "-":
                rest = word_token(self.text, token.start + 1, token.end)
                if rest.kind is Tok.WORD and not rest.text.startswith("-"):
                    self.tokens.insert(self.pos, rest)
                    return Not(self.simple(after=token))
            elif self.peek().kind is Tok.LPAREN and self.peek().start == token.end:
                return Not(self.simple(after=token))
            raise filter_error(
                self.text,
                token.column,
                "'-' must be followed directly by a restriction or '('",
                "write -field:value, -(...) or NOT ...",
            )
        return self.simple(after=None)

    # simple := restriction | '(' expression ')'
    def simple(self, after: Token | None) -> Expr:
        token = self.peek()
        if token.kind is Tok.LPAREN:
            return self.composite()
        if token.kind in _VALUE:
            return self.restriction()
        if after is not None:
            raise filter_error(
                self.text,
                token.column,
                f"expected a restriction or '(' after {after.text}, found {token.describe()}",
            )
        raise self.unexpected(token)

    def composite(self) -> Expr:
        opening = self.advance()
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise filter_error(
                self.text, opening.column, f"parentheses nest deeper than {MAX_DEPTH} levels"
            )
        if self.peek().kind is Tok.RPAREN:
            raise filter_error(self.text, opening.column, "empty parentheses")
        expr = self.expression()
        closing = self.peek()
        if closing.kind is not Tok.RPAREN:
            raise filter_error(
                self.text,
                closing.column,
                f"expected ')' to close the '(' at column {opening.column}, "
                f"found {closing.describe()}",
            )
        self.advance()
        self.depth -= 1
        return expr

    # restriction := field comparator value
    def restriction(self) -> Expr:
        member = self.advance()
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise filter_error(self.text, member.column, f"more than {MAX_TERMS} restrictions")
        comparator = self.peek()
        if comparator.kind is not Tok.CMP:
            raise filter_error(
                self.text,
                member.column,
                f"{member.text} is not a restriction",
                "write field comparator value, e.g. done = true "
                "(free-text search is not supported; AND, OR and NOT are upper case)",
            )
        self.advance()
        arg = self.peek()
        if arg.kind not in _VALUE:
            raise filter_error(
                self.text,
                arg.column,
                f"expected a value after '{comparator.text}', found {arg.describe()}",
            )
        self.advance()
        return bind(self.text, member, comparator, arg)

    def unexpected(self, token: Token) -> Exception:
        hint: str | None = None
        if token.kind is Tok.CMP:
            hint = "quote values that contain ':', '=', '<', '>' or '!', such as timestamps"
        elif token.kind is Tok.RPAREN:
            hint = "this ')' closes nothing"
        elif token.kind in (Tok.AND, Tok.OR):
            hint = f"{token.text} needs a restriction on both sides"
        elif token.kind is Tok.END:
            return filter_error(
                self.text, token.column, "unexpected end of the filter", "expected a restriction"
            )
        return filter_error(self.text, token.column, f"unexpected {token.describe()}", hint)
