"""Model and tokenizer loading: dtype, revision, GGUF, 4/8-bit (bitsandbytes), pad token, added tokens, LoRA config."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from posttrain.errors import PosttrainError, RecipeError
from posttrain.util import first_line

log = logging.getLogger("posttrain")

# model.dtype spellings -> torch dtype names
DTYPE_NAMES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16",
               "fp32": "float32", "float32": "float32"}


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def torch_dtype(name: str):
    """`auto` is fp32 on CPU (bf16/fp16 weights train badly there), bf16 on GPUs that support it, else fp32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if bf16_supported() else torch.float32
    return getattr(torch, DTYPE_NAMES[name])


def _source_kwargs(model: dict) -> dict:
    kw = {"revision": model.get("revision"), "trust_remote_code": bool(model.get("trust_remote_code"))}
    if model.get("gguf_file"):
        kw["gguf_file"] = model["gguf_file"]
    return {k: v for k, v in kw.items() if v is not None}


def gguf_kwargs(model: dict) -> dict:
    """A GGUF checkpoint trains as a dense model: newer transformers keep GGUF blocks packed where a kernel
    exists, so ask for every weight dequantized (older ones always dequantize and have no GgufConfig)."""
    if not model.get("gguf_file"):
        return {}
    try:
        from transformers import GgufConfig
    except ImportError:
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def warn_remote_code(model: dict):
    if model.get("trust_remote_code"):
        log.warning("trust_remote_code is on: Python code shipped with '%s' will run on this machine",
                    model["name_or_path"])


def _load_error(what: str, name: str, e: Exception) -> PosttrainError:
    return PosttrainError(f"cannot load {what} '{name}': {first_line(e)}")


# model.special_tokens: the tokenizer's named special tokens a recipe may set (transformers' names)
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
NEW_TOKEN_IDS = "posttrain_new_token_ids"  # tokenizer attribute: ids the recipe's tokens took that were not there


def recipe_tokens(model: dict) -> list[str]:
    """Every token the model section adds or names: model.add_tokens, add_special_tokens, special_tokens."""
    return [*(model.get("add_tokens") or ()), *(model.get("add_special_tokens") or ()),
            *(model.get("special_tokens") or {}).values()]


def add_tokens(tok, model: dict) -> list[int]:
    """Add the recipe's tokens to `tok`; returns the ids of those that were not in its vocabulary (their embedding
    rows are new). A token already in the vocabulary is left as it is: adding it again would make it match inside
    longer words, changing how text the model already knows is split."""
    before, vocab = len(tok), tok.get_vocab()
    tok.add_tokens([t for t in model.get("add_tokens") or () if t not in vocab])
    tok.add_tokens([t for t in model.get("add_special_tokens") or () if t not in vocab], special_tokens=True)
    if model.get("special_tokens"):
        tok.add_special_tokens(dict(model["special_tokens"]))
    new = sorted({i for i in tok.convert_tokens_to_ids(recipe_tokens(model)) if i >= before})
    setattr(tok, NEW_TOKEN_IDS, new)
    return new


def embedding_rows(rows: int, tokens: int, multiple: int | None) -> int:
    """Rows the input embedding needs for a tokenizer of `tokens` tokens: grown to fit them, rounded up to
    model.resize_to_multiple_of; never shrunk (a model may have spare rows already)."""
    need = -(-tokens // multiple) * multiple if multiple else tokens
    return max(rows, need)


def grow_embeddings(m, tokenizer, multiple: int | None = None):
    """Resize `m`'s embeddings (and its tied or untied output head) for `tokenizer` when they need more rows.
    New rows are drawn as transformers draws them (the old rows' mean and covariance) from a fixed seed, so a
    policy and a reference model grown from the same base start equal."""
    import torch

    weight = m.get_input_embeddings().weight
    rows = weight.shape[0]
    if embedding_rows(rows, len(tokenizer), multiple) > rows:
        with torch.random.fork_rng(devices=[weight.device.index or 0] if weight.is_cuda else []):
            torch.manual_seed(0)
            m.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=multiple)


def knows_new_tokens(spec: dict, tokenizer, what: str):
    """A frozen model that reads the policy's tokens (PPO's reward model, GKD's teacher) must already know the tokens
    this recipe adds, at the same ids: grown here, their rows would be untrained noise it never learned to read."""
    new = getattr(tokenizer, NEW_TOKEN_IDS, None)
    if not new:
        return
    from transformers import AutoTokenizer

    tokens = tokenizer.convert_ids_to_tokens(new)
    try:
        own = AutoTokenizer.from_pretrained(spec["name_or_path"], **_source_kwargs(spec))
    except Exception as e:
        raise _load_error("tokenizer", spec["name_or_path"], e) from None
    if own.convert_tokens_to_ids(tokens) != new:
        raise PosttrainError(f"the {what} '{spec['name_or_path']}' does not know the tokens this recipe adds "
                             f"({', '.join(tokens)}) and stays frozen: train it with the same model.add_tokens first")


def load_tokenizer(model: dict, *, distinct_pad: bool = False, eos_token: str | None = None):
    """Tokenizer with a pad token. Without one, EOS doubles as pad (padding is masked by position,
    so EOS is still trained); `distinct_pad` adds a new pad token instead (PPO needs one).

    The recipe's `model.chat_template` (its text: recipe validation reads a .jinja file) replaces the
    tokenizer's own. Set here, it renders the data, is saved with the tokenizer in the run dir, and so
    reaches `posttrain generate` and the next pipeline stage, which load the run's tokenizer.
    `eos_token` (the recipe's training.eos_token) replaces the EOS before any row is tokenized, so the
    rows, the saved tokenizer and the model's generation config all end on the same token.
    The recipe's added tokens (model.add_tokens, add_special_tokens, special_tokens) are added first, so they are
    saved with the run's tokenizer too."""
    from transformers import AutoTokenizer

    name = model.get("tokenizer") or model["name_or_path"]
    kw = _source_kwargs(model) if not model.get("tokenizer") else {}
    try:
        tok = AutoTokenizer.from_pretrained(name, **kw)
    except Exception as e:
        raise _load_error("tokenizer", name, e) from None
    if model.get("chat_template"):
        tok.chat_template = model["chat_template"]
    add_tokens(tok, model)
    if eos_token is not None:
        if eos_token not in tok.get_vocab():
            raise RecipeError(f"training.eos_token: {eos_token!r} is not a token of the tokenizer of '{name}' "
                              "(it must already be in its vocabulary)")
        tok.eos_token = eos_token
    if tok.pad_token is None or (distinct_pad and tok.pad_token_id == tok.eos_token_id):
        if distinct_pad or tok.eos_token is None:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
        else:
            tok.pad_token = tok.eos_token
    return tok


def match_eos(lm, tokenizer):
    """The model stops where the tokenizer says a text ends: after training.eos_token replaced the EOS
    (only then: a model may stop on several ids, e.g. end-of-text and end-of-turn)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        return
    if lm.config.eos_token_id != eos:
        lm.config.eos_token_id = eos
    gen = getattr(lm, "generation_config", None)
    if gen is not None and gen.eos_token_id != eos:
        gen.eos_token_id = eos


def quantization_config(quant: dict | None, dtype):
    if not quant:
        return None
    from transformers import BitsAndBytesConfig

    kw = dict(quant)
    if kw.get("load_in_4bit"):
        kw.setdefault("bnb_4bit_compute_dtype", dtype)
    return BitsAndBytesConfig(**kw)


def _from_pretrained(auto_class, model: dict, quant: dict | None, tokenizer, *, place_quantized: bool = False, **kw):
    """`auto_class` loaded as the recipe's model section says; embeddings grown if the tokenizer gained tokens
    (to a multiple of model.resize_to_multiple_of)."""
    warn_remote_code(model)
    dtype = torch_dtype(model.get("dtype") or "auto")
    kw = {**_source_kwargs(model), **gguf_kwargs(model), "dtype": dtype, **kw}
    if model.get("attn_implementation"):
        kw["attn_implementation"] = model["attn_implementation"]
    qc = quantization_config(quant, dtype)
    if qc is not None:
        kw["quantization_config"] = qc
        if place_quantized:  # at load time: on this rank's GPU under DDP, on the CPU without CUDA
            kw["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))} if has_cuda() else "cpu"
    try:
        m = auto_class.from_pretrained(model["name_or_path"], **kw)
    except Exception as e:
        raise _load_error("model", model["name_or_path"], e) from None
    if tokenizer is not None:
        grow_embeddings(m, tokenizer, model.get("resize_to_multiple_of"))
    return m


def load_causal_lm(model: dict, quant: dict | None = None, tokenizer=None):
    """AutoModelForCausalLM as the recipe says; embeddings grown if the tokenizer gained tokens."""
    from transformers import AutoModelForCausalLM

    lm = _from_pretrained(AutoModelForCausalLM, model, quant, tokenizer, place_quantized=True)
    if tokenizer is not None:
        if lm.config.pad_token_id is None:
            lm.config.pad_token_id = tokenizer.pad_token_id
        if getattr(lm, "generation_config", None) is not None and lm.generation_config.pad_token_id is None:
            lm.generation_config.pad_token_id = tokenizer.pad_token_id
        if (model.get("special_tokens") or {}).get("eos_token"):
            match_eos(lm, tokenizer)
    if quant:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    if model.get("trainable"):
        train_only(lm, model["trainable"])
    return lm


def load_seq_cls(model: dict, tokenizer, quant: dict | None = None, num_labels: int = 1):
    """AutoModelForSequenceClassification (a scalar head for reward/value models), pad token wired:
    the head reads the last non-pad token, so the model must know the pad id."""
    from transformers import AutoModelForSequenceClassification

    m = _from_pretrained(AutoModelForSequenceClassification, model, quant, tokenizer, num_labels=num_labels)
    m.config.pad_token_id = tokenizer.pad_token_id
    if model.get("trainable"):
        train_only(m, model["trainable"])
    return m


def match_trainable(model, patterns: list[str]) -> dict:
    """Which parameters of `model` the `model.trainable` patterns select (a name fullmatching any pattern).
    A tied tensor (GPT-2's lm_head.weight is transformer.wte.weight) is selected when any of its names is.
    Returns {tensors: [(parameter, selected)], names: every name, unmatched: patterns matching no name}."""
    compiled = [re.compile(p) for p in patterns]
    tensors, names, hit = {}, [], set()
    for name, p in model.named_parameters(remove_duplicate=False):
        names.append(name)
        matched = {i for i, c in enumerate(compiled) if c.fullmatch(name)}
        hit |= matched
        entry = tensors.setdefault(id(p), [p, False])
        entry[1] = entry[1] or bool(matched)
    return {"tensors": [tuple(t) for t in tensors.values()], "names": names,
            "unmatched": [p for i, p in enumerate(patterns) if i not in hit]}


def train_only(model, patterns: list[str]) -> tuple[int, int]:
    """`model.trainable`: full-weight training of the selected parameters, every other one frozen
    (requires_grad False: the trainer's optimizer holds, and the backward computes, only the selected).
    Returns (trainable, total) parameter counts."""
    found = match_trainable(model, patterns)
    for p, selected in found["tensors"]:
        p.requires_grad_(selected)
    n = sum(p.numel() for p, s in found["tensors"] if s)
    total = sum(p.numel() for p, _ in found["tensors"])
    log.info("model.trainable: %d of %d parameters train (%d tensors); the rest are frozen", n, total,
             sum(s for _, s in found["tensors"]))
    return n, total


def lora_config(peft: dict | None, task_type: str = "CAUSAL_LM", tokenizer=None, model=None):
    """peft.LoraConfig from the recipe's `peft:`. With tokens the recipe added new to the `tokenizer`, their rows of
    `model`'s embedding train too (`trainable_token_indices`, see token_rows)."""
    if not peft:
        return None
    from peft import LoraConfig

    kw = dict(peft)
    kw.setdefault("task_type", task_type)
    new = getattr(tokenizer, NEW_TOKEN_IDS, None)
    if new and model is not None:
        kw["trainable_token_indices"] = token_rows(model, new, kw.get("trainable_token_indices"),
                                                   kw.get("modules_to_save") or ())
    return LoraConfig(**kw)


def token_rows(model, new: list[int], given, whole=()) -> dict | None:
    """peft's `trainable_token_indices` for the `new` token ids: their rows of the input embedding and, when it is
    not tied to it, of the output head (a tied head follows its embedding in peft), added to what the recipe `given`
    (a list means the input embedding); a layer that `whole` (modules_to_save) trains entirely needs none."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(m): n.rsplit(".", 1)[-1] for n, m in model.named_modules()}
    layers = [emb] + ([head] if head is not None and head.weight is not emb.weight else [])
    out = dict(given) if isinstance(given, dict) else {names[id(emb)]: list(given)} if given else {}
    for layer in layers:
        if names[id(layer)] not in whole:
            out[names[id(layer)]] = sorted({*out.get(names[id(layer)], ()), *new})
    return out or None


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_local_path(name: str) -> bool:
    """A model/tokenizer named by a path on this machine (it must exist), not a hub id."""
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or not _HUB_ID.match(name)


CONFIGS_DIR = Path(__file__).parent / "configs"


def published_configs() -> dict[str, Path]:
    """Hub name -> the packaged copy of its published config.json (architecture numbers only; posttrain/configs)."""
    return {name: p for p in sorted(CONFIGS_DIR.glob("*.json"))
            for name in json.loads(p.read_text(encoding="utf-8"))["_hub_names"]}


def load_config(model: dict):
    """The model's config (no weights): the packaged copy for a hub model a shipped recipe names (so `plan` works
    offline and without a gated model's licence), else from a local directory, the cache, or the hub."""
    from transformers import AutoConfig

    packaged = published_configs().get(model["name_or_path"]) if not model.get("revision") else None
    if packaged and not Path(model["name_or_path"]).exists():
        fields = json.loads(packaged.read_text(encoding="utf-8"))
        fields.pop("_hub_names")
        return AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoConfig.from_pretrained(model["name_or_path"], **_source_kwargs(model))


def meta_model(model: dict, seq_cls: bool = False, cfg=None):
    """The model's modules built on the `meta` device from its config (`cfg`, else loaded): names and
    shapes, no weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = cfg if cfg is not None else load_config(model)
    if seq_cls:
        cfg.num_labels = 1
    with torch.device("meta"):
        cls = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
        return cls.from_config(cfg, trust_remote_code=bool(model.get("trust_remote_code")))


def full_copies_in_base_dtype(model, args) -> int:
    """Put `peft.modules_to_save` copies back in the dtype of the modules they replace when no mixed-precision
    autocast runs (CPU; fp32 on a GPU). Returns how many were recast.

    TRL 1.12's DPO, KTO, GRPO, RLOO and reward trainers cast every trainable parameter of a quantized model to
    bf16 (the QLoRA paper's adapter dtype). LoRA layers cast their input to their own dtype, but a
    modules_to_save copy is a plain module: a bf16 `lm_head` then multiplies fp32 hidden states and the first
    forward fails (`expected m1 and m2 to have the same dtype, float != BFloat16`). SFT escapes only because its
    chunked loss reads the head's weight itself. Under bf16/fp16 autocast mixed dtypes are fine: left as TRL made them.
    """
    if getattr(args, "bf16", False) or getattr(args, "fp16", False):
        return 0
    from peft.utils.other import ModulesToSaveWrapper

    recast = 0
    for module in model.modules():
        if not isinstance(module, ModulesToSaveWrapper):
            continue
        base = next((p.dtype for p in module.original_module.parameters() if p.is_floating_point()), None)
        for copy in module.modules_to_save.values():
            for p in copy.parameters():
                if base is not None and p.is_floating_point() and p.dtype != base:
                    p.data = p.data.to(base)
                    recast += 1
    return recast
