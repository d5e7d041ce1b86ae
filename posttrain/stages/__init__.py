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
import importlib
import pkgutil
from collections.abc import Callable

from posttrain.errors import RecipeError
from posttrain.util import did_you_mean


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What a stage holds in GPU memory, as far as `posttrain plan` is concerned."""

    scoring: bool = False  # the trained model is a sequence classifier: a scalar head, no vocabulary logits
    sequences_per_row: int = 1  # 2: chosen and rejected go through the model in one forward
    # when a frozen reference copy of the policy is held: None (never), "unless_peft" (the disabled adapter
    # is the reference), "unless_peft_or_precompute" (+ training.precompute_ref_log_probs), "if_beta"
    # (only when training.beta, default `beta_default`, is non-zero, and not with peft)
    reference: str | None = None
    beta_default: float = 0.0
    # the training key that bounds generated tokens appended to each prompt, and its TRL default
    generated_tokens_key: str | None = None
    generated_tokens_default: int = 0
    reward_and_value_models: bool = False  # PPO: a frozen reward model and a trained value model
    reward_models_key: str | None = None  # a recipe key listing reward models held frozen (grpo/rloo `rewards`)
    teacher_key: str | None = None  # a recipe key naming a frozen teacher model (gkd `teacher_model`)
    # which logits the loss keeps: "sft_loss" (TRL SFT loss_type: chunked_nll by default, else full fp32),
    # "per_token_logps" (full logits in the compute dtype, a log-softmax per row kept for backward),
    # "generated_logps" (the same over generated tokens only: TRL passes logits_to_keep), "none" (scoring)
    logits: str = "sft_loss"


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
    # upstream output kind -> the recipe key a pipeline fills with that stage's output dir (`key[]`: appended
    # to a list as {model: dir}); an upstream policy becomes `model.name_or_path` (the policy this stage starts
    # from) unless the stage maps "policy" to another key (gkd: its teacher)
    inputs: dict = dataclasses.field(default_factory=dict)
    resumable: bool = True
    headline: tuple[str, ...] = ()  # metrics shown after a run, in pipeline summaries and reports
    footprint: Footprint = Footprint()
    # training.* keys the stage sets -> where to say it; keys it cannot honour -> why (see posttrain.options)
    managed: dict = dataclasses.field(default_factory=dict)
    refused: dict = dataclasses.field(default_factory=dict)
    checks: tuple[Callable, ...] = ()  # check(recipe, where) at validation; where.fail(dotted, msg) to refuse
    save: Callable | None = None  # save(trainer, path) instead of trainer.save_model
    extra_metrics: Callable | None = None  # extra_metrics(trainer) -> dict, added to the manifest
    position: int = 100  # where it is listed (messages, `posttrain recipes`): the order of a post-training run

    @property
    def is_policy(self) -> bool:
        return self.output == "policy"

    def train(self, recipe, **kw) -> dict:
        from posttrain.stages import common

        return common.run(recipe, self, **kw)


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
