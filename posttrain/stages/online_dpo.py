"""online_dpo -> trl.experimental.online_dpo.OnlineDPOTrainer: DPO on pairs the policy samples itself.

Each step the policy writes two completions per prompt; the recipe's `rewards:` (reward models and/or rule
rewards, as in grpo: see posttrain.rewards) score both, the better one is `chosen`, and the DPO loss is taken
against a reference policy: the disabled LoRA adapter with `peft`, else a frozen copy of the starting model.
TRL 1.12 dropped the pairwise judges this trainer once took; a rule reward is the judge here.

data.max_length bounds the prompt in tokens (longer prompts are dropped, counted in the manifest, as in grpo);
TRL's own max_length is set to that plus training.max_new_tokens, so it never cuts a prompt. TRL's
OnlineDPOTrainer has no evaluation loop: eval data is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from posttrain.models import load_tokenizer, lora_config
from posttrain.rewards import parse_rewards
from posttrain.stages import Footprint, Plot, Stage, Wire, common, grpo, reference_unless_peft
from posttrain.util import Where

if TYPE_CHECKING:
    from posttrain.recipe import Recipe


def check_no_eval(recipe: Recipe, where: Where):
    """TRL's OnlineDPOTrainer generates inside training_step only; Trainer.evaluate would feed raw prompts to the
    model and fail after the whole run."""
    for key in ("eval", "eval_fraction"):
        if recipe.data.get(key):
            where.fail(f"data.{key}", "online DPO has no evaluation in TRL 1.12 (it scores pairs it samples while "
                       "training; see rewards/* and objective/* in the logs); remove it")
    if recipe.training.get("eval_strategy", "no") != "no":
        where.fail("training.eval_strategy", "online DPO has no evaluation in TRL 1.12; remove it")


def config(recipe: Recipe):
    specs = recipe.parsed["rewards"]
    max_new = common.training_with_defaults(recipe)["max_new_tokens"]
    return common.build_config(recipe, max_length=recipe.data["max_length"] + max_new,
                               reward_weights=[s.weight for s in specs],
                               remove_unused_columns=False)  # rule rewards read the data's other columns


def build(recipe: Recipe):
    from trl.experimental.online_dpo import OnlineDPOTrainer

    args = config(recipe)
    specs = recipe.parsed["rewards"]
    tokenizer = load_tokenizer(recipe.model)
    train, eval_ds, stats = grpo.load_prompts(recipe, args, tokenizer, specs)
    model = common.load_policy(recipe, args, tokenizer)
    funcs, reward_tokenizers = grpo.reward_funcs(specs, recipe.model)
    trainer = OnlineDPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=train, eval_dataset=eval_ds,
                               processing_class=tokenizer, reward_processing_classes=reward_tokenizers,
                               peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=model))
    return trainer, stats


STAGE = Stage(
    name="online_dpo",
    summary="online DPO: the policy samples two completions per prompt, rewards pick the chosen one "
            "(trl.experimental.online_dpo)",
    trl_config="trl.experimental.online_dpo:OnlineDPOConfig",
    formats=("prompt",),
    make_config=config,
    build=build,
    extra_metrics=common.last_logged("objective/scores", "objective/scores_margin", "objective/kl",
                                     "rewards/accuracies", "rewards/margins", "val/contain_eos_token"),
    keys=("rewards",),
    required=("rewards",),
    inputs={"reward_model": Wire("rewards", as_item=True)},
    headline=("objective/scores", "objective/scores_margin", "objective/kl"),
    plots=(Plot("objective/scores", "mean reward"), Plot("objective/kl", "KL to reference")),
    footprint=Footprint(sequences_per_row=2, reference=reference_unless_peft,
                        generated_tokens=common.training_value("max_new_tokens"), other_models=grpo.reward_models,
                        logits="per_token_logps"),
    parse={"rewards": parse_rewards},
    managed={"reward_weights": "give items of `rewards:` a `weight`",
             "reward_model_path": "list reward models under `rewards:` (TRL 1.12's OnlineDPOTrainer ignores it)"},
    checks=(check_no_eval,),
    position=55,
)
