"""kto -> trl.KTOTrainer: Kahneman-Tversky optimisation on unpaired feedback.

Rows are `{prompt, completion, label}` (label true: a desirable completion; text, or conversations with
`data.template: chat`, or `{messages, label}` read as such) — `data.format: unpaired` — or preference
pairs, unpaired here into a chosen (true) and a rejected (false) row side by side. TRL's KTO reads batches
in order (its KL term pairs each row with its neighbours), so the training rows are
shuffled once (seeded) first: a batch then mixes desirable and undesirable rows whatever the file order
(TRL's own unpairing puts a map-batch's chosen rows before its rejected ones).
Reference policy as in dpo: the disabled LoRA adapter with `peft`, none with
`training.precompute_ref_log_probs`, the recipe's `ref_model`, else a frozen copy of the starting model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.data.trl_rows import load_pairs
from posttrain.errors import DataError
from posttrain.models import load_tokenizer, lora_config
from posttrain.stages import Footprint, Plot, Stage, common, dpo, reference_unless_peft_or_precompute
from posttrain.util import Where

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

KL_FREE_LOSSES = ("apo_zero_unpaired",)  # the loss types that do not estimate the KL term from the batch


def check_kl_batch(recipe: Recipe, where: Where):
    """KTO estimates its KL term from the other completions of a batch: TRL refuses a batch of one, and any
    order but sequential, once both models are loaded; say it at validation instead."""
    t = common.training_with_defaults(recipe)
    if t.get("loss_type") in KL_FREE_LOSSES:
        return
    if t["per_device_train_batch_size"] <= 1:
        where.fail("training.per_device_train_batch_size", f"KTO's loss '{t.get('loss_type')}' estimates its KL term "
                   "from the other rows of a batch: use at least 2 (or loss_type: apo_zero_unpaired)")
    if t.get("train_sampling_strategy", "sequential") != "sequential":
        where.fail("training.train_sampling_strategy", f"KTO's loss '{t.get('loss_type')}' pairs each row with its "
                   "neighbours in a fixed-order batch: it needs 'sequential' (or loss_type: apo_zero_unpaired)")


def _as_label(value) -> bool:
    if isinstance(value, bool):
        return value
    if value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(f"column 'label': expected true/false (is the completion desirable?), got {value!r:.40}")


def _read_labels(ds):
    return ds.map(lambda v: {"label": [_as_label(x) for x in v]}, input_columns="label", batched=True)


def unpair(ds):
    """Preference rows -> unpaired rows, each pair's chosen (label true) then rejected (false)."""
    def rows(batch):
        out = {"prompt": [], "completion": [], "label": []}
        for p, c, r in zip(batch["prompt"], batch["chosen"], batch["rejected"]):
            out["prompt"] += [p, p]
            out["completion"] += [c, r]
            out["label"] += [True, False]
        return out

    if "prompt" not in ds.column_names:
        from trl.data_utils import extract_prompt

        ds = ds.map(extract_prompt, desc="Extracting prompts")  # chosen/rejected share the prompt as a prefix
    return ds.map(rows, batched=True, remove_columns=ds.column_names, desc="Unpairing")


def build(recipe: Recipe):
    from trl import KTOTrainer

    args = common.max_length_config(recipe)
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = load_pairs(recipe, args, tokenizer)
    to_rows = _read_labels if recipe.data["format"] == "unpaired" else unpair
    with args.main_process_first(desc="unpairing"):
        train = to_rows(train.shuffle(seed=args.seed))
        if eval_ds is not None:
            eval_ds = to_rows(eval_ds)
    model = common.load_policy(recipe, args, tokenizer)
    trainer = KTOTrainer(model=model, ref_model=dpo.reference(recipe, args, tokenizer), args=args,
                         train_dataset=train, eval_dataset=eval_ds, processing_class=tokenizer,
                         peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    return trainer, stats


STAGE = Stage(
    name="kto",
    summary="Kahneman-Tversky optimisation on unpaired good/bad completions or preference pairs (trl.KTOTrainer)",
    trl_config="trl:KTOConfig",
    formats=("unpaired", "preference"),
    make_config=common.max_length_config,
    build=build,
    extra_metrics=common.last_logged("rewards/margins", "rewards/chosen", "rewards/rejected", "kl"),
    keys=("ref_model",),
    headline=("eval_rewards/margins", "eval_kl", "rewards/margins", "kl"),
    plots=(Plot("rewards/margins", "reward margin"), Plot("kl", "KL to reference")),
    footprint=Footprint(sequences_per_row=2, reference=reference_unless_peft_or_precompute, logits="per_token_logps"),
    checks=(check_kl_batch,),
    position=40,
)
