"""JSON values no later step can use, found and named: huge integers, deep nesting, lone surrogate escapes.

json.loads reads all three (or fails on them with errors other than syntax); each is refused with the place it is,
so that a user can fix the row, and never reaches the normalised copy, the worker or a 500.
"""

import json
import re
import sys
from typing import Any

from app.core.errors import Invalid

MAX_NESTING = 100  # rows nest a few levels (tool schemas about 10); far deeper ones break later steps' recursion
INT_DIGITS = sys.get_int_max_str_digits()  # Python refuses to read longer integers (0: no limit)
HUGE_INTEGER = re.compile(rf"\d{{{INT_DIGITS + 1},}}") if INT_DIGITS else None
# A \uD800-\uDFFF escape that is not half of a pair: JSON allows it, but it is no character and cannot be stored.
LONE_SURROGATE = re.compile(
    r"\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
TOO_DEEP = f"values nest more than {MAX_NESTING} levels deep: flatten them"
HUGE = f"a number has more than {INT_DIGITS:,} digits, more than Python reads: write it as a string in quotes"


class Unreadable(Exception):
    """JSON that json.loads refused (or read) for a reason other than syntax; `offset` is where, when known."""

    def __init__(self, offset: int | None, message: str):
        super().__init__(message)
        self.offset = offset
        self.message = message


def check_object(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise Invalid(f"{where}: expected a JSON object with your columns, got {type(row).__name__}")
    if not row:
        raise Invalid(f"{where}: the object is empty")
    return row


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def too_deep_at(text: str, start: int = 0, end: int | None = None, depth: int = 0) -> int | None:
    """Where in text[start:end] the nesting (already `depth` deep at start) first passes MAX_NESTING."""
    for token in JSON_TOKENS.finditer(text, start, len(text) if end is None else end):
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(token.group(), 0)
        if depth > MAX_NESTING:
            return token.start()
    return None


def huge_integer_at(text: str, start: int = 0) -> int | None:
    match = HUGE_INTEGER.search(text, start) if HUGE_INTEGER else None
    return match.start() if match else None


def _has_unstorable_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unusable(text: str, value: Any, start: int = 0, end: int | None = None, depth: int = 0) -> Unreadable | None:
    """What no later step can use in a value json read from text[start:end] (nested `depth` deep), or None."""
    end = len(text) if end is None else end
    brackets = text.count("[", start, end) + text.count("{", start, end)
    if brackets + depth > MAX_NESTING and _depth(value) + depth > MAX_NESTING:  # counting first: the usual case
        return Unreadable(too_deep_at(text, start, end, depth), TOO_DEEP)
    escaped = text.find("\\u", start, end) >= 0  # the pattern's search is slow; most rows have no escape at all
    if escaped and (match := LONE_SURROGATE.search(text, start, end)) and _has_unstorable_text(value):
        return Unreadable(
            match.start(),
            f"{match.group()} is half of a UTF-16 surrogate pair, not a character: remove it or give the whole pair",
        )
    return None


def loads(text: str) -> Any:
    """json.loads, its failures other than syntax (JSONDecodeError) and values no later step can use as Unreadable:
    huge integers, deep nesting, lone surrogate escapes."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise Unreadable(too_deep_at(text), TOO_DEEP) from None
    except ValueError:  # Python's limit on integer digits
        raise Unreadable(huge_integer_at(text), HUGE) from None
    if problem := unusable(text, value):
        raise problem
    return value
