"""dpo -> trl.DPOTrainer on preference data.

Reference policy, in order: the disabled LoRA adapter when `peft` is set (no second model);
none at all with `training.precompute_ref_log_probs` (log-probs computed once before training);
the recipe's `ref_model`; otherwise a second, frozen copy of the starting model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.data.trl_rows import count_dropped_by_trl, load_pairs
from posttrain.models import load_causal_lm, load_tokenizer, lora_config
from posttrain.stages import Footprint, Plot, Stage, common, reference_unless_peft_or_precompute

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def reference(recipe: Recipe, args, tokenizer):
    if recipe.peft or args.precompute_ref_log_probs:
        return None
    source = recipe.extra.get("ref_model")
    model = {**recipe.model, "name_or_path": source, "gguf_file": None} if source else recipe.model
    return load_causal_lm(model, recipe.quantization, tokenizer).requires_grad_(False).eval()


def build(recipe: Recipe):
    from trl import DPOTrainer

    args = common.max_length_config(recipe)
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = load_pairs(recipe, args, tokenizer)
    model = common.load_policy(recipe, args, tokenizer)
    trainer = DPOTrainer(model=model, ref_model=reference(recipe, args, tokenizer), args=args,
                         train_dataset=train, eval_dataset=eval_ds, processing_class=tokenizer,
                         peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    count_dropped_by_trl(trainer, stats)
    return trainer, stats


STAGE = Stage(
    name="dpo",
    summary="direct preference optimisation on preference pairs (trl.DPOTrainer)",
    trl_config="trl:DPOConfig",
    formats=("preference",),
    make_config=common.max_length_config,
    build=build,
    extra_metrics=common.last_logged("rewards/accuracies", "rewards/margins"),
    keys=("ref_model",),
    headline=("eval_rewards/accuracies", "eval_rewards/margins", "rewards/accuracies", "rewards/margins"),
    plots=(Plot("rewards/margins", "reward margin"), Plot("rewards/accuracies", "pair accuracy")),
    footprint=Footprint(sequences_per_row=2, reference=reference_unless_peft_or_precompute, logits="per_token_logps"),
    refused={"padding_free": "TRL 1.12's DPOTrainer turns it off and pads (a warning, after loading); remove it"},
    position=30,
)
