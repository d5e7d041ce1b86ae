"""Small helpers every module needs: hints, value display, location-aware errors, process rank.

Pure Python with no posttrain imports beyond `errors`, so any module may use it without a cycle.
"""

from __future__ import annotations

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


class Where:
    """Raises RecipeError prefixed with the `file:line` that set a dotted key (or its nearest parent)."""

    def __init__(self, lines: dict[str, str] | None = None):
        self.lines = lines or {}

    def locate(self, dotted: str) -> str | None:
        parts = dotted.replace("[", ".[").split(".")
        while parts:
            loc = self.lines.get(".".join(parts).replace(".[", "["))
            if loc is not None:
                return loc
            parts.pop()
        return None

    def fail(self, dotted: str, msg: str):
        loc = self.locate(dotted)
        raise RecipeError(f"{loc + ': ' if loc else ''}{dotted}: {msg}")

    def unknown(self, dotted: str, known, note: str = ""):
        key = dotted.rsplit(".", 1)[-1]
        section = dotted.rsplit(".", 1)[0] if "." in dotted else "recipe"
        self.fail(dotted, f"unknown key in {section}{did_you_mean(key, known)}{note}")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0
