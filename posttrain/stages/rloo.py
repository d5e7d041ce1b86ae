"""rloo -> trl.RLOOTrainer: the grpo stage with a leave-one-out baseline; same recipe keys.

Unlike GRPO (beta 0), RLOO's default beta is 0.05: without LoRA, TRL then reloads a reference copy of
the policy from its `name_or_path` on disk (grpo.reference reads the default from the stage's TRL config).
"""

from __future__ import annotations

import dataclasses
import functools

from posttrain.stages import grpo

STAGE = dataclasses.replace(
    grpo.STAGE,
    name="rloo",
    summary="online RL on prompts with a leave-one-out baseline (trl.RLOOTrainer); keys as grpo",
    trl_config="trl:RLOOConfig",
    build=functools.partial(grpo.build, trainer_class="RLOOTrainer"),
    position=80,
)
