"""ppo -> trl.experimental.ppo.PPOTrainer: a policy, a reference, a reward model and a value model.

Memory: without LoRA four models (policy, reference copy, reward, value); with LoRA three, because the
reference is the policy with its adapter disabled. TRL's PPOTrainer.train() cannot resume.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain.data.mixture import label
from posttrain.data.trl_rows import drop_long_prompts, load_pairs
from posttrain.errors import DataError
from posttrain.models import knows_new_tokens, load_causal_lm, load_seq_cls, load_tokenizer, lora_config
from posttrain.stages import Footprint, Held, NeedsTRL, Plot, Stage, common, reference_unless_peft
from posttrain.util import world_size

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

SAMPLES = "samples.jsonl"
N_SAMPLES = 4


def config(recipe: Recipe):
    training = recipe.training  # sft_model_path/reward_model_path are refused by recipe validation
    world = world_size()
    managed = {"sft_model_path": recipe.model["name_or_path"], "reward_model_path": str(recipe.extra["reward_model"]),
               # PPOConfig's own `world_size` field (None until the trainer fills it) shadows TrainingArguments'
               # property, and main_process_first() compares it with 1 before the trainer exists.
               "world_size": world}
    # Without a stop token TRL never ends a response early; EOS is what a chat/instruct policy stops on.
    if "stop_token" not in training and "stop_token_id" not in training:
        managed["stop_token"] = "eos"
    # A PPO run cannot resume, so optimizer state in checkpoints (2x the policy+value weights) is dead weight.
    managed["save_only_model"] = training.get("save_only_model", True)
    args = common.build_config(recipe, **managed)
    # PPOTrainer ignores max_steps (it runs total_episodes / batch updates), so express max_steps in episodes;
    # like max_steps over num_train_epochs in transformers, it wins over total_episodes.
    if args.max_steps > 0:
        args.total_episodes = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps \
            * world
    return args


def check_batches(recipe: Recipe, where) -> None:
    """PPOTrainer's constructor rules on its batches, which depend only on the recipe: said at validate with the key
    that sets them instead of an assertion after the models loaded."""
    t = common.training_with_defaults(recipe)
    local = t["per_device_train_batch_size"] * t["gradient_accumulation_steps"]
    how = (f"per_device_train_batch_size {t['per_device_train_batch_size']} x gradient_accumulation_steps "
           f"{t['gradient_accumulation_steps']}")
    minis = t["num_mini_batches"]
    if isinstance(minis, int) and minis >= 1 and local % minis:
        where.fail("training.num_mini_batches", f"{minis} does not divide the batch of {local} prompts per process "
                   f"({how})")
    if t["whiten_rewards"] and isinstance(minis, int) and minis >= 1 and local // minis < 8:
        where.fail("training.whiten_rewards", f"whitening needs at least 8 rows per mini-batch and process; this recipe "
                   f"has {local // minis} ({how} / num_mini_batches {minis}); raise the batch or set it false")


def other_models(recipe: Recipe) -> list:
    """The reward model (frozen) and the value model (trained; it starts from the reward model by default)."""
    reward = common.model_spec(recipe.extra["reward_model"], recipe)
    value = common.model_spec(recipe.extra.get("value_model") or reward["name_or_path"], recipe)
    return [Held("reward model", reward), Held("value model", value, trained=True)]


def prepare_data(recipe: Recipe, tokenizer, args):
    data = recipe.data
    train, eval_ds, stats = load_pairs(recipe, args, tokenizer)
    with args.main_process_first(desc="tokenizing prompts"):
        train = drop_long_prompts(train, tokenizer, data["max_length"], stats["train"], "train", keep_ids=True,
                                  num_proc=data.get("num_proc"))
        if eval_ds is not None:
            eval_ds = drop_long_prompts(eval_ds, tokenizer, data["max_length"], stats["eval"], "eval", keep_ids=True,
                                        num_proc=data.get("num_proc"))
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps
    if len(train) < batch:  # TRL's dataloader drops the last ragged batch and would then wait forever
        raise DataError(f"{label(data)}: {len(train)} prompts fit data.max_length={data['max_length']}, fewer than "
                        f"one PPO batch (per_device_train_batch_size x gradient_accumulation_steps = {batch})")
    return train, eval_ds, stats


def _trainer_class():
    from transformers import TrainerCallback
    from trl.experimental.ppo import PPOTrainer

    class Trainer(PPOTrainer):
        """PPOTrainer whose saves work under DDP and write a policy that generates like the one trained."""

        # Set by Trainer.__init__, which PPOTrainer never calls; Trainer._save reads it on non-main ranks.
        is_distributed_loading_by_transformers = False

        @contextmanager
        def _unwrapped(self):
            """TRL reads `self.model.policy` and `self.model.config`, which a DDP wrapper hides (saving then
            writes policy+value weights as one state dict, and the model card raises)."""
            wrapped = self.model
            if not (self.is_deepspeed_enabled or self.is_fsdp_enabled):
                self.model = self.accelerator.unwrap_model(self.model)
            try:
                yield
            finally:
                self.model = wrapped

        def create_model_card(self, *args, **kwargs):
            with self._unwrapped():
                super().create_model_card(*args, **kwargs)

        def save_model(self, output_dir=None, _internal_call=False):
            # TRL set the policy's generation eos to the PPO stop token (None: never stop); the saved model
            # must still stop at EOS.
            gen = self.policy_model.generation_config
            eos = gen.eos_token_id
            if eos is None:
                gen.eos_token_id = self.processing_class.eos_token_id
            try:
                with self._unwrapped():
                    super().save_model(output_dir, _internal_call)
            finally:
                gen.eos_token_id = eos

    class SampleCompletions(TrainerCallback):
        """At the end of training, greedy completions of the first prompts, scored by the reward model, to
        samples.jsonl. Every rank generates (ZeRO-3 gathers weights collectively); the main process writes."""

        def __init__(self, trainer, prompts):
            self.trainer, self.prompts = trainer, prompts

        def on_train_end(self, args, state, control, **kw):
            self.trainer.samples = write_samples(self.trainer, self.prompts)

    return Trainer, SampleCompletions


def write_samples(trainer, prompts) -> list[dict]:
    import torch
    from trl.experimental.utils import get_reward
    from trl.models.utils import unwrap_model_for_generation

    tok = trainer.processing_class
    batch = tok.pad({"input_ids": prompts["input_ids"]}, return_tensors="pt").to(trainer.accelerator.device)
    context = batch["input_ids"].shape[1]
    stop = trainer.stop_token_id if trainer.stop_token_id is not None else tok.eos_token_id
    with torch.no_grad(), unwrap_model_for_generation(trainer.model, trainer.accelerator) as unwrapped:
        out = unwrapped.policy.generate(**batch, max_new_tokens=trainer.args.response_length, do_sample=False,
                                        eos_token_id=stop, pad_token_id=tok.pad_token_id)
        # generate pads finished rows with pad_token_id, which is where get_reward reads the last token
        _, scores, _ = get_reward(trainer.reward_model, out, tok.pad_token_id, context)
    samples = [
        {"prompt": tok.decode(ids, skip_special_tokens=True),
         "completion": tok.decode(out[i, context:], skip_special_tokens=True),
         "score": round(float(scores[i]), 4)}
        for i, ids in enumerate(prompts["input_ids"])
    ]
    if trainer.accelerator.is_main_process:
        path = Path(trainer.args.output_dir) / SAMPLES
        path.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples), encoding="utf-8")
    return samples


def build(recipe: Recipe):
    args = config(recipe)
    tokenizer = load_tokenizer(recipe.model, distinct_pad=True)  # with pad == eos, TRL scores EOS as padding
    tokenizer.padding_side = "left"  # prompts are left-padded so every response starts at the same column
    train, eval_ds, stats = prepare_data(recipe, tokenizer, args)

    policy = common.load_policy(recipe, args, tokenizer)
    # the reward model, and the value model: by default a second, separately trained copy of the reward model
    held = other_models(recipe)
    for h in held:
        if not h.trained:
            knows_new_tokens(h.spec, tokenizer, h.role)
    reward, value = (load_seq_cls(h.spec, tokenizer) for h in held)
    # None: with LoRA, TRL uses the policy with its adapter disabled; without, TRL deep-copies the policy.
    ref = None
    if recipe.extra.get("ref_model"):
        ref = load_causal_lm(common.model_spec(recipe.extra["ref_model"], recipe), None, tokenizer)

    Trainer, SampleCompletions = _trainer_class()
    trainer = Trainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                      value_model=value, train_dataset=train, eval_dataset=eval_ds,
                      peft_config=lora_config(recipe.peft, tokenizer=tokenizer, model=policy))
    sample_from = eval_ds if eval_ds is not None and len(eval_ds) else train
    trainer.add_callback(SampleCompletions(trainer, sample_from[:N_SAMPLES]))
    return trainer, stats


def final_metrics(trainer) -> dict:
    """Mean reward and KL of the first and last PPO update, as TRL logged them."""
    logs = [e for e in trainer.state.log_history if "objective/scores" in e]
    if not logs:
        return {}
    out = {"first_logged_score": logs[0]["objective/scores"], "last_logged_score": logs[-1]["objective/scores"],
           "last_logged_kl": logs[-1]["objective/kl"], "last_logged_rlhf_reward": logs[-1]["objective/rlhf_reward"]}
    samples = getattr(trainer, "samples", None)
    if samples:
        out["sample_mean_score"] = round(sum(s["score"] for s in samples) / len(samples), 4)
    return out


STAGE = Stage(
    name="ppo",
    summary="online RL against a reward model with a value model (trl.experimental.ppo.PPOTrainer)",
    trl_config="trl.experimental.ppo:PPOConfig",
    formats=("prompt",),
    make_config=config,
    build=build,
    extra_metrics=final_metrics,
    keys=("reward_model", "value_model", "ref_model"),
    required=("reward_model",),
    inputs={"reward_model": "reward_model"},
    resumable=False,
    headline=("objective/scores", "objective/kl", "last_logged_score", "last_logged_kl"),
    plots=(Plot("objective/scores", "mean reward"), Plot("objective/kl", "KL to reference")),
    footprint=Footprint(reference=reference_unless_peft, generated_tokens=common.training_value("response_length"),
                        other_models=other_models, logits="per_token_logps"),
    managed={"sft_model_path": "set `model.name_or_path`", "reward_model_path": "set the top-level `reward_model`",
             "world_size": "posttrain sets it from the launcher's WORLD_SIZE"},
    refused={k: "TRL computes it at run time from per_device_train_batch_size, gradient_accumulation_steps, "
             "num_mini_batches and the number of processes" for k in
             ("num_total_batches", "micro_batch_size", "local_batch_size", "batch_size", "local_mini_batch_size",
              "mini_batch_size")},
    checks=(check_batches,),
    position=60,
    trl=NeedsTRL("<1.13", "TRL 1.13 removed PPOTrainer", "train against the reward model with rloo/grpo"),
)
