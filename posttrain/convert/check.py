"""The check pass of `posttrain convert`: every key a tool's table reads, against the type it takes, before anything
is converted; every problem at once (one line each, like validate's: exit 2, nothing written).

A key's type is what its rule maps it to: `To("training.x")` takes the TRL config field's type (read from the
installed class, as validate reads it), `To("peft.x")` LoraConfig's, `To("data.x")` posttrain's own key's; a key no
rule names that the TRL configs have (passed through) takes that field's type. A key read by the tool module's
functions declares its type in the module's TYPES: an annotation (`str | list`), or for nested structures
{field: type} (a mapping, each field checked), dict[str, type] (a mapping, each value checked) and [type] (a list,
each entry checked).
"""

from __future__ import annotations

import functools
import operator
import typing
from typing import Any

from posttrain import options, schema, stages
from posttrain.convert.core import TRAINING_ARGS, TRAINING_TYPES, Call, Conversion, DropIf, To
from posttrain.errors import Problems
from posttrain.keys import DATA_KEYS, MODEL_KEYS
from posttrain.util import show

TOP = {"output_dir": str, "reward_model": str, "ref_model": str, "value_model": str}


def training_type(key: str, stage: str | None = None):
    """The field's annotation in the stage's TRL config (without a stage: the first config that has it)."""
    for name in [stage] if stage else stages.names():
        ann = schema.fields_of(schema.config_class(options.owner(name, "training"))).get(key)
        if ann is not None:
            return ann
    return Any


def target_type(target: str, stage: str | None = None):
    section, _, key = target.partition(".")
    if not key:
        return TOP.get(section, Any)
    if section in ("model", "data"):
        found = (MODEL_KEYS if section == "model" else DATA_KEYS).get(key)
        return functools.reduce(operator.or_, found.types) if found else Any
    if section == "training":
        return training_type(key, stage)
    if section in options.SECTION_OWNERS:
        return schema.fields_of(schema.config_class(options.SECTION_OWNERS[section])).get(key, Any)
    return Any


def rule_type(rule, value, stage: str | None = None):
    """The type a rule's key takes (Any where the rule reads any value); DropIf's own value always fits."""
    if isinstance(rule, DropIf):
        return Any if value == rule.value else rule_type(rule.otherwise, value, stage)
    if isinstance(rule, Call) and isinstance(rule.hint, To):
        rule = rule.hint
    if isinstance(rule, To) and rule.value is None:
        return target_type(rule.target, stage)
    return Any


def problems(where, dotted: str, value, spec, one: bool = False) -> list[str]:
    """`file:line: dotted: expected T, got V` for value and, in a nested spec, each of its entries; null is unset.
    `one`: a list type takes one value too (TRL's list fields do)."""
    if value is None or spec is Any:
        return []
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [where.at(dotted, f"expected a mapping, got {show(value)}")]
        return [p for k, v in value.items() if k in spec for p in problems(where, f"{dotted}.{k}", v, spec[k])]
    if isinstance(spec, list):
        if not isinstance(value, list):
            return [where.at(dotted, f"expected a list, got {show(value)}")]
        return [p for i, v in enumerate(value) for p in problems(where, f"{dotted}[{i}]", v, spec[0])]
    if typing.get_origin(spec) is dict and isinstance(value, dict):  # dict[str, T]: each value a T
        return [p for k, v in value.items() for p in problems(where, f"{dotted}.{k}", v, typing.get_args(spec)[1])]
    if not schema.fits(value, spec) and not (one and not isinstance(value, (list, dict)) and schema.fits([value], spec)):
        return [where.at(dotted, f"expected {schema.describe(spec)}, got {show(value)}")]
    return []


def check(conv: Conversion, items, table: dict, types: dict, passthrough: bool = True, found: list[str] = ()):
    """Refuse the config when any of `items` ((dotted key, value) pairs) has a value of the wrong type: each key by
    `types`, else by its rule in `table`, else (`passthrough`) as the TRL field of that name; `found`: problems the
    tool module found itself (a file the config names)."""
    out = list(found)
    for key, value in items:
        if key in types or passthrough and key in TRAINING_TYPES:
            spec = types.get(key, TRAINING_TYPES.get(key))
        elif key in table or passthrough and key in TRAINING_ARGS:
            spec = rule_type(table.get(key, TRAINING_ARGS.get(key)), value, conv.stage)
        else:
            spec = training_type(key, conv.stage) if passthrough else Any
        out += problems(conv.where, key, value, spec, one=key not in types)
    if out:
        raise Problems(out)
