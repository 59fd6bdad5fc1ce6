"""The query language: a hand-written tokenizer and recursive-descent parser, the printer that
writes an AST back as query text, and the validator every compiler runs first.

The grammar is in docs/query-language.md. In short::

    query     = or_expr EOF
    or_expr   = and_expr { "OR" and_expr }
    and_expr  = unary { "AND" unary }
    unary     = "NOT" unary | primary
    primary   = "(" or_expr ")" | "HAS" field | field op value
    value     = scalar | "[" scalar { "," scalar } "]"
    scalar    = ( bare_word | quoted_string ) [ "*" ]

Tokens depend on where the parser is: after an operator a bare word may also hold ``:`` and
``+`` (``mtime < 2026-01-01T12:00:00+02:00``, ``uri=s3://bucket/a.jpg``), elsewhere ``:`` is the
match operator. That is why the parser reads characters on demand instead of from a token list.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from imageindex.query.ast import (
    And,
    Compare,
    Has,
    Node,
    Not,
    Or,
    Prefix,
    QueryError,
    Scalar,
    Value,
    depth,
    walk,
)
from imageindex.query.fields import (
    FieldSpec,
    check_compare,
    check_operator,
    coerce,
    lookup,
)

#: Longest query accepted, in characters.
MAX_QUERY_LENGTH = 4000
#: Deepest nesting of parentheses and NOTs in query text.
MAX_DEPTH = 32
#: Most values (each list element counts) and HAS conditions in one query.
MAX_TERMS = 200
#: Deepest AST :func:`validate` accepts; parsed queries stay well below it.
MAX_AST_DEPTH = 2 * MAX_DEPTH + 2

_KEYWORDS = frozenset({"AND", "OR", "NOT", "HAS"})
_OPS_TWO = ("!=", "<=", ">=")
_OPS_ONE = (":", "=", "<", ">")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
_ESCAPE_HELP = "use \\\" \\' \\\\ \\n \\t \\r or \\uXXXX"
_OPS_HELP = ": = != < <= > >="


def _is_word_char(c: str) -> bool:
    return c in "_-./" or unicodedata.category(c)[0] in "LMN"


def _is_value_start(c: str) -> bool:
    return _is_word_char(c) or c == "+"


def _is_value_char(c: str) -> bool:
    return _is_value_start(c) or c == ":"


def _char_name(c: str) -> str:
    if c.isprintable() and not c.isspace():
        return repr(c)
    return f"U+{ord(c):04X}"


@dataclass
class _Tok:
    #: "(", ")", "op", "word", "eof" or "char" (anything else, one character)
    kind: str
    text: str
    pos: int

    @property
    def keyword(self) -> str | None:
        up = self.text.upper() if self.kind == "word" else ""
        return up if up in _KEYWORDS else None


def _describe(tok: _Tok) -> str:
    if tok.kind == "eof":
        return "the end of the query"
    if tok.kind == "char":
        c = tok.text
        hint = {
            '"': " (a quoted string)",
            "'": " (a quoted string)",
            "&": "; write AND",
            "|": "; write OR",
            "!": "; write NOT",
            ",": "; a list needs brackets: tags:[cat, dog]",
            "[": "; a list goes after an operator: tags:[cat, dog]",
            "]": "; a list goes after an operator: tags:[cat, dog]",
            "*": "; '*' goes right after a value for a prefix match: uri=s3://bucket/cats/*",
        }.get(c, "")
        return f"{_char_name(c)}{hint}"
    text = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return repr(text)


class _Parser:
    def __init__(self, text: str, fields: Mapping[str, FieldSpec] | None):
        self.text = text
        self.n = len(text)
        self.fields = fields
        self.pos = 0
        self.terms = 0

    def error(self, message: str, pos: int) -> QueryError:
        return QueryError(message, query=self.text, position=pos)

    # ---------------------------------------------------------------------------- tokens

    def _skip_ws(self) -> None:
        while self.pos < self.n and self.text[self.pos].isspace():
            self.pos += 1

    def _next(self) -> _Tok:
        self._skip_ws()
        i = self.pos
        if i >= self.n:
            return _Tok("eof", "", i)
        c = self.text[i]
        if c in "()":
            self.pos = i + 1
            return _Tok(c, c, i)
        if self.text[i : i + 2] in _OPS_TWO:
            self.pos = i + 2
            return _Tok("op", self.text[i : i + 2], i)
        if c in _OPS_ONE:
            self.pos = i + 1
            return _Tok("op", c, i)
        if _is_word_char(c):
            j = i
            while j < self.n and _is_word_char(self.text[j]):
                j += 1
            self.pos = j
            return _Tok("word", self.text[i:j], i)
        self.pos = i + 1
        return _Tok("char", c, i)

    def _peek(self) -> _Tok:
        saved = self.pos
        try:
            return self._next()
        finally:
            self.pos = saved

    def _count_term(self, pos: int) -> None:
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise self.error(
                f"the query has more than {MAX_TERMS} conditions and list values; split it "
                "or use fewer values",
                pos,
            )

    # ---------------------------------------------------------------------------- grammar

    def parse(self) -> Node:
        if not self.text.strip():
            raise self.error("the query is empty; write a condition such as tags:cat", 0)
        node = self._or(0)
        tok = self._next()
        if tok.kind == ")":
            raise self.error(f"unmatched ')' at {self._where(tok.pos)}", tok.pos)
        if tok.kind != "eof":
            raise self.error(self._expected_join(tok), tok.pos)
        return node

    def _where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}" if "\n" in self.text else f"column {col}"

    def _expected_join(self, tok: _Tok) -> str:
        msg = f"expected AND or OR at {self._where(tok.pos)}, found {_describe(tok)}"
        if tok.kind in ("word", "("):
            msg += " (conditions are joined explicitly: a AND b, a OR b, a AND NOT b)"
        return msg

    def _or(self, level: int) -> Node:
        items = [self._and(level)]
        while self._peek().keyword == "OR":
            self._next()
            items.append(self._and(level))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _and(self, level: int) -> Node:
        items = [self._unary(level)]
        while True:
            tok = self._peek()
            if tok.keyword == "AND":
                self._next()
                items.append(self._unary(level))
            elif tok.keyword == "OR" or tok.kind in (")", "eof"):
                break
            else:
                raise self.error(self._expected_join(tok), tok.pos)
        return items[0] if len(items) == 1 else And(tuple(items))

    def _deeper(self, level: int, pos: int) -> int:
        if level + 1 > MAX_DEPTH:
            raise self.error(
                f"the query nests deeper than {MAX_DEPTH} levels of parentheses and NOT; "
                "simplify it",
                pos,
            )
        return level + 1

    def _unary(self, level: int) -> Node:
        tok = self._peek()
        if tok.keyword == "NOT":
            self._next()
            return Not(self._unary(self._deeper(level, tok.pos)))
        return self._primary(level)

    def _primary(self, level: int) -> Node:
        tok = self._next()
        if tok.kind == "(":
            node = self._or(self._deeper(level, tok.pos))
            close = self._next()
            if close.kind != ")":
                raise self.error(
                    f"expected ')' at {self._where(close.pos)} to close the '(' at "
                    f"{self._where(tok.pos)}, found {_describe(close)}",
                    close.pos,
                )
            return node
        if tok.keyword == "HAS":
            name = self._next()
            if name.kind != "word" or name.keyword:
                raise self.error(
                    f"expected a field name after HAS at {self._where(name.pos)}, found "
                    f"{_describe(name)}",
                    name.pos,
                )
            spec = self._field(name, has=True)
            self._count_term(name.pos)
            return Has(spec.name)
        if tok.kind == "word" and not tok.keyword:
            return self._comparison(tok)
        raise self.error(
            "expected a condition (field:value, HAS field, NOT ..., or '(') at "
            f"{self._where(tok.pos)}, found "
            f"{_describe(tok)}",
            tok.pos,
        )

    def _field(self, tok: _Tok, *, has: bool = False) -> FieldSpec:
        try:
            return lookup(self.fields, tok.text)
        except QueryError as exc:
            msg = exc.message
            if not has and self._peek().kind != "op":
                msg += f". To find a tag write tags:{tok.text}"
            raise self.error(msg, tok.pos) from None

    def _comparison(self, name: _Tok) -> Compare:
        spec = self._field(name)
        op = self._next()
        if op.kind != "op":
            raise self.error(
                f"expected an operator ({_OPS_HELP}) after field {spec.name!r} at "
                f"{self._where(op.pos)}, found {_describe(op)}",
                op.pos,
            )
        try:
            check_operator(spec, op.text)
        except QueryError as exc:
            raise exc.at(self.text, op.pos) from None
        value = self._value(spec, op.text)
        return Compare(spec.name, op.text, value)

    # ---------------------------------------------------------------------------- values

    def _value(self, spec: FieldSpec, op: str) -> Value:
        self._skip_ws()
        start = self.pos
        if start < self.n and self.text[start] == "[":
            self.pos += 1
            items: list[Scalar] = []
            while True:
                self._skip_ws()
                if not items and self.pos < self.n and self.text[self.pos] == "]":
                    raise self.error(
                        f"the list at {self._where(start)} is empty; give at least one value",
                        start,
                    )
                items.append(self._scalar(spec, op, in_list=True))
                self._skip_ws()
                c = self.text[self.pos] if self.pos < self.n else ""
                if c == ",":
                    self.pos += 1
                elif c == "]":
                    self.pos += 1
                    break
                else:
                    raise self.error(
                        f"expected ',' or ']' at {self._where(self.pos)} in the list that "
                        f"starts at {self._where(start)}, found "
                        + (_char_name(c) if c else "the end of the query"),
                        self.pos,
                    )
            try:
                check_operator(spec, op, is_list=True)
            except QueryError as exc:
                raise exc.at(self.text, start) from None
            return tuple(items)
        return self._scalar(spec, op, in_list=False)

    def _scalar(self, spec: FieldSpec, op: str, *, in_list: bool) -> Scalar:
        self._skip_ws()
        i = self.pos
        self._count_term(i)
        if i >= self.n:
            raise self.error(f"expected a value after '{op}' at the end of the query", i)
        c = self.text[i]
        if c in "\"'":
            raw = self._string()
        elif _is_value_start(c):
            j = i
            while j < self.n and _is_value_char(self.text[j]):
                j += 1
            raw = self.text[i:j]
            if raw.upper() in _KEYWORDS:
                # "tags: AND tags:dog" is a forgotten value far more often than a tag named AND.
                raise self.error(
                    f"expected a value after '{op}' at {self._where(i)}, found the keyword "
                    f'{raw!r}; to search for the word itself, quote it: "{raw}"',
                    i,
                )
            self.pos = j
        else:
            if c == "[":
                why = "lists cannot be nested"
            else:
                why = (
                    f"expected a value after '{op}' at {self._where(i)}, found {_char_name(c)}; "
                    'put values with spaces or special characters in quotes: "my value"'
                )
            raise self.error(why, i)
        prefix = False
        if self.pos < self.n and self.text[self.pos] == "*":
            prefix = True
            self.pos += 1
        if self.pos < self.n:
            nxt = self.text[self.pos]
            if not (nxt.isspace() or nxt in ")" or (in_list and nxt in ",]")):
                where = self._where(self.pos)
                if nxt == "," and not in_list:
                    why = f"unexpected ',' at {where}; a list needs brackets: {spec.name}:[a, b]"
                elif prefix or nxt == "*":
                    why = f"'*' only works once, at the end of a value (prefix match); at {where}"
                else:
                    end = self.pos
                    while end < self.n and not self.text[end].isspace():
                        end += 1
                    why = (
                        f"unexpected {_char_name(nxt)} at {where} after the value {raw!r}; put "
                        f"values with special characters in quotes: {_quote(self.text[i:end])}"
                    )
                raise self.error(why, self.pos)
        value: Scalar = Prefix(raw) if prefix else raw
        try:
            return coerce(spec, value)
        except QueryError as exc:
            raise exc.at(self.text, i) from None

    def _string(self) -> str:
        quote = self.text[self.pos]
        start = self.pos
        self.pos += 1
        out: list[str] = []
        while True:
            if self.pos >= self.n:
                raise self.error(
                    f"the string starting at {self._where(start)} is never closed; add a "
                    f"closing {quote}",
                    start,
                )
            c = self.text[self.pos]
            if c == quote:
                self.pos += 1
                return "".join(out)
            if c == "\\":
                out.append(self._escape())
                continue
            if 0xD800 <= ord(c) <= 0xDFFF:
                raise self.error(f"invalid character U+{ord(c):04X} (a lone surrogate)", self.pos)
            out.append(c)
            self.pos += 1

    def _escape(self) -> str:
        i = self.pos
        e = self.text[i + 1] if i + 1 < self.n else ""
        if e in _ESCAPES:
            self.pos = i + 2
            return _ESCAPES[e]
        if e != "u":
            shown = _char_name(e) if e else "the end of the query"
            raise self.error(f"unknown escape \\ followed by {shown}; {_ESCAPE_HELP}", i)
        cp = self._hex4(i)
        self.pos = i + 6
        if 0xDC00 <= cp <= 0xDFFF:
            raise self.error("\\u escape of a lone low surrogate; write the character itself", i)
        if 0xD800 <= cp <= 0xDBFF:
            j = self.pos
            if self.text[j : j + 2] == "\\u":
                low = self._hex4(j)
                if 0xDC00 <= low <= 0xDFFF:
                    self.pos = j + 6
                    return chr(0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00))
            raise self.error(
                "\\u escape of a high surrogate without its low half (\\uD83D\\uDE00); write the "
                "character itself",
                i,
            )
        return chr(cp)

    def _hex4(self, i: int) -> int:
        digits = self.text[i + 2 : i + 6]
        if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.error(f"\\u needs four hex digits (\\u00e9) at {self._where(i)}", i)
        return int(digits, 16)


def parse(text: str, *, fields: Mapping[str, FieldSpec] | None = None) -> Node:
    """Parse query ``text`` into an AST whose values are typed for their fields.

    ``fields``: the queryable fields (default :data:`~imageindex.query.fields.DEFAULT_FIELDS`;
    stores with extra columns pass :func:`~imageindex.query.fields.extend_fields`). Raises
    :class:`QueryError` and nothing else for any input.
    """
    if not isinstance(text, str):
        raise QueryError(f"a query must be a string, not {type(text).__name__}")
    if len(text) > MAX_QUERY_LENGTH:
        raise QueryError(
            f"the query is {len(text)} characters long; the limit is {MAX_QUERY_LENGTH}"
        )
    return _Parser(text, fields).parse()


# --------------------------------------------------------------------------------------------
# Validation of ASTs built in code (simple.py, API callers) before they reach a compiler.


def validate(node: Node, fields: Mapping[str, FieldSpec] | None = None) -> Node:
    """``node`` with canonical field names and typed values, or a QueryError saying what is
    wrong (unknown field, bad value or operator, over the limits). Compilers call this first,
    so a hand-built AST gets the same checks as a parsed one."""
    if not isinstance(node, And | Or | Not | Compare | Has):
        raise QueryError(f"not a query node: {type(node).__name__}")
    if depth(node) > MAX_AST_DEPTH:
        raise QueryError(f"the query is nested deeper than {MAX_AST_DEPTH} levels; simplify it")
    terms = 0
    for cur in walk(node):
        if isinstance(cur, And | Or):
            bad = [
                type(i).__name__
                for i in cur.items
                if not isinstance(i, And | Or | Not | Compare | Has)
            ]
            if bad:
                raise QueryError(f"not a query node: {bad[0]}")
        elif isinstance(cur, Not):
            if not isinstance(cur.item, And | Or | Not | Compare | Has):
                raise QueryError(f"not a query node: {type(cur.item).__name__}")
        elif isinstance(cur, Compare):
            terms += len(cur.value) if isinstance(cur.value, tuple) else 1
        else:
            terms += 1
    if terms > MAX_TERMS:
        raise QueryError(
            f"the query has {terms} conditions and list values; the limit is {MAX_TERMS}"
        )
    return _normalize(node, fields)


def _normalize(node: Node, fields: Mapping[str, FieldSpec] | None) -> Node:
    if isinstance(node, And):
        return And(tuple(_normalize(i, fields) for i in node.items))
    if isinstance(node, Or):
        return Or(tuple(_normalize(i, fields) for i in node.items))
    if isinstance(node, Not):
        return Not(_normalize(node.item, fields))
    if isinstance(node, Has):
        return Has(lookup(fields, node.field).name)
    spec = lookup(fields, node.field)
    return Compare(spec.name, node.op, check_compare(spec, node.op, node.value))


# --------------------------------------------------------------------------------------------
# Printing


def to_text(node: Node) -> str:
    """The query text of ``node``: ``parse(to_text(node)) == node`` for any valid AST."""
    if depth(node) > MAX_AST_DEPTH:
        raise QueryError(f"the query is nested deeper than {MAX_AST_DEPTH} levels; simplify it")
    return _print(node)


def _print(node: Node) -> str:
    if isinstance(node, Compare):
        sep = ":" if node.op == ":" else f" {node.op} "
        return f"{node.field}{sep}{_print_value(node.value)}"
    if isinstance(node, Has):
        return f"HAS {node.field}"
    if isinstance(node, Not):
        inner = _print(node.item)
        return f"NOT ({inner})" if isinstance(node.item, And | Or) else f"NOT {inner}"
    if isinstance(node, And):
        # Nested And/Or keep their parentheses so the printed text parses to the same tree.
        return " AND ".join(
            f"({_print(i)})" if isinstance(i, And | Or) else _print(i) for i in node.items
        )
    if isinstance(node, Or):
        return " OR ".join(f"({_print(i)})" if isinstance(i, Or) else _print(i) for i in node.items)
    raise QueryError(f"not a query node: {type(node).__name__}")


def _print_value(value: Value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_print_value(v) for v in value) + "]"
    if isinstance(value, Prefix):
        return _print_string(value.text) + "*"
    if isinstance(value, str):
        return _print_string(value)
    if isinstance(value, bool):
        raise QueryError("a query value cannot be a bool")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, date):
        return value.isoformat()
    raise QueryError(f"a query value cannot be a {type(value).__name__}")


def iso_utc(value: datetime) -> str:
    """``2026-01-31T12:00:00Z`` (microseconds only when set); naive means UTC."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    spec = "microseconds" if value.microsecond else "seconds"
    return value.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _print_string(text: str) -> str:
    bare = text and _is_value_start(text[0]) and all(_is_value_char(c) for c in text)
    if bare and text.upper() not in _KEYWORDS:
        return text
    return _quote(text)


def _quote(text: str) -> str:
    out = ['"']
    for c in text:
        if c in ('"', "\\"):
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\t":
            out.append("\\t")
        elif c == "\r":
            out.append("\\r")
        elif unicodedata.category(c) in ("Cc", "Cs"):
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


__all__ = [
    "MAX_AST_DEPTH",
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "MAX_TERMS",
    "iso_utc",
    "parse",
    "to_text",
    "validate",
]
