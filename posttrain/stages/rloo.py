"""rloo -> trl.RLOOTrainer: the grpo stage with a leave-one-out baseline; same recipe keys.

Unlike GRPO (beta 0), RLOO's default beta is 0.05: without LoRA, TRL then reloads a reference copy of
the policy from its `name_or_path` on disk.
"""

from __future__ import annotations

from posttrain.recipe import Recipe
from posttrain.stages import common, grpo

config = grpo.config


def build(recipe: Recipe):
    return grpo.build(recipe, "RLOOTrainer")


def train(recipe: Recipe, **kw) -> dict:
    return common.run(recipe, build, extra_metrics=grpo.reward_metrics, **kw)
