"""The stage registry: one module per stage, each declaring what it is once, in its `STAGE`.

A stage module defines `STAGE = Stage(...)`: its TRL config class, the data formats it trains on,
its own recipe keys, what its output is (a policy the next stage starts from, or a reward model),
which upstream outputs it consumes, whether it resumes, its headline metrics, its memory footprint
for `posttrain plan`, its validation checks, and the functions of its lifecycle (config, build, and
optionally save and extra metrics). Recipe validation, the run lifecycle (`common.run`), pipeline
wiring, `plan`, the CLI, `report` and the Makefile all read it from here, so adding a stage is adding
a module. Importing this package loads no heavy library: stage modules import torch/TRL lazily.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import pkgutil
import typing
from collections.abc import Callable
from importlib import metadata

from posttrain.errors import RecipeError
from posttrain.util import did_you_mean


def reference_unless_peft(recipe) -> bool:
    """A frozen copy of the policy is held, except with LoRA (the disabled adapter is the reference)."""
    return not recipe.peft


def reference_unless_peft_or_precompute(recipe) -> bool:
    """As reference_unless_peft, and not when training.precompute_ref_log_probs computed its log-probs first."""
    return not recipe.peft and not recipe.training.get("precompute_ref_log_probs")


class Held(typing.NamedTuple):
    """A model a stage holds besides the policy: what it is, its model section, whether it trains, whether it is a
    scorer (a scalar head) rather than a causal LM."""

    role: str  # "reward model", "value model", "teacher": how plan names it
    spec: dict
    trained: bool = False
    scoring: bool = True


# Which logits the loss keeps (posttrain.plan sizes each): TRL SFT's loss ("sft_loss": chunked_nll by default, else
# full fp32), full logits in the compute dtype with a log-softmax per row kept for backward ("per_token_logps"),
# the same over generated tokens only ("generated_logps": TRL passes logits_to_keep), or none (a scalar head).
LOGITS = ("sft_loss", "per_token_logps", "generated_logps", "none")


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What a stage holds in GPU memory, as far as `posttrain plan` is concerned: the stage answers for its recipe."""

    scoring: bool = False  # the trained model is a sequence classifier: a scalar head, no vocabulary logits
    sequences_per_row: int = 1  # 2: chosen and rejected go through the model in one forward
    reference: Callable = lambda recipe: False  # reference(recipe) -> whether a frozen copy of the policy is held
    generated_tokens: Callable = lambda recipe: 0  # generated_tokens(recipe) -> tokens appended to each prompt
    # other_models(recipe) -> [Held]: reward models (frozen), PPO's value model (trained), a teacher (frozen)
    other_models: Callable = lambda recipe: []
    logits: str = "sft_loss"  # one of LOGITS

    def __post_init__(self):
        if self.logits not in LOGITS:
            raise ValueError(f"Footprint.logits: {self.logits!r} is not one of {', '.join(LOGITS)}")


@dataclasses.dataclass(frozen=True)
class Wire:
    """Where a pipeline puts an upstream stage's output in this stage's recipe (unless the recipe's entry set it)."""

    key: str  # a top-level recipe key
    as_item: bool = False  # append {model: output} to the list at `key` (grpo's rewards) instead of setting it


def wire(value) -> Wire:
    return value if isinstance(value, Wire) else Wire(value)


@dataclasses.dataclass(frozen=True)
class Plot:
    """A logged metric `posttrain report` plots over a run's updates."""

    key: str  # as TRL logs it, e.g. "objective/scores"
    title: str


@dataclasses.dataclass(frozen=True)
class NeedsTRL:
    """The TRL releases a stage runs on, where that is narrower than posttrain's supported range (pyproject)."""

    spec: str  # a version specifier, e.g. "<1.13"
    why: str  # what changed in TRL, e.g. "TRL 1.13 removed PPOTrainer"
    instead: str = ""  # what a user of a TRL outside it can do besides installing another TRL

    def refusal(self, stage: str, installed: str) -> str | None:
        """One line when `installed` is outside the range, else None."""
        from packaging.specifiers import SpecifierSet  # packaging: a dependency of transformers

        spec = SpecifierSet(self.spec)
        if spec.contains(installed, prereleases=True):
            return None
        wanted = ", ".join(f"{s.operator} {s.version}" for s in sorted(spec, key=str))
        fix = f"pip install 'trl{self.spec}'" + (f", or {self.instead}" if self.instead else "")
        return f"stage {stage} needs TRL {wanted} ({self.why}); installed: {installed} — {fix}"


@functools.cache
def trl_version() -> str:
    return metadata.version("trl")


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    summary: str  # one line, for `posttrain recipes` and help texts
    trl_config: str  # "module:Class" of the TRL config that owns the `training:` section
    formats: tuple[str, ...]  # data formats the stage trains on; the first is the default
    make_config: Callable  # make_config(recipe) -> the TRL config, built without loading anything
    build: Callable  # build(recipe) -> (trainer, data stats)
    keys: tuple[str, ...] = ()  # stage-specific top-level recipe keys
    required: tuple[str, ...] = ()
    output: str = "policy"  # "policy": a causal LM the next stage can start from | "reward_model"
    # upstream output kind -> where a pipeline puts that stage's output dir: a Wire (a plain key name is
    # Wire(key)); the policy a stage starts from is always `model.name_or_path`
    inputs: dict = dataclasses.field(default_factory=dict)
    resumable: bool = True
    headline: tuple[str, ...] = ()  # metrics shown after a run, in pipeline summaries and reports
    plots: tuple[Plot, ...] = ()  # metrics `posttrain report` plots besides the loss
    footprint: Footprint = Footprint()
    # stage key -> parse(value, where): reads the key once, refusing through `where`; stages read the result from
    # recipe.parsed[key] (e.g. grpo's `rewards:` -> [RewardSpec])
    parse: dict = dataclasses.field(default_factory=dict)
    # training.* keys the stage sets -> where to say it; keys it cannot honour -> why (see posttrain.options)
    managed: dict = dataclasses.field(default_factory=dict)
    refused: dict = dataclasses.field(default_factory=dict)
    checks: tuple[Callable, ...] = ()  # check(recipe, where) at validation; where.fail(dotted, msg) to refuse
    save: Callable | None = None  # save(trainer, path) instead of trainer.save_model
    extra_metrics: Callable | None = None  # extra_metrics(trainer) -> dict, added to the manifest
    position: int = 100  # where it is listed (messages, `posttrain recipes`): the order of a post-training run
    trl: NeedsTRL | None = None  # the TRL releases it runs on, when not every supported one (its classes moved)

    def unavailable(self) -> str | None:
        """Why the installed TRL cannot run this stage (one line), or None. Read from metadata: imports nothing."""
        return self.trl.refusal(self.name, trl_version()) if self.trl else None


_REGISTRY: dict[str, Stage] | None = None
_NOT_STAGES = {"common"}


def all_stages() -> dict[str, Stage]:
    """Every stage, by name, ordered by `position`, then name."""
    global _REGISTRY
    if _REGISTRY is None:
        found = {}
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_") or info.name in _NOT_STAGES:
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            spec = getattr(module, "STAGE", None)
            if isinstance(spec, Stage):
                found[spec.name] = spec
        _REGISTRY = dict(sorted(found.items(), key=lambda kv: (kv[1].position, kv[0])))
    return _REGISTRY


def available() -> dict[str, Stage]:
    """The stages the installed TRL can run (the others are refused at validate with why and the fix)."""
    return {n: s for n, s in all_stages().items() if not s.unavailable()}


def names() -> list[str]:
    return list(all_stages())


def get(name) -> Stage:
    stages = all_stages()
    if not isinstance(name, str) or name not in stages:
        raise RecipeError(f"stage: unknown stage {name!r}; expected one of {', '.join(stages)}"
                          f"{did_you_mean(name, stages)}")
    return stages[name]


def stage_keys() -> list[str]:
    """Every stage-specific top-level key of any stage."""
    return sorted({k for s in all_stages().values() for k in s.keys})


def formats() -> list[str]:
    return sorted({f for s in all_stages().values() for f in s.formats})


def headline(stage: str, metrics: dict) -> dict:
    spec = all_stages().get(stage)
    return {k: metrics[k] for k in (spec.headline if spec else ()) if k in metrics}
