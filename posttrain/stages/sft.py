"""sft -> trl.SFTTrainer, with posttrain's exact prompt masking (data/collator.py) owning the labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.data.collator import SFTCollator, tokenize_dataset
from posttrain.data.sources import load_splits
from posttrain.models import load_causal_lm, load_tokenizer, lora_config, match_eos
from posttrain.stages import Footprint, Stage, common

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def config(recipe: Recipe):
    # TRL leaves a dataset alone only with both of these; our collator then owns truncation, EOS and labels.
    return common.build_config(
        recipe,
        max_length=recipe.data["max_length"],
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
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
    # training.eos_token: the rows end with it, the saved tokenizer says it, the model stops on it
    tokenizer = load_tokenizer(recipe.model, eos_token=args.eos_token)
    train, eval_ds, stats = prepare_data(recipe, tokenizer, args)
    set_seed(args.seed)  # before the LoRA adapter is created: its initial weights come from this RNG
    model = load_causal_lm(recipe.model, recipe.quantization, tokenizer)
    if args.eos_token is not None:
        match_eos(model, tokenizer)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        data_collator=SFTCollator(tokenizer.pad_token_id, recipe.data.get("pad_to_multiple_of")),
        peft_config=lora_config(recipe.peft),
    )
    return trainer, stats


STAGE = Stage(
    name="sft",
    summary="supervised fine-tuning with exact prompt masking (trl.SFTTrainer)",
    trl_config="trl:SFTConfig",
    formats=("alpaca", "prompt_completion", "messages"),
    make_config=config,
    build=build,
    headline=("eval_loss", "train_loss"),
    footprint=Footprint(),
    managed={
        "dataset_kwargs": "posttrain prepares the dataset itself",
        "dataset_text_field": "choose the input shape with `data.format`",
        "completion_only_loss": "posttrain always masks the prompt exactly (see README: prompt masking)",
        "assistant_only_loss": "use `data.format: messages`, which trains on assistant turns only",
        "packing": "not compatible with exact per-row prompt masking in this version",
        "padding_free": "not compatible with exact per-row prompt masking in this version",
    },
    position=10,
)
