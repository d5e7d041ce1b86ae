"""`posttrain generate`: try a run's model, prompted in the template the run was trained with.

The template comes from the run's recipe.resolved.yaml, following the model chain back to the supervised
run that taught it (the first one whose data format is a supervised one; a DPO or PPO run trains on
prompts already written in that template):
alpaca -> the Alpaca template, messages -> the tokenizer's chat template, prompt_completion -> the raw
prompt; a recipe's `data.template` (e.g. chat for alpaca rows) wins. Without an SFT run in the chain:
the chat template if the tokenizer has one, else raw. The chat template is the one saved with the run's
tokenizer: the recipe's `model.chat_template` when it set one.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from posttrain import stages
from posttrain.data.formats import FORMATS, alpaca_prompt, prompt_format, user_text
from posttrain.errors import PosttrainError
from posttrain.merge import is_adapter, load_adapter
from posttrain.models import torch_dtype
from posttrain.runs import RESOLVED
from posttrain.util import first_line

TEMPLATES = ("alpaca", "chat", "raw")


def recipe_of(path: Path) -> dict | None:
    """The resolved recipe of a run dir, or of the run whose merged copy `path` is."""
    for run in (path, path.parent if path.name == "merged" else None):
        if run is not None and (run / RESOLVED).is_file():
            return yaml.safe_load((run / RESOLVED).read_text()) or {}
    return None


def run_template(path: str | Path) -> str | dict | None:
    """alpaca | chat | raw (or the run's prompt format) from the first SFT run up the model chain; None if there is
    none."""
    p, seen = Path(path), set()
    while p not in seen:
        seen.add(p)
        recipe = recipe_of(p)
        if recipe is None:
            return None
        if template := recipe_template(recipe):
            return template
        p = Path(str((recipe.get("model") or {}).get("name_or_path", "")))
    return None


def recipe_template(recipe: dict) -> str | None:
    """The template a (resolved) recipe trains with, if it is a supervised one."""
    data = recipe.get("data") or {}
    spec = FORMATS.get(data.get("format"))
    return (data.get("template") or spec.prompts_with) if spec is not None and spec.prompts_with else None


def format_prompt(template: str | dict, tokenizer, instruction: str, input_text: str | None = None) -> str:
    pf = prompt_format(template)  # the run's own prompt format: the prompt fills {instruction} (or {prompt})
    if pf is not None:
        values = {"instruction": instruction, "prompt": instruction, "input": input_text}
        other = [f for f in pf.fields(pf.prompt) if f not in values and f != "system"]
        if other:
            raise PosttrainError(f"the run's prompt format also names {', '.join('{' + f + '}' for f in other)}, "
                                 f"which generate cannot fill; pass --template raw with the whole prompt")
        return pf.text(values)
    if template == "alpaca":
        return alpaca_prompt(instruction, input_text)
    text = user_text(instruction, input_text)
    if template == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise PosttrainError("template 'chat': this tokenizer has no chat template; use --template raw or alpaca")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def load_policy(path: str | Path, dtype: str = "auto"):
    """(model, tokenizer) for a run dir holding a causal LM or a LoRA adapter (merged in memory), or a model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)  # a run dir, or a model dir or hub id (a base model)
    stage = stages.all_stages().get((recipe_of(path) or {}).get("stage"))
    if stage and stage.output == "reward_model" and path.name != "merged":
        raise PosttrainError(f"{path} holds a reward model (a scalar score head), not a policy that generates text")
    try:
        if is_adapter(path):
            model = load_adapter(path, dtype=torch_dtype(dtype)).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise PosttrainError(f"cannot load a model from {path}: {first_line(e)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation continues every row from the same column
    return model.eval(), tokenizer


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 16,
             do_sample: bool = False, temperature: float = 1.0, desc: str | None = None) -> list[str]:
    """Completions of `prompts` (text already in the template), stopping at EOS; a tqdm bar over batches."""
    import torch
    from tqdm.auto import tqdm

    out = []
    for i in tqdm(range(0, len(prompts), batch_size), desc=desc or "generating", unit="batch", disable=desc is False):
        batch = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True).to(model.device)
        kw = {"do_sample": True, "temperature": temperature} if do_sample else {"do_sample": False}
        with torch.no_grad():
            ids = model.generate(**batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id, **kw)
        new = ids[:, batch["input_ids"].shape[1]:]
        out += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def main(run_dir: str, prompts: list[str], *, input_text: str | None = None, template: str = "auto",
         max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0) -> int:
    model, tokenizer = load_policy(run_dir)
    if template == "auto":
        template = run_template(run_dir) or ("chat" if getattr(tokenizer, "chat_template", None) else "raw")
    texts = [format_prompt(template, tokenizer, p, input_text) for p in prompts]
    answers = generate(model, tokenizer, texts, max_new_tokens=max_new_tokens, do_sample=do_sample,
                       temperature=temperature, desc=False)
    for prompt, answer in zip(prompts, answers):
        if len(prompts) > 1:
            print(f"### {prompt}")
        print(answer)
    print(f"(template: {template}; model: {run_dir})", flush=True)
    return 0
