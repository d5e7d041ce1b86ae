"""sft -> trl.SFTTrainer, with posttrain's exact prompt masking (data/collator.py) owning the labels."""

from __future__ import annotations

from posttrain.data import packing
from posttrain.data.collator import SFTCollator, tokenize_dataset
from posttrain.data.sources import load_splits
from posttrain.models import load_causal_lm, load_tokenizer, lora_config
from posttrain.recipe import Recipe
from posttrain.stages import common


def config(recipe: Recipe):
    # TRL leaves a dataset alone only with both of these; our collator then owns truncation, EOS and labels.
    return common.build_config(
        recipe,
        max_length=recipe.data["max_length"],
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
        packing=False,  # training.packing is honoured by our collator (data/packing.py), never by TRL's
    )


def prepare_data(recipe: Recipe, tokenizer, args):
    """Load, format and tokenize train/eval once (main process first under DDP)."""
    data = recipe.data
    with args.main_process_first(desc="tokenizing the dataset"):
        train, eval_ds = load_splits(data, seed=args.seed)
        train, stats = tokenize_dataset(train, data["format"], tokenizer, data["max_length"], data["train"],
                                        data.get("num_proc"))
        stats = {"train": stats}
        if eval_ds is not None:
            eval_ds, stats["eval"] = tokenize_dataset(eval_ds, data["format"], tokenizer, data["max_length"],
                                                      data.get("eval") or f"{data['train']} (eval split)",
                                                      data.get("num_proc"))
    return train, eval_ds, stats


def build(recipe: Recipe):
    from transformers import set_seed
    from trl import SFTTrainer

    args = config(recipe)
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = prepare_data(recipe, tokenizer, args)
    set_seed(args.seed)  # before the LoRA adapter is created: its initial weights come from this RNG
    model = load_causal_lm(recipe.model, recipe.quantization, tokenizer)
    pack = bool(recipe.training.get("packing"))
    if pack:
        packing.check_model(model)
        packing.use_segment_sdpa(model)  # sdpa -> per-row sdpa: no [total x total] mask (see data/packing.py)
    collate = packing.PackedCollator if pack else SFTCollator
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=collate(tokenizer.pad_token_id, recipe.data.get("pad_to_multiple_of")),
        peft_config=lora_config(recipe.peft),
    )
    return trainer, stats


def train(recipe: Recipe, **kw) -> dict:
    return common.run(recipe, build, **kw)
