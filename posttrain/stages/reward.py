"""reward -> trl.RewardTrainer on AutoModelForSequenceClassification(num_labels=1), preference data."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.data.trl_rows import count_dropped_by_trl, load_pairs
from posttrain.models import load_seq_cls, load_tokenizer, lora_config
from posttrain.stages import Footprint, Stage, common

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def build(recipe: Recipe):
    from transformers import set_seed
    from trl import RewardTrainer

    args = common.max_length_config(recipe)
    tokenizer = load_tokenizer(recipe.model, eos_token=args.eos_token)  # TRL appends it to chosen/rejected
    train, eval_ds, stats = load_pairs(recipe, args, tokenizer)
    set_seed(args.seed)  # the new score head and any LoRA adapter are initialised from this RNG
    model = load_seq_cls(recipe.model, tokenizer, recipe.quantization)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=lora_config(recipe.peft, "SEQ_CLS", tokenizer, model))
    count_dropped_by_trl(trainer, stats)
    return trainer, stats


def save_merged(trainer, path: str):
    """A LoRA reward model is saved merged into its base: what consumes it (PPO, GRPO, scoring) needs a
    whole sequence-classification model, and the adapter alone cannot say that its head has 1 label."""
    model = trainer.model
    if not trainer.args.should_save:
        return
    if hasattr(model, "merge_and_unload") and not getattr(model, "is_loaded_in_4bit", False) \
            and not getattr(model, "is_loaded_in_8bit", False):
        model = model.merge_and_unload()
        model.save_pretrained(path)
        trainer.processing_class.save_pretrained(path)
    else:
        trainer.save_model(path)


STAGE = Stage(
    name="reward",
    summary="a reward model: a scalar score head trained on preference pairs (trl.RewardTrainer)",
    trl_config="trl:RewardConfig",
    formats=("preference",),
    make_config=common.max_length_config,
    build=build,
    save=save_merged,
    output="reward_model",
    headline=("eval_accuracy", "eval_margin", "accuracy", "margin"),
    footprint=Footprint(scoring=True, sequences_per_row=2, logits="none"),
    position=20,
)
