"""grpo -> trl.GRPOTrainer: online RL on prompts, scored by the recipe's `rewards:` (reward models
and/or rule rewards, see posttrain.rewards). rloo.py is this module with trl.RLOOTrainer.

data.max_length bounds the prompt in tokens: TRL 1.12 has no prompt-length option and never
truncates prompts, so longer ones are dropped here (counted in the manifest). Completions are bounded
by training.max_completion_length.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from posttrain.data.mixture import label
from posttrain.data.trl_rows import drop_long_prompts, load_pairs
from posttrain.errors import DataError, RecipeError
from posttrain.models import NEW_TOKEN_IDS, load_seq_cls, load_tokenizer, lora_config, torch_dtype
from posttrain.rewards import parse_rewards, rule_reward
from posttrain.stages import Footprint, Held, Plot, Stage, Wire, common
from posttrain.util import Where, world_size

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def reference(recipe: Recipe) -> bool:
    """TRL holds a reference copy of the policy when beta (the stage's TRL default: GRPO 0, RLOO 0.05) is not 0,
    and without LoRA (then the disabled adapter is the reference)."""
    return not recipe.peft and bool(common.training_with_defaults(recipe).get("beta"))


def reward_models(recipe: Recipe) -> list:
    return [Held("reward model", {"name_or_path": s.model}) for s in recipe.parsed["rewards"] if s.model]


def check_groups(recipe: Recipe, where: Where):
    """Each generation batch must hold whole groups of num_generations completions. TRL checks this too,
    but its message names generation_batch_size, which it derives and users rarely set."""
    t = common.training_with_defaults(recipe)
    world = world_size()
    procs = f"{world} process{'es' if world > 1 else ''}"
    n = t["num_generations"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:  # 0 makes TRL divide by zero
        where.fail("training.num_generations", f"must be at least 2 (advantages compare the completions of "
                   f"one prompt), got {n!r}")
    if t["generation_batch_size"] is not None:
        batch, how = t["generation_batch_size"], "training.generation_batch_size"
    else:
        steps_key = "steps_per_generation" if t["steps_per_generation"] else "gradient_accumulation_steps"
        batch = t["per_device_train_batch_size"] * t[steps_key] * world
        how = f"per_device_train_batch_size {t['per_device_train_batch_size']} x {steps_key} {t[steps_key]} x {procs}"
    if batch % n:
        where.fail("training.num_generations", f"{n} does not divide the batch of {batch} completions ({how}); "
                   f"each batch must hold whole groups of num_generations completions per prompt")
    # TRL checks the eval batch only for eval_strategy != "no", but common.run evaluates at the end whenever
    # there is eval data, and a partial group then crashes after all the training is done.
    key = "num_generations_eval" if t["num_generations_eval"] else "num_generations"
    eval_batch = t["per_device_eval_batch_size"] * world
    if (recipe.data.get("eval") or recipe.data.get("eval_fraction")) and (t[key] or 0) > 0 and eval_batch % t[key]:
        where.fail(f"training.{key}", f"{t[key]} does not divide the eval batch of {eval_batch} completions "
                   f"(per_device_eval_batch_size {t['per_device_eval_batch_size']} x {procs})")


def config(recipe: Recipe):
    specs = recipe.parsed["rewards"]
    # remove_unused_columns=False: rule rewards read the data's other columns (e.g. a reference answer)
    managed = {"reward_weights": [s.weight for s in specs], "remove_unused_columns": False}
    # TRL loads the reference policy itself (beta > 0 without LoRA), from model_init_kwargs: load it as
    # posttrain loads the policy.
    if reference(recipe):
        managed["model_init_kwargs"] = model_init_kwargs(recipe.model)
        managed["trust_remote_code"] = bool(recipe.model.get("trust_remote_code"))
    return common.build_config(recipe, **managed)


def model_init_kwargs(model: dict) -> dict:
    kw = {"dtype": str(torch_dtype(model.get("dtype") or "auto")).removeprefix("torch."),
          "attn_implementation": model.get("attn_implementation"), "revision": model.get("revision")}
    return {k: v for k, v in kw.items() if v is not None}


def load_prompts(recipe: Recipe, args, tokenizer, specs):
    train, eval_ds, stats = load_pairs(recipe, args, tokenizer, keep_extra=True)
    for s in specs:
        col = s.options.get("column")
        if col is not None and col not in train.column_names:
            raise DataError(f"{label(recipe.data)}: reward {s.name} reads column '{col}', which the data lacks "
                            f"(columns: {', '.join(train.column_names)}; rename with data.column_map)")
    with args.main_process_first(desc="measuring prompts"):
        splits = {"train": train, "eval": eval_ds}
        for split, ds in splits.items():
            if ds is not None:
                splits[split] = drop_long_prompts(ds, tokenizer, recipe.data["max_length"], stats[split], split,
                                                  num_proc=recipe.data.get("num_proc"))
                if not len(splits[split]):
                    raise DataError(f"{split} split: no prompt fits data.max_length={recipe.data['max_length']} "
                                    "tokens; raise it")
        train, eval_ds = splits["train"], splits["eval"]
    return train, eval_ds, stats


def reward_funcs(specs, model: dict | None = None):
    """TRL's reward_funcs and reward_processing_classes, in recipe order. A reward model is read with its
    own tokenizer: TRL re-tokenizes prompt + completion text for it. It loads with the policy's
    model.dtype and model.attn_implementation."""
    like = {k: (model or {}).get(k) for k in ("dtype", "attn_implementation")}
    tokenizers = [load_tokenizer({"name_or_path": s.model}) if s.model else None for s in specs]
    funcs = [load_seq_cls({"name_or_path": s.model, **like}, tok) if s.model else rule_reward(s)
             for s, tok in zip(specs, tokenizers)]
    return funcs, tokenizers


def _not_about_model_init_kwargs(record: logging.LogRecord) -> bool:
    return "model_init_kwargs" not in record.getMessage()


def build(recipe: Recipe, trainer_class: str = "GRPOTrainer"):
    import trl

    args = config(recipe)
    specs = recipe.parsed["rewards"]
    tokenizer = load_tokenizer(recipe.model)
    new = getattr(tokenizer, NEW_TOKEN_IDS)  # new to this model (an upstream run that added them is fine)
    if new and reference(recipe):
        raise RecipeError(f"with training.beta {args.beta} and no peft, {recipe.stage}'s trainer reloads its reference "
                          f"policy from '{recipe.model['name_or_path']}' without the tokens this recipe adds "
                          f"({', '.join(tokenizer.convert_ids_to_tokens(new))}); add them in an earlier stage (sft), "
                          "train with peft, or set training.beta: 0")
    train, eval_ds, stats = load_prompts(recipe, args, tokenizer, specs)
    model = common.load_policy(recipe, args, tokenizer)
    funcs, reward_tokenizers = reward_funcs(specs, recipe.model)
    # TRL warns that model_init_kwargs are ignored for an instantiated policy; they are for its reference copy
    trl_log = logging.getLogger(f"trl.trainer.{trainer_class.removesuffix('Trainer').lower()}_trainer")
    trl_log.addFilter(_not_about_model_init_kwargs)
    try:
        trainer = getattr(trl, trainer_class)(model=model, reward_funcs=funcs, args=args, train_dataset=train,
                                              eval_dataset=eval_ds, processing_class=tokenizer,
                                              reward_processing_classes=reward_tokenizers,
                                              peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    finally:
        trl_log.removeFilter(_not_about_model_init_kwargs)
    # TRL names metrics after a reward model's directory name, which two items may share; ours are unique.
    trainer.reward_func_names = [s.name for s in specs]
    return trainer, stats


def reward_metrics(trainer) -> dict:
    """Per reward (and the weighted total): the mean over the run's training logs and the last value."""
    out = {}
    for key in [f"rewards/{n}/mean" for n in trainer.reward_func_names] + ["reward"]:
        values = [e[key] for e in trainer.state.log_history if e.get(key) is not None]
        if values:
            name = key.removesuffix("/mean")
            out[f"{name}/mean"] = sum(values) / len(values)
            out[f"{name}/last"] = values[-1]
    return out


# GRPOTrainer keeps transformers.Trainer.train, so checkpoints resume (resumable=True).
STAGE = Stage(
    name="grpo",
    summary="online RL on prompts scored by reward models and/or rules, group-relative (trl.GRPOTrainer)",
    trl_config="trl:GRPOConfig",
    formats=("prompt",),
    make_config=config,
    build=build,
    extra_metrics=reward_metrics,
    keys=("rewards",),
    required=("rewards",),
    inputs={"reward_model": Wire("rewards", as_item=True)},
    headline=("reward/mean", "reward/last"),
    plots=(Plot("reward", "mean reward"),),
    footprint=Footprint(reference=reference, generated_tokens=common.training_value("max_completion_length"),
                        other_models=reward_models, logits="generated_logps"),
    managed={"reward_weights": "give items of `rewards:` a `weight`"},
    parse={"rewards": parse_rewards},
    checks=(check_groups,),
    position=70,
)
