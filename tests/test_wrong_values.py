"""Every shipped recipe with any one leaf key set to a value of the wrong type (or null, or negative) is either
accepted or refused with RecipeError lines, never another exception: validate keeps its one-line promise on input
nobody wrote a check for."""

import copy
import itertools
import logging

import pytest

from posttrain import checks
from posttrain.errors import RecipeError
from posttrain.recipe import RECIPES_DIR, load_raw

VALUES = (5, [1, 2], {"a": 1}, "x", None, True, -1)
RECIPES = sorted(RECIPES_DIR.glob("*.yaml"))
MODEL_KEYS = ("reward_model", "value_model", "ref_model", "teacher_model")


def _leaves(node: dict, prefix=()):
    for k, v in node.items():
        if isinstance(v, dict) and v:
            yield from _leaves(v, (*prefix, k))
        else:
            yield (*prefix, k)


def _cases(model):
    """(recipe file, merged mapping with the tiny model in place of the hub ones, where, leaf path) of every leaf key
    of every shipped recipe, in a fixed order."""
    for path in RECIPES:
        raw, where = load_raw(path)
        raw["model"]["name_or_path"] = model
        raw.update({k: model for k in MODEL_KEYS if isinstance(raw.get(k), str)})
        for leaf in _leaves(raw):
            yield path, raw, where, leaf


def _escapes(path, raw, where, leaf, value, level) -> str | None:
    """What escapes validate with `leaf` set to `value`, other than RecipeError; None when nothing does."""
    mutated = copy.deepcopy(raw)
    node = mutated
    for k in leaf[:-1]:
        node = node[k]
    node[leaf[-1]] = copy.deepcopy(value)
    try:
        checks.validate(mutated, where=where, source=str(path), default_name=path.stem, level=level,
                        skip=("data_readable",))
    except RecipeError:
        pass
    except Exception as e:  # noqa: BLE001 - what this test looks for
        return f"{path.name}: {'.'.join(map(str, leaf))}={value!r}: {type(e).__name__}: {e}"
    return None


@pytest.fixture(autouse=True)
def _quiet():
    logging.disable(logging.WARNING)  # unclassified-field warnings for keys such as training.a
    yield
    logging.disable(logging.NOTSET)


def test_each_leaf_key_with_one_wrong_value(fx):
    """Fast: each leaf key (about 410) once, the values taken in turn, checked with the TRL configs built (no
    tokenizer or model); the slow test below tries every value at every key."""
    cases = list(_cases(str(fx["model"])))
    assert len(cases) > 300 and len(RECIPES) >= 15
    found = [_escapes(*case, VALUES[i % len(VALUES)], "owners") for i, case in enumerate(cases)]
    assert not [f for f in found if f], found


def test_grpo_without_a_completion_length_validates_up_to_the_model(fx):
    """`training.max_completion_length: null` (generation bounded by the model's generation config) once ended in a
    TypeError in the check that rows fit the model's positions."""
    r = checks.load_recipe("grpo_gpt2", [f"model.name_or_path={fx['model']}", "training.max_completion_length=null"],
                           level="model", skip=("data_readable",))
    assert r.training["max_completion_length"] is None


@pytest.mark.slow
def test_every_leaf_key_with_every_wrong_value(fx):
    """Every leaf key of every shipped recipe set to each of VALUES (about 2,900 recipes) up to the TRL configs, and
    set to null up to the model checks (the tokenizer and the tiny model's config: about 410 more)."""
    cases = list(_cases(str(fx["model"])))
    found = [_escapes(*case, value, "owners") for case, value in itertools.product(cases, VALUES)]
    found += [_escapes(*case, None, "model") for case in cases]
    assert not [f for f in found if f], [f for f in found if f]
