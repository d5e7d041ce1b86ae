"""DPO written by hand with TRL, the way a user would: parse -> load -> trainer -> train -> save.

The baseline for bench/overhead.py. ref_model=None: TRL loads a frozen reference copy of
the model, as posttrain's dpo stage does by default. bf16 and activation checkpointing are off (a CPU).

    python bench/plain_trl_dpo.py --model DIR --data pairs.jsonl --output_dir OUT --max_steps 10
"""

import argparse


def main(argv=None, callbacks=()):
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=10)
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--max_length", type=int, default=512)
    p.add_argument("--learning_rate", type=float, default=1e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--logging_steps", type=int, default=5)
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model)
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = DPOConfig(
        output_dir=args.output_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, learning_rate=args.learning_rate, beta=args.beta,
        logging_steps=args.logging_steps, save_strategy="no", seed=args.seed, bf16=False,
        activation_checkpointing=False,
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=dataset, processing_class=tokenizer,
                         callbacks=list(callbacks))
    trainer.train()
    trainer.save_model()


if __name__ == "__main__":
    main()
