"""Row filters (`where`) and dotted field access into records."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

from mixer.errors import MixerError

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
"""What `get_field` returns for an absent field, so that an explicit null stays `None`."""


# Row filters
_WHERE = re.compile(
    r"""^\s*(?P<field>[A-Za-z_][\w\-]*(?:\.[\w\-]+)*)
    (?:\s*(?P<cmp>==|!=|<=|>=|<|>)|\s+(?P<word>not\s+in|in)\b)
    \s*(?P<value>\S.*?)\s*$""",
    re.VERBOSE | re.DOTALL,
)


_OPS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")


@dataclass(frozen=True)
class RowFilter:
    """One `--where` condition. A row whose field is missing never matches, whatever the op."""

    field: str
    op: str
    value: object

    def matches(self, record: dict) -> bool:
        actual = get_field(record, self.field)
        if actual is MISSING:
            return False
        return self.test(actual)

    def test(self, actual: object) -> bool:
        """Whether a present field value satisfies the condition."""
        op, value = self.op, self.value
        try:
            if op == "==":
                return bool(actual == value)
            if op == "!=":
                return bool(actual != value)
            if op == "in":
                return actual in value  # type: ignore[operator]
            if op == "not in":
                return actual not in value  # type: ignore[operator]
            if op == "<":
                return bool(actual < value)  # type: ignore[operator]
            if op == "<=":
                return bool(actual <= value)  # type: ignore[operator]
            if op == ">":
                return bool(actual > value)  # type: ignore[operator]
            if op == ">=":
                return bool(actual >= value)  # type: ignore[operator]
        except TypeError:  # e.g. "abc" < 0.5: incomparable values do not match
            return False
        raise MixerError(f"unknown filter operator {op!r}")

    def describe(self) -> str:
        """Canonical text (parses back to an equal filter), recorded in the manifest."""
        if self.op in ("in", "not in"):
            value = "[" + ", ".join(repr(v) for v in self.value) + "]"  # type: ignore[attr-defined]
        else:
            value = repr(self.value)
        return f"{self.field} {self.op} {value}"


def parse_where(expr: str) -> RowFilter:
    """Parse `FIELD OP VALUE`, e.g. `meta.lang == "en"` or `src in ["a", "b"]`."""
    match = _WHERE.match(expr)
    if match is None:
        raise MixerError(
            f"bad filter {expr!r}: expected FIELD OP VALUE with OP one of {', '.join(_OPS)}"
        )
    op = match["cmp"] or " ".join(match["word"].split())
    text = match["value"]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise MixerError(
            f'bad filter {expr!r}: cannot parse {text!r} as a literal (quote strings: "en")'
        ) from None
    if op in ("in", "not in"):
        if isinstance(value, (set, frozenset)):
            value = tuple(sorted(value, key=repr))
        elif isinstance(value, (list, tuple)):
            value = tuple(value)
        else:
            raise MixerError(f'bad filter {expr!r}: {op!r} needs a list, e.g. ["a", "b"]')
        scalars = value
    else:
        scalars = (value,)
    for item in scalars:
        if not (item is None or isinstance(item, (str, int, float, bool))):
            raise MixerError(
                f"bad filter {expr!r}: values must be strings, numbers, booleans or None"
            )
    return RowFilter(match["field"], op, value)


def get_field(record: dict, path: str) -> object:
    """Follow a dotted path; `MISSING` if absent.

    A key that itself contains the dots wins. An intermediate value that is a JSON object
    encoded as a string (ProofPile's `meta`) is decoded on the way.
    """
    if path in record:
        return record[path]
    value: object = record
    for part in path.split("."):
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                value = json.loads(value)
            except ValueError:
                return MISSING
        if not isinstance(value, dict) or part not in value:
            return MISSING
        value = value[part]
    return value
