"""Rows of JSON Lines, a line at a time, and of a JSON array, an item at a time: never the whole document.

The array is read through a window of the text that keeps only the item being decoded (json's own scanner decodes
each item), so memory is bounded by the largest item. Errors are json's, at the same line and column as
json.loads on the whole document gives them; a problem that json.loads would only have found after reading
everything (an item that is not an object, nesting too deep, a lone surrogate) is reported once the rest has been
read, so a syntax error further on still wins, as it did.
"""

import io
import json
import re
from collections.abc import Iterator
from typing import Any

from app.core.errors import Invalid
from app.datasets.json_values import HUGE, TOO_DEEP, Unreadable, check_object, huge_integer_at, loads, too_deep_at
from app.datasets.json_values import unusable as unusable_value
from app.datasets.text import MAX_ROW_CHARS, physical_lines, too_long

READ_CHARS = 1 << 20
LOOKAHEAD = 3  # a number may go on for this many more characters ("e+1") than a window that ends early shows
WHITESPACE = re.compile(r"[ \t\n\r]*")
DECODER = json.JSONDecoder()


class JsonLinesInstead(Exception):
    """A .json file that holds one object after another: JSON Lines saved as .json, to be read as what it is."""


def parse_jsonl(text: io.TextIOWrapper) -> Iterator[dict[str, Any]]:
    """One object per line (lines as str.splitlines splits them); 422 naming the first bad line."""
    number = 0
    for physical in physical_lines(text):
        if len(physical) > MAX_ROW_CHARS:
            raise too_long(f"line {number + 1}")
        for line in physical.splitlines():
            number += 1
            if not line.strip():
                continue
            try:
                value = loads(line)
            except json.JSONDecodeError as exc:
                raise Invalid(f"line {number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            except Unreadable as exc:
                raise Invalid(f"line {number}: {exc.message}") from None
            yield check_object(value, f"line {number}")


class _Window:
    """The JSON text seen through a sliding window: absolute positions, line and column as json counts them."""

    def __init__(self, text: io.TextIOWrapper):
        self.text = text
        self.buf = ""
        self.base = 0  # the absolute position of buf[0]
        self.newlines = 0  # "\n" before base
        self.last_newline = -1  # the absolute position of the last of them
        self.eof = False

    def more(self) -> bool:
        chunk = "" if self.eof else self.text.read(READ_CHARS)
        self.eof = not chunk
        self.buf += chunk
        return bool(chunk)

    def forget_before(self, pos: int) -> None:
        cut = pos - self.base
        if cut < READ_CHARS:  # now and then, not at every item: each cut copies what is left
            return
        found = self.buf.count("\n", 0, cut)
        if found:
            self.newlines += found
            self.last_newline = self.base + self.buf.rfind("\n", 0, cut)
        self.buf, self.base = self.buf[cut:], pos

    def char(self, pos: int) -> str:
        """The character at pos; "" at the end of the text."""
        while pos - self.base >= len(self.buf):
            if not self.more():
                return ""
        return self.buf[pos - self.base]

    def skip_whitespace(self, pos: int) -> int:
        while True:
            end = WHITESPACE.match(self.buf, pos - self.base).end()
            if end < len(self.buf) or not self.more():
                return self.base + end
            pos = self.base + end

    def line(self, pos: int) -> int:
        return self.newlines + self.buf.count("\n", 0, pos - self.base) + 1

    def syntax_error(self, message: str, pos: int) -> Invalid:
        found = self.buf.rfind("\n", 0, pos - self.base)
        column = pos - (self.base + found if found >= 0 else self.last_newline)
        return Invalid(f"not valid JSON: {message} at line {self.line(pos)} column {column}")

    def unreadable(self, problem: Unreadable) -> Invalid:
        """The problem as a 422; its offset is absolute."""
        where = "" if problem.offset is None else f"line {self.line(problem.offset)}: "
        return Invalid(f"{where}{problem.message}")

    def _absolute(self, offset: int | None) -> int | None:
        return None if offset is None else self.base + offset

    def value(self, pos: int, depth: int, where: str) -> tuple[Any, int]:
        """Decode the value at pos (not whitespace), `depth` levels deep; returns it and where it ends.

        Unreadable (with an absolute offset) for what json.loads fails on other than syntax."""
        while True:
            start = pos - self.base
            try:
                value, end = DECODER.raw_decode(self.buf, start)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self.syntax_error(exc.msg, self.base + exc.pos) from None
            except RecursionError:
                raise Unreadable(self._absolute(too_deep_at(self.buf, start, depth=depth)), TOO_DEEP) from None
            except ValueError:  # Python's limit on integer digits
                raise Unreadable(self._absolute(huge_integer_at(self.buf, start)), HUGE) from None
            else:
                if self.eof or len(self.buf) - end >= LOOKAHEAD:
                    return value, self.base + end
            if len(self.buf) - start > MAX_ROW_CHARS:
                raise too_long(where)
            self.more()

    def unusable(self, value: Any, start: int, end: int, depth: int) -> Unreadable | None:
        """What no later step can use in the value read from [start, end), its offset made absolute."""
        problem = unusable_value(self.buf, value, start - self.base, end - self.base, depth)
        if problem is not None and problem.offset is not None:
            problem.offset += self.base
        return problem


class _Deferred:
    """Problems json.loads on the whole document found only once it had read all of it: the first of each kind,
    told in the order it checked them (nesting, then surrogates, then items that are not objects)."""

    def __init__(self) -> None:
        self.too_deep: Invalid | None = None
        self.surrogate: Invalid | None = None
        self.not_object: Invalid | None = None

    def __bool__(self) -> bool:
        return bool(self.too_deep or self.surrogate or self.not_object)

    def note(self, problem: Unreadable | None, window: _Window) -> None:
        """Keep the problem, told now: its line is known only while the window still holds it."""
        if problem is None:
            return
        if problem.message == TOO_DEEP:
            self.too_deep = self.too_deep or window.unreadable(problem)
        else:
            self.surrogate = self.surrogate or window.unreadable(problem)

    def first(self) -> Invalid | None:
        return self.too_deep or self.surrogate or self.not_object


def parse_json(text: io.TextIOWrapper) -> Iterator[dict[str, Any]]:
    """Rows of a JSON array of objects; JsonLinesInstead for objects one after another; 422 for anything else."""
    window = _Window(text)
    if window.char(0) == "\ufeff":  # a second byte-order mark: json.loads refuses it so
        raise window.syntax_error("Unexpected UTF-8 BOM (decode using utf-8-sig)", 0)
    pos = window.skip_whitespace(0)
    first = window.char(pos)
    if first == "[":
        yield from _array(window, pos)
        return
    try:
        value, end = window.value(pos, 0, f"the JSON value at line {window.line(pos)}")
    except Unreadable as problem:
        raise window.unreadable(problem) from None
    end = window.skip_whitespace(end)
    if window.char(end):
        if first == "{":
            raise JsonLinesInstead()
        raise window.syntax_error("Extra data", end)
    if problem := window.unusable(value, pos, end, 0):
        raise window.unreadable(problem)
    raise Invalid("a .json dataset must be an array of objects (or upload JSON Lines as .jsonl)")


def _array(window: _Window, pos: int) -> Iterator[dict[str, Any]]:
    # json's own array scanner, an item at a time: the same errors at the same places.
    deferred, index = _Deferred(), 0
    pos = window.skip_whitespace(pos + 1)
    if window.char(pos) != "]":
        while True:
            index += 1
            where = f"row {index} (item {index} of the array)"
            try:
                value, end = window.value(pos, 1, where)
            except Unreadable as problem:
                if problem.message == TOO_DEEP and deferred.too_deep:  # json.loads named the first too deep place
                    raise deferred.too_deep from None
                raise window.unreadable(problem) from None
            if deferred.too_deep is None:  # nothing else can be told once one is
                deferred.note(window.unusable(value, pos, end, 1), window)
            if not deferred:
                try:
                    row = check_object(value, where)
                except Invalid as exc:
                    deferred.not_object = exc
                else:
                    yield row
            window.forget_before(end)
            pos = window.skip_whitespace(end)
            next_char = window.char(pos)
            if next_char == "]":
                break
            if next_char != ",":
                raise window.syntax_error("Expecting ',' delimiter", pos)
            pos = window.skip_whitespace(pos + 1)
    end = window.skip_whitespace(pos + 1)
    if window.char(end):
        raise window.syntax_error("Extra data", end)
    if problem := deferred.first():
        raise problem
