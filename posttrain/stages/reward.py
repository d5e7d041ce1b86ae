"""reward -> trl.RewardTrainer on AutoModelForSequenceClassification(num_labels=1), preference data."""

from __future__ import annotations

from posttrain.data.formats import clean_pairs_or_prompts
from posttrain.data.mixture import label
from posttrain.data.sources import load_splits
from posttrain.models import load_seq_cls, load_tokenizer, lora_config
from posttrain.recipe import Recipe
from posttrain.stages import common


def config(recipe: Recipe):
    return common.build_config(recipe, max_length=recipe.data["max_length"])


def load_pairs(recipe: Recipe, args, keep_extra: bool = False):
    """Train/eval preference (or prompt) rows, checked and cleaned, main process first."""
    data = recipe.data
    with args.main_process_first(desc="checking the dataset"):
        train, eval_ds, sources = load_splits(data, seed=args.seed)
        train, stats = clean_pairs_or_prompts(train, data["format"], label(data), keep_extra)
        stats = {"train": stats}
        if eval_ds is not None:
            eval_ds, stats["eval"] = clean_pairs_or_prompts(eval_ds, data["format"],
                                                            label(data, "eval" if data.get("eval") else "train"),
                                                            keep_extra)
        stats["sources"] = sources
    return train, eval_ds, stats


def count_dropped_by_trl(trainer, stats: dict):
    """TRL drops (does not truncate) pairs longer than max_length: record how many, and warn."""
    for split, ds in (("train", trainer.train_dataset), ("eval", trainer.eval_dataset)):
        if split in stats and ds is not None:
            over = stats[split]["kept"] - len(ds)
            stats[split]["dropped_over_max_length"] = over
            stats[split]["kept"] = len(ds)
            if over:
                common.log.warning("%s split: %d pairs longer than max_length=%d were dropped by TRL",
                                   split, over, trainer.args.max_length)
    if not len(trainer.train_dataset):
        from posttrain.errors import DataError

        raise DataError(f"no training pair fits max_length={trainer.args.max_length}; raise data.max_length")


def build(recipe: Recipe):
    from transformers import set_seed
    from trl import RewardTrainer

    args = config(recipe)
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = load_pairs(recipe, args)
    set_seed(args.seed)  # the new score head and any LoRA adapter are initialised from this RNG
    model = load_seq_cls(recipe.model, tokenizer, recipe.quantization)
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_ds,
                            processing_class=tokenizer, peft_config=lora_config(recipe.peft, "SEQ_CLS"))
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


def train(recipe: Recipe, **kw) -> dict:
    return common.run(recipe, build, save=save_merged, **kw)
