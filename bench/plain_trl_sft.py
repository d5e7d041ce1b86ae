"""SFT written by hand with TRL, the way a user would: parse -> load -> trainer -> train -> save.

The baseline for bench/overhead.py. Prompt/completion data goes through TRL's own
tokenization and completion-only loss. bf16 and activation checkpointing are switched off because this
is a CPU (TRL's bf16 default raises there; checkpointing only slows a CPU run) — what posttrain picks;
--bf16 --activation_checkpointing give posttrain's GPU defaults (bench/gpu_check.py).

    python bench/plain_trl_sft.py --model DIR --data rows.jsonl --output_dir OUT --max_steps 20
"""

import argparse


def main(argv=None, callbacks=()):
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=20)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--logging_steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (a GPU; bench/gpu_check.py)")
    p.add_argument("--activation_checkpointing", action="store_true")
    args = p.parse_args(argv)

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    # transformers renamed gradient_checkpointing -> activation_checkpointing after 5.17
    ckpt = "activation_checkpointing" if "activation_checkpointing" in SFTConfig.__dataclass_fields__ \
        else "gradient_checkpointing"
    config = SFTConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, learning_rate=args.learning_rate, logging_steps=args.logging_steps,
        save_strategy="no", seed=args.seed, bf16=args.bf16, **{ckpt: args.activation_checkpointing},
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks))
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main()
