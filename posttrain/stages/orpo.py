"""orpo -> trl.experimental.orpo.ORPOTrainer: odds-ratio preference optimisation.

One model and no reference: the loss is the SFT loss on the chosen completion plus a log-odds-ratio
term that prefers it over the rejected one (training.beta weighs it). Preference rows; without a
`prompt` column TRL takes the common prefix of chosen and rejected as the prompt. TRL truncates long
pairs (the prompt first), it drops none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.data.trl_rows import load_pairs
from posttrain.models import load_tokenizer, lora_config
from posttrain.stages import Footprint, Plot, Stage, common

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def build(recipe: Recipe, trainer: str = "trl.experimental.orpo:ORPOTrainer"):
    """Preference pairs, no reference model: ORPO's trainer, or another of the same shape (cpo)."""
    import importlib

    module, name = trainer.split(":")
    trainer_class = getattr(importlib.import_module(module), name)
    args = common.max_length_config(recipe)
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = load_pairs(recipe, args, tokenizer)
    model = common.load_policy(recipe, args, tokenizer)
    trainer = trainer_class(model=model, args=args, train_dataset=train, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    return trainer, stats


STAGE = Stage(
    name="orpo",
    summary="odds-ratio preference optimisation: SFT and preference in one loss, no reference model "
            "(trl.experimental.orpo)",
    trl_config="trl.experimental.orpo:ORPOConfig",
    formats=("preference",),
    make_config=common.max_length_config,
    build=build,
    extra_metrics=common.last_logged("rewards/accuracies", "rewards/margins", "log_odds_ratio", "nll_loss"),
    headline=("eval_rewards/accuracies", "eval_rewards/margins", "rewards/accuracies", "rewards/margins"),
    plots=(Plot("rewards/margins", "reward margin"), Plot("rewards/accuracies", "pair accuracy")),
    footprint=Footprint(sequences_per_row=2, logits="per_token_logps"),
    position=50,
)
