"""distill -> trl.DistillationTrainer: on-policy distillation, TRL's stable successor of the experimental GKD.

The student (`model`) samples a completion for each prompt and learns the teacher's (`teacher_model`) next-token
distributions over it (a generalised Jensen-Shannon divergence, training.beta: 0 forward KL, 1 reverse KL). Unlike
gkd there are no dataset responses: rows are prompts (`data.format: prompt`, text or conversations), and every step is
on-policy. Teacher and student share a vocabulary (checked at validate for local models, as in gkd). In a pipeline,
an upstream policy stage's output becomes the teacher.

Defaults: TRL's DistillationConfig defaults differ from GKDConfig's on the same knobs (completions of 512 tokens
vs GKD's max_new_tokens 128, beta 1.0 vs 0.5, learning rate 1e-6 vs 2e-5). A distill recipe states what it means;
a gkd-only key in a distill recipe is refused, naming the distill key and its TRL default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.models import load_tokenizer, lora_config
from posttrain.stages import Footprint, Stage, common, gkd, grpo

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def config(recipe: Recipe):
    # TRL passes the dataset's rows to its own collator by column: it reads `prompt` (and chat_template_kwargs)
    return common.build_config(recipe, remove_unused_columns=False)


def build(recipe: Recipe):
    from trl import DistillationTrainer

    args = config(recipe)
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = grpo.load_prompts(recipe, args, tokenizer, specs=[])  # prompts over max_length dropped
    model = common.load_policy(recipe, args, tokenizer)
    trainer = DistillationTrainer(model=model, teacher_model=gkd.load_teacher(recipe, tokenizer), args=args,
                                  train_dataset=train, eval_dataset=eval_ds, processing_class=tokenizer,
                                  peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    return trainer, stats


STAGE = Stage(
    name="distill",
    summary="on-policy distillation on prompts: a student learns a teacher's token distributions "
            "(trl.DistillationTrainer)",
    trl_config="trl:DistillationConfig",
    formats=("prompt",),
    make_config=config,
    build=build,
    keys=("teacher_model",),
    required=("teacher_model",),
    inputs={"policy": "teacher_model"},
    headline=("eval_loss", "train_loss"),
    footprint=Footprint(generated_tokens=common.training_value("max_completion_length"), other_models=gkd.teacher,
                        logits="generated_logps"),
    managed={
        "teacher_model_name_or_path": "set the top-level `teacher_model`",
        "teacher_model_revision": "give `teacher_model` a mapping like `model:` with its `revision`",
        "teacher_model_init_kwargs": "posttrain loads the teacher itself: give `teacher_model` a mapping like "
                                     "`model:` (name_or_path, dtype, attn_implementation, revision)",
        "shuffle_dataset": "the trainer's sampler shuffles the rows every epoch (`training.train_sampling_strategy`)",
    },
    refused={
        "max_new_tokens": "gkd's name for it: DistillationTrainer's is `training.max_completion_length` (its TRL default "
                          "is 512 tokens; gkd's max_new_tokens defaults to 128)",
        "lmbda": "every distill step is on-policy (the student samples); for a mix with the data's responses use "
                 "stage gkd",
        "seq_kd": "the student samples every completion; for teacher-sampled ones use stage gkd",
        "max_tool_calling_iterations": "posttrain passes no tools to the trainer",
    },
    checks=(gkd.check_teacher,),
    position=58,
)
