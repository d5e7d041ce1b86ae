"""The check pass of `posttrain convert`: every key a tool's table reads, against the type it takes, before anything
is converted; every problem at once (one line each, like validate's: exit 2, nothing written).

A key's type is what its rule maps it to: `To("training.x")` takes the TRL config field's type, `To("peft.x")`
LoraConfig's, `To("data.x")` posttrain's own key's; a key no rule names that the TRL configs have (passed through)
takes that field's type. The fields' types are read from the installed classes into field_types.json (the kinds of
value each takes), so converting imports none of them; `python -m posttrain.convert --write` rewrites it after
an upgrade (tests/test_convert_check.py fails until then). A key read by the tool module's functions declares its
type in the module's TYPES: an annotation (`str | list`), or for nested structures {field: type} (a mapping, each
field checked), dict[str, type] (a mapping, each value checked) and [type] (a list, each entry checked).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import operator
import typing
from pathlib import Path
from typing import Any

from posttrain import options, schema, stages
from posttrain.convert.core import TRAINING_ARGS, TRAINING_TYPES, Call, Conversion, DropIf, To
from posttrain.errors import PosttrainError, Problems
from posttrain.keys import DATA_KEYS, MODEL_KEYS
from posttrain.util import as_number, show

TOP = {"output_dir": str, "reward_model": str, "ref_model": str, "value_model": str}
FIELD_TYPES = Path(__file__).with_name("field_types.json")
SAMPLES = {"bool": True, "no": False, "int": 1, "float": 0.5, "str": "x", "list": [], "dict": {}}


@dataclasses.dataclass(frozen=True)
class Field:
    """A field of a TRL config, LoraConfig or BitsAndBytesConfig as field_types.json keeps it: the kinds of value it
    takes (SAMPLES' names) and its type in words."""

    kinds: tuple
    says: str

    def fits(self, value) -> bool:
        one = "list" in self.kinds  # a list field takes one value too, as TRL does
        if isinstance(value, bool):  # (`no` is YAML's false: a field with the choice "no" takes it)
            return "bool" in self.kinds or value is False and "no" in self.kinds
        if isinstance(value, str):  # (PyYAML reads 2e-4 as a string)
            return "str" in self.kinds or "float" in self.kinds and isinstance(as_number(value), float) or one
        if isinstance(value, (int, float)):
            return "float" in self.kinds or (isinstance(value, int) or value.is_integer()) and "int" in self.kinds or one
        return ("list" if isinstance(value, list) else "dict" if isinstance(value, dict) else None) in self.kinds


def generate() -> dict[str, dict]:
    """Every field of the installed owning classes: {"training.beta": {"kinds": [...], "says": "a number"}, ...}."""
    missing = set(stages.names()) - set(stages.available())
    if missing:  # written from a TRL that lacks a stage's class, the file would lose that stage's fields
        raise PosttrainError(f"the installed TRL has no class for stage(s) {', '.join(sorted(missing))}: write the field "
                             f"types with a TRL that has every stage's (make install: TRL 1.12)")
    owners = [("training", options.owner(n, "training")) for n in stages.names()] + list(options.SECTION_OWNERS.items())
    out: dict[str, dict] = {}
    for section, path in owners:
        cls = schema.config_class(path)
        for name, ann in schema.fields_of(cls).items():
            kinds = [k for k, v in SAMPLES.items() if schema.fits(v, ann)]
            kinds += ["str"] if "str" not in kinds and any(isinstance(c, str) for c in schema.choices_of(ann)) else []
            field = out.setdefault(f"{section}.{name}", {"kinds": [], "says": schema.describe(ann)})
            field["kinds"] = sorted(set(field["kinds"]) | set(kinds))
    return dict(sorted(out.items()))


@functools.cache
def fields() -> dict[str, Field]:
    return {k: Field(tuple(f["kinds"]), f["says"]) for k, f in json.loads(FIELD_TYPES.read_text(encoding="utf-8")).items()}


def target_type(target: str):
    section, _, key = target.partition(".")
    if not key:
        return TOP.get(section, Any)
    if section in ("model", "data"):
        found = (MODEL_KEYS if section == "model" else DATA_KEYS).get(key)
        return functools.reduce(operator.or_, found.types) if found else Any
    return fields().get(target, Any)


def rule_type(rule, value):
    """The type a rule's key takes (Any where the rule reads any value); DropIf's own value always fits."""
    if isinstance(rule, DropIf):
        return Any if value == rule.value else rule_type(rule.otherwise, value)
    if isinstance(rule, Call) and isinstance(rule.hint, To):
        rule = rule.hint
    if isinstance(rule, To) and rule.value is None:
        return target_type(rule.target)
    return Any


def problems(where, dotted: str, value, spec) -> list[str]:
    """`file:line: dotted: expected T, got V` for value and, in a nested spec, each of its entries; null is unset."""
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
    if isinstance(spec, Field):
        return [] if spec.fits(value) else [where.at(dotted, f"expected {spec.says}, got {show(value)}")]
    if not schema.fits(value, spec):
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
            spec = rule_type(table.get(key, TRAINING_ARGS.get(key)), value)
        else:
            spec = fields().get(f"training.{key}", Any) if passthrough else Any
        out += problems(conv.where, key, value, spec)
    if out:
        raise Problems(out)


def write():
    FIELD_TYPES.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in generate().items())
                           + "\n}\n", encoding="utf-8")
