"""gkd -> trl.experimental.gkd.GKDTrainer: generalised knowledge distillation from a teacher model.

The student (`model`) learns the teacher's (`teacher_model`) next-token distributions over each row's
response (a generalised Jensen-Shannon divergence; training.beta 0 is forward KL, 1 reverse KL). With
probability training.lmbda a step uses responses the student samples itself (on-policy, up to
training.max_new_tokens), with training.seq_kd responses the teacher samples, else the data's. Teacher and
student must share a vocabulary (TRL checks it after loading; e.g. gpt2 -> distilgpt2).

Rows are tokenized by posttrain as for SFT (same formats, templates and exact prompt/response boundary), then
TRL's DataCollatorForChatML takes the response as everything after the prompt: so a conversation's prompt
is all of it up to its last assistant turn (TRL's own reading of `messages`), i.e. data.train_on is always
last_assistant. In a pipeline, an upstream policy stage's output becomes the teacher (the student is the
recipe's model).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain.data.collator import IGNORE_INDEX
from posttrain.models import knows_new_tokens, load_causal_lm, load_tokenizer, lora_config, match_eos
from posttrain.stages import Footprint, Held, Stage, common, sft
from posttrain.util import Where, show

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

TRAIN_ON = "last_assistant"


def check_data(recipe: Recipe, where: Where):
    """The collator trains every token after the prompt, and has no padding-multiple option."""
    if recipe.data.get("train_on") not in (None, TRAIN_ON):
        where.fail("data.train_on", f"GKD distils the response after the prompt (for conversations: the last "
                   f"assistant turn), so only '{TRAIN_ON}' can be honoured, got {show(recipe.data['train_on'])}")
    if recipe.data.get("pad_to_multiple_of") is not None:
        where.fail("data.pad_to_multiple_of", "TRL's GKD collator (DataCollatorForChatML) cannot pad to a multiple; "
                   "remove it")


def check_teacher(recipe: Recipe, where: Where):
    """A teacher is named, and when both models are local directories, shares the student's vocabulary size
    (TRL compares them only after loading both models)."""
    teacher = recipe.extra.get("teacher_model")
    name = teacher.get("name_or_path") if isinstance(teacher, dict) else teacher
    if not isinstance(name, str) or not name.strip():
        where.fail("teacher_model", f"expected a model path or hub id (or a mapping like `model:`), got {show(teacher)}")
    sizes = [_local_vocab_size(spec) for spec in (recipe.model, common.model_spec(teacher, recipe))]
    if None not in sizes and sizes[0] != sizes[1]:
        where.fail("teacher_model", f"has a vocabulary of {sizes[1]} tokens and the student ({recipe.model['name_or_path']}) "
                   f"{sizes[0]}: GKD compares full next-token distributions, so both must share one vocabulary")


def _local_vocab_size(spec: dict) -> int | None:
    """vocab_size from a local model directory's config.json (no weights, no network); None otherwise."""
    cfg = Path(str(spec.get("name_or_path") or "")).expanduser() / "config.json"
    if spec.get("gguf_file") or not cfg.is_file():
        return None
    try:
        doc = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return (doc.get("text_config") or {}).get("vocab_size") or doc.get("vocab_size")


def for_chatml_collator(ds, tokenizer, num_proc=None):
    """posttrain's {input_ids, labels} -> what TRL's DataCollatorForChatML reads for pre-tokenized rows:
    input_ids, a completion_mask (its first 1 ends the prompt) and the prompt's text (it asks for one)."""
    def fn(ids, labels):
        n = [next((i for i, lab in enumerate(row) if lab != IGNORE_INDEX), len(row)) for row in labels]
        return {"completion_mask": [[int(lab != IGNORE_INDEX) for lab in row] for row in labels],
                "prompt": tokenizer.batch_decode([row[:k] for row, k in zip(ids, n)])}

    return ds.map(fn, input_columns=["input_ids", "labels"], batched=True, remove_columns=["labels"],
                  num_proc=num_proc, desc="Marking prompts")


def build(recipe: Recipe):
    from trl.experimental.gkd import GKDTrainer

    args = common.max_length_config(recipe)
    tokenizer = load_tokenizer(recipe.model, eos_token=args.eos_token)
    common.whole_logits_for_new_rows(recipe, args, tokenizer)
    as_gkd = dataclasses.replace(recipe, data={**recipe.data, "train_on": TRAIN_ON})
    train, eval_ds, stats = sft.prepare_data(as_gkd, tokenizer, args)
    with args.main_process_first(desc="marking prompts"):
        train = for_chatml_collator(train, tokenizer, recipe.data.get("num_proc"))
        if eval_ds is not None:
            eval_ds = for_chatml_collator(eval_ds, tokenizer, recipe.data.get("num_proc"))
    model = common.load_policy(recipe, args, tokenizer)
    if args.eos_token is not None:
        match_eos(model, tokenizer)
    trainer = GKDTrainer(model=model, teacher_model=load_teacher(recipe, tokenizer), args=args, train_dataset=train,
                         eval_dataset=eval_ds, processing_class=tokenizer,
                         peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    return trainer, stats


def load_teacher(recipe: Recipe, tokenizer):
    """The frozen `teacher_model` (gkd, distill), loaded with the recipe's model settings; it must already know the
    tokens the recipe adds, at the same ids."""
    spec = common.model_spec(recipe.extra["teacher_model"], recipe)
    knows_new_tokens(spec, tokenizer, "teacher model")
    return load_causal_lm(spec, None, tokenizer).requires_grad_(False).eval()


def teacher(recipe: Recipe) -> list:
    """The teacher, held frozen (a causal LM: plan sizes it as one)."""
    return [Held("teacher", common.model_spec(recipe.extra["teacher_model"], recipe), scoring=False)]


_NO_PACKING = "TRL's GKD collator (DataCollatorForChatML) pads each row; GKD cannot pack"

STAGE = Stage(
    name="gkd",
    summary="on-policy distillation: a student learns a teacher's token distributions (trl.experimental.gkd)",
    trl_config="trl.experimental.gkd:GKDConfig",
    formats=("messages", "prompt_completion", "alpaca"),
    make_config=common.max_length_config,
    build=build,
    keys=("teacher_model",),
    required=("teacher_model",),
    inputs={"policy": "teacher_model"},
    headline=("eval_loss", "train_loss"),
    footprint=Footprint(generated_tokens=common.training_value("max_new_tokens"), other_models=teacher,
                        logits="per_token_logps"),
    managed={
        "teacher_model_name_or_path": "set the top-level `teacher_model`",
        "teacher_model_init_kwargs": "posttrain loads the teacher itself: give `teacher_model` a mapping like "
                                     "`model:` (name_or_path, dtype, attn_implementation, revision)",
        "dataset_kwargs": "posttrain prepares the dataset itself",
        "dataset_text_field": "choose the input shape with `data.format`",
        "completion_only_loss": "GKD distils the response only; posttrain masks the prompt exactly",
        "assistant_only_loss": "GKD distils the last assistant turn of a conversation (after its prompt)",
        "truncation_mode": "posttrain cuts each row at `data.max_length`, keeping the prompt and the start of the "
                           "response",
        "shuffle_dataset": "the trainer's sampler shuffles the rows every epoch (`training.train_sampling_strategy`)",
    },
    refused={
        "packing": _NO_PACKING, "padding_free": _NO_PACKING, "packing_strategy": _NO_PACKING,
        "eval_packing": _NO_PACKING,
        "loss_type": "GKD's loss is the generalised Jensen-Shannon divergence (weigh it with training.beta); "
                     "SFT's loss types do not apply",
        "router_aux_loss_coef": "GKDTrainer's loss does not add a mixture-of-experts router loss",
    },
    checks=(check_teacher, check_data),
    position=57,
)
