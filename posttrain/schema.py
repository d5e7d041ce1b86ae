"""Check recipe sections against the classes that own them (TRL configs, LoraConfig, BitsAndBytesConfig).

The field names and types are read from the installed classes, so a new TRL option is accepted the
day it ships and a removed one is reported as unknown, with no table of ours to go stale.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import inspect
import os
import re
import types
import typing
from functools import cache
from typing import Any

from posttrain.util import Where, as_number, did_you_mean, show

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def config_class(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def lora_class():
    from peft import LoraConfig

    return LoraConfig


def bnb_class():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig


@cache
def fields_of(cls) -> dict[str, Any]:
    """Option name -> annotation: dataclass fields plus the named parameters of __init__
    (BitsAndBytesConfig is a dataclass whose options live only in its hand-written __init__)."""
    out = {}
    if dataclasses.is_dataclass(cls):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # unresolvable forward reference: accept any value for those fields
            hints = {}
        out = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in out or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = p.annotation
        if ann is inspect.Parameter.empty:
            ann = type(p.default) if p.default not in (None, inspect.Parameter.empty) else Any
            if ann is float:
                ann = float | int
        out[name] = ann
    return out


# Fields whose accepted values the library states only in the field's help text (a str field that its
# trainer checks at the first step): read from there, so the list is the installed library's own.
HELP_CHOICES = ("loss_type", "f_divergence_type", "vllm_importance_sampling_mode")


def _choices_in_help(text: str) -> list[str]:
    """The quoted names after "Possible values are" / "Supported values are" in a help text, up to the end
    of that sentence, leaving out parenthesised asides."""
    m = re.search(r"(?:Possible|Supported|Valid|Allowed) (?:values|options)[^:.]*?(?:are|:)", text)
    if not m:
        return []
    rest = re.split(r"\.(?:\s|$)", re.sub(r"\([^()]*\)", "", text[m.end():]))[0]
    return list(dict.fromkeys(re.findall(r"[`']+([A-Za-z0-9_\-]+)[`']+", rest)))


@cache
def field_choices(cls) -> dict[str, list]:
    """Option name -> the values it accepts, where the class says so beyond its annotation: dataclass field
    metadata `choices` (what HfArgumentParser enforces on the command line), or the help text (HELP_CHOICES)."""
    out = {}
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            choices = list(f.metadata.get("choices") or ())
            if not choices and f.name in HELP_CHOICES:
                choices = _choices_in_help(f.metadata.get("help", ""))
            if len(choices) >= 2:
                out[f.name] = choices
    return out


_NO = object()


def coerce(value, ann):
    """Return value (possibly converted, e.g. '2e-4' -> 2e-4 for a float field) or _NO if it does not fit."""
    if ann is Any or isinstance(ann, (str, typing.TypeVar)):
        return value
    if value is False and "no" in choices_of(ann):
        return "no"  # YAML 1.1 reads a bare `no` as false: `eval_strategy: no` means the choice "no"
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(ann)
        enums = [a for a in args if inspect.isclass(a) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str` means "a SchedulerType, by name"
            return value if any(value in [e.value for e in en] for en in enums) else _NO
        # try exact types first so `int | str` keeps 3 as 3
        for a in sorted(args, key=lambda a: a is str):
            got = coerce(value, a)
            if got is not _NO:
                return got
        return _NO
    if origin is typing.Literal:
        return value if value in typing.get_args(ann) else _NO
    if ann is type(None):
        return value if value is None else _NO
    if ann is bool:
        return value if isinstance(value, bool) else _NO
    if ann is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO
    if ann is float:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, (int, float)):
            return value
        value = as_number(value)  # PyYAML reads 2e-4 (no dot) as a string
        return value if isinstance(value, (int, float)) else _NO
    if ann is str:
        return value if isinstance(value, str) else _NO
    if origin in (list, tuple, typing.Sequence) or ann in (list, tuple):
        if not isinstance(value, list):
            return _NO
        args = [a for a in typing.get_args(ann) if a is not Ellipsis]
        if len(args) == 1:
            items = [coerce(v, args[0]) for v in value]
            return _NO if any(i is _NO for i in items) else items
        return value
    if origin is dict or ann is dict:
        return value if isinstance(value, dict) else _NO
    if inspect.isclass(ann) and issubclass(ann, enum.Enum):
        values = [e.value for e in ann]
        return value if value in values else _NO
    if inspect.isclass(ann):  # a config object (AcceleratorConfig, torch.dtype, ...): give it a mapping or a name
        return value if isinstance(value, (dict, str)) else _NO
    return value


def fits(value, ann) -> bool:
    return coerce(value, ann) is not _NO


WORD_ORDER = ("true/false", "an integer", "a number", "a string", "a list", "a mapping")


def describe(ann) -> str:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType) and choices_of(ann):
        return "one of " + ", ".join(repr(c) for c in choices_of(ann))
    if origin in (typing.Union, types.UnionType):
        # in a fixed order: typing caches a Union with the argument order it was first built with, which depends
        # on import order, so the words would change from one process to the next
        parts = sorted(dict.fromkeys(describe(a) for a in typing.get_args(ann) if a is not type(None)),
                       key=lambda w: (WORD_ORDER.index(w) if w in WORD_ORDER else len(WORD_ORDER), w))
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(ann) else "")
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(ann)))
    if inspect.isclass(ann) and issubclass(ann, enum.Enum):
        return "one of " + ", ".join(repr(e.value) for e in ann)
    words = {bool: "true/false", int: "an integer", float: "a number", str: "a string", dict: "a mapping"}
    if ann in words:
        return words[ann]
    if origin in (list, tuple) or ann in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    return getattr(ann, "__name__", str(ann))


def choices_of(ann) -> list:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        return [c for a in typing.get_args(ann) for c in choices_of(a)]
    if origin is typing.Literal:
        return list(typing.get_args(ann))
    if inspect.isclass(ann) and issubclass(ann, enum.Enum):
        return [e.value for e in ann]
    return []


def check_owned(section: str, values: dict, cls, where: Where, unknown) -> dict:
    """Type-check a recipe section against cls's options, each key on its own; `unknown(where, dotted, known,
    value=, note=)` refuses a key cls does not have (posttrain.options gives hints from other tools' names)."""
    known = fields_of(cls)
    out = {}
    for k, v in values.items():
        with where.each():
            out[k] = _owned_value(f"{section}.{k}", k, v, cls, known, where, unknown)
    return out


def _owned_value(dotted: str, k, v, cls, known: dict, where: Where, unknown):
    if k not in known:
        unknown(where, dotted, known, value=v, note=f" ({cls.__name__} has no such option)")
    choices = field_choices(cls).get(k)
    got = coerce(v, known[k])
    if got is _NO and not isinstance(v, (list, dict)) and coerce([v], known[k]) is not _NO:
        got = [v]  # a list field given one value (dpo loss_type: sigmoid, online_dpo beta: 0.1): TRL accepts that too
    if got is _NO:
        hint = did_you_mean(v, choices_of(known[k])) if isinstance(v, str) else ""
        where.fail(dotted, f"expected {describe(known[k])}, got {show(v)}{hint}")
    if choices and got is not None:
        for item in got if isinstance(got, list) else [got]:
            if item not in choices:
                where.fail(dotted, f"'{item}' is not one of {', '.join(map(str, choices))}{did_you_mean(item, choices)}")
    return got
