"""Small helpers every module needs: hints, value display, location-aware errors, process rank.

Pure Python with no posttrain imports beyond `errors`, so any module may use it without a cycle.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os

from posttrain.errors import RecipeError


def did_you_mean(word, candidates) -> str:
    """`; did you mean 'x'?` for the closest candidate, or ''."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true/false", dict: "a mapping",
               list: "a list"}


def type_words(types) -> str:
    return " or ".join(_TYPE_WORDS.get(t, t.__name__) for t in types)


def show(value) -> str:
    """A value as an error message quotes it: containers by kind, scalars with their type."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{value!r} ({type(value).__name__})"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def as_number(value):
    """PyYAML 1.1 reads `2e-4` (no dot) as a string: a number-looking string becomes a float.
    Anything else is returned unchanged (so the caller's type check reports it)."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


class Problem(RecipeError):
    """One problem with a recipe: its line `file:line: dotted.key: message`, and the dotted key it is about."""

    def __init__(self, line: str, dotted: str | None = None):
        super().__init__(line)
        self.dotted = dotted


class Where:
    """Locates a dotted key's `file:line` (or its nearest parent's) and refuses it there.

    `fail` raises a Problem. While a check pass runs (`found` is a list), `each()` around one of several
    independent checks records the problem and lets the next one run, so every problem is reported at once."""

    def __init__(self, lines: dict[str, str] | None = None):
        self.lines = lines or {}
        self.found: list[Problem] | None = None

    def locate(self, dotted: str) -> str | None:
        parts = dotted.replace("[", ".[").split(".")
        while parts:
            loc = self.lines.get(".".join(parts).replace(".[", "["))
            if loc is not None:
                return loc
            parts.pop()
        return None

    def at(self, dotted: str, msg: str) -> str:
        loc = self.locate(dotted)
        return f"{loc + ': ' if loc else ''}{dotted}: {msg}"

    def fail(self, dotted: str, msg: str):
        raise Problem(self.at(dotted, msg), dotted)

    @contextlib.contextmanager
    def each(self):
        try:
            yield
        except RecipeError as e:
            if self.found is None:
                raise
            self.found.append(e if isinstance(e, Problem) else Problem(str(e)))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0
