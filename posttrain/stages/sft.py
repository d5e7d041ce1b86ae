"""sft -> trl.SFTTrainer, with posttrain's exact prompt masking (data/collator.py) owning the labels."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.data import packing
from posttrain.data.collator import SFTCollator, tokenize_dataset
from posttrain.data.mixture import label, load_splits
from posttrain.models import load_tokenizer, lora_config, match_eos
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
        packing=False,  # training.packing is honoured by our collator (data/packing.py), never by TRL's
    )


def prepare_data(recipe: Recipe, tokenizer, args):
    """Load, format and tokenize train/eval once (main process first under DDP)."""
    data = recipe.data
    with args.main_process_first(desc="tokenizing the dataset"):
        train, eval_ds, sources = load_splits(data, seed=args.seed)
        how = {"train_on": data.get("train_on") or "assistant", "template": data.get("template"),
               "max_prompt_length": data.get("max_prompt_length")}
        train, stats = tokenize_dataset(train, data["format"], tokenizer, data["max_length"], label(data),
                                        data.get("num_proc"), **how)
        stats = {"train": stats}
        if eval_ds is not None:
            eval_ds, stats["eval"] = tokenize_dataset(eval_ds, data["format"], tokenizer, data["max_length"],
                                                      label(data, "eval") if data.get("eval")
                                                      else f"{label(data)} (eval split)",
                                                      data.get("num_proc"), **how)
        stats["sources"] = sources
    return train, eval_ds, stats


def build(recipe: Recipe):
    from trl import SFTTrainer

    args = config(recipe)
    # training.eos_token: the rows end with it, the saved tokenizer says it, the model stops on it
    tokenizer = load_tokenizer(recipe.model, eos_token=args.eos_token)
    common.whole_logits_for_new_rows(recipe, args, tokenizer)
    train, eval_ds, stats = prepare_data(recipe, tokenizer, args)
    model = common.load_policy(recipe, args, tokenizer)
    pack = bool(recipe.training.get("packing"))
    if pack:
        packing.check_model(model)
        packing.use_segment_sdpa(model)  # sdpa -> per-row sdpa: no [total x total] mask (see data/packing.py)
    collate = packing.PackedCollator if pack else SFTCollator
    if args.eos_token is not None:
        match_eos(model, tokenizer)
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=eval_ds, processing_class=tokenizer,
                         data_collator=collate(tokenizer.pad_token_id, recipe.data.get("pad_to_multiple_of")),
                         peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    return trainer, stats


def check_packing(recipe: Recipe, where) -> None:
    """`training.packing` only on an architecture and attention that keep rows apart (read from config.json)."""
    if recipe.training.get("packing"):
        problem = packing.packing_problem(packing.model_type(recipe.model), recipe.model.get("attn_implementation"))
        if problem:
            where.fail("training.packing", problem)


STAGE = Stage(
    name="sft",
    summary="supervised fine-tuning with exact prompt masking (trl.SFTTrainer)",
    trl_config="trl:SFTConfig",
    formats=("alpaca", "prompt_completion", "messages", "text"),
    make_config=config,
    build=build,
    headline=("eval_loss", "train_loss"),
    footprint=Footprint(logits="sft_loss"),
    managed={
        "dataset_kwargs": "posttrain prepares the dataset itself",
        "dataset_text_field": "choose the input shape with `data.format`",
        "completion_only_loss": "posttrain always masks the prompt exactly (see README: prompt masking)",
        "assistant_only_loss": "use `data.train_on` (assistant, the default for messages data; all; last_assistant)",
        # packing has one switch, `training.packing`:
        "padding_free": "use `training.packing: true` (posttrain's packing is padding-free and keeps exact labels)",
        "packing_strategy": "posttrain packs each batch's rows as they come (see README: Packing)",
        "eval_packing": "eval batches are packed like train batches when `training.packing` is true",
        # TRL applies these while preparing the dataset, which posttrain does itself (dataset_kwargs above)
        "truncation_mode": "posttrain cuts each row at `data.max_length`, keeping the prompt and the start of the "
                           "response",
        "shuffle_dataset": "the trainer's sampler shuffles the rows every epoch (`training.train_sampling_strategy`)",
    },
    checks=(check_packing,),
    position=10,
)
