"""cpo -> trl.experimental.cpo.CPOTrainer: contrastive preference optimisation, and SimPO through it.

One model and no reference: the loss is a DPO-style preference term on the policy's own log-probs plus
`training.cpo_alpha` x the NLL of the chosen completion. SimPO (length-normalised rewards and a target margin
`simpo_gamma`, no NLL term) is `training.loss_type: simpo` with `cpo_alpha: 0`; AlphaPO is `loss_type:
alphapo` (TRL turns it into simpo with cpo_alpha 0) with `alpha`. Preference rows; without a `prompt` column
TRL takes the common prefix of chosen and rejected as the prompt. TRL truncates long pairs (the prompt
first), it drops none.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from posttrain.stages import Footprint, Plot, Stage, common, orpo
from posttrain.util import Where

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def check_simpo_gamma(recipe: Recipe, where: Where):
    """simpo_gamma is read only by the simpo loss: set with another loss, it would silently do nothing."""
    t = common.training_with_defaults(recipe)
    if "simpo_gamma" in recipe.training and t["loss_type"] not in ("simpo", "alphapo"):
        where.fail("training.simpo_gamma", f"is read only by loss_type simpo (or alphapo), and loss_type is "
                   f"'{t['loss_type']}'; set training.loss_type: simpo (with cpo_alpha: 0 for SimPO) or remove it")


STAGE = Stage(
    name="cpo",
    summary="contrastive preference optimisation, or SimPO with loss_type: simpo, no reference model "
            "(trl.experimental.cpo)",
    trl_config="trl.experimental.cpo:CPOConfig",
    formats=("preference",),
    make_config=common.max_length_config,
    build=functools.partial(orpo.build, trainer="trl.experimental.cpo:CPOTrainer"),
    extra_metrics=common.last_logged("rewards/accuracies", "rewards/margins", "nll_loss"),
    headline=("eval_rewards/accuracies", "eval_rewards/margins", "rewards/accuracies", "rewards/margins"),
    plots=(Plot("rewards/margins", "reward margin"), Plot("rewards/accuracies", "pair accuracy")),
    footprint=Footprint(sequences_per_row=2, logits="per_token_logps"),
    checks=(check_simpo_gamma,),
    position=52,
)
