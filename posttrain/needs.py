"""What a setting needs before a run can use it, checked at validation: optional packages, the hub,
files, a GPU, and values the installed library accepts.

These are the settings that, unchecked, pass `validate` and crash the run later (after the models
loaded, or at the first step). Each check is cheap: `importlib.util.find_spec` for packages, the
library's own availability helpers and lists for the rest; nothing is imported from the optional
packages and no model is loaded. Every check refuses through `where.fail` (one line, exit 2).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from posttrain import hub as hub_access
from posttrain.util import Where, did_you_mean


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _need(where: Where, dotted: str, what: str, module: str, pip: str):
    if not installed(module):
        where.fail(dotted, f"{what} needs the `{pip}` package, which is not installed (pip install {pip})")


# report_to integration -> (importable module(s), pip package)
REPORT_TO = {
    "wandb": (("wandb",), "wandb"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "mlflow": (("mlflow",), "mlflow"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "neptune": (("neptune",), "neptune"),
    "clearml": (("clearml",), "clearml"),
    "dvclive": (("dvclive",), "dvclive"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "swanlab": (("swanlab",), "swanlab"),
    "trackio": (("trackio",), "trackio"),
    "azure_ml": (("azureml",), "azureml-core"),
    "dagshub": (("dagshub",), "dagshub"),
    "flyte": (("flytekit",), "flytekit"),
    "kubeflow": (("kubeflow",), "kubeflow"),
}


def _integrations() -> list[str]:
    """The report_to names the installed transformers knows."""
    try:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK
    except ImportError:
        return list(REPORT_TO)
    return list(INTEGRATION_TO_CALLBACK)


def report_to(where: Where, training: dict):
    value = training.get("report_to")
    if value in (None, "none", "all", []):
        return
    names = [value] if isinstance(value, str) else list(value)
    known = _integrations()
    for name in names:
        if name in ("none", "all"):
            continue
        if name not in known:
            where.fail("training.report_to", f"'{name}' is not an integration transformers knows (one of none, all, "
                       f"{', '.join(known)}){did_you_mean(name, known)}")
        modules, pip = REPORT_TO.get(name, ((name,), name))
        if not any(installed(m) for m in modules):
            where.fail("training.report_to", f"'{name}' needs the `{pip}` package, which is not installed "
                       f"(pip install {pip}, or drop it from report_to)")


# optimizer name (training.optim) fragment -> (module, pip package)
OPTIM_PACKAGES = (
    ("bnb", "bitsandbytes", "bitsandbytes"), ("8bit", "bitsandbytes", "bitsandbytes"),
    ("paged_", "bitsandbytes", "bitsandbytes"), ("ademamix", "bitsandbytes", "bitsandbytes"),
    ("galore", "galore_torch", "galore-torch"), ("apollo", "apollo_torch", "apollo-torch"),
    ("lomo", "lomo_optim", "lomo-optim"), ("schedule_free", "schedulefree", "schedulefree"),
    ("grokadamw", "grokadamw", "grokadamw"), ("apex", "apex", "apex"), ("torchao", "torchao", "torchao"),
    ("adamw_torch_4bit", "torchao", "torchao"), ("adamw_torch_8bit", "torchao", "torchao"),
    ("stable_adamw", "optimi", "torch-optimi"),
)


def packages(where: Where, training: dict):
    """Optional packages the training settings need."""
    ds = training.get("deepspeed")
    if ds:
        _need(where, "training.deepspeed", "DeepSpeed", "deepspeed", "deepspeed")
        if isinstance(ds, str) and not Path(ds).is_file():
            where.fail("training.deepspeed", f"config file not found: {ds}")
    if training.get("use_liger_kernel"):
        _need(where, "training.use_liger_kernel", "the Liger kernels", "liger_kernel", "liger-kernel")
    if training.get("use_vllm"):
        _need(where, "training.use_vllm", "generation with vLLM", "vllm", "vllm")
    if training.get("generate_during_eval") and not (installed("wandb") or installed("comet_ml")):
        where.fail("training.generate_during_eval", "logs its samples to wandb or comet, and neither is installed "
                   "(pip install wandb)")
    optim = training.get("optim")
    if isinstance(optim, str):
        # specific names first: adamw_torch_8bit is torchao's, not bitsandbytes'
        for fragment, module, pip in sorted(OPTIM_PACKAGES, key=lambda t: -len(t[0])):
            if fragment in optim:
                _need(where, "training.optim", f"optimizer '{optim}'", module, pip)
                break


HUB_UPLOADS = ("push_to_hub", "log_completions_hub_repo")  # training settings that upload to the hub


def hub(where: Where, training: dict):
    """push_to_hub uploads at every save and at the end (log_completions_hub_repo at every log): without
    the hub or a token the run fails after it trained."""
    key = next((k for k in HUB_UPLOADS if training.get(k)), None)
    if key is None:
        return

    if hub_access.offline():
        where.fail(f"training.{key}", "uploads to the Hugging Face hub, but this process is offline (HF_HUB_OFFLINE is "
                   "set, or validate found the hub unreachable): the run would fail at its first upload")
    if not hub_access.hub_reachable():
        where.fail(f"training.{key}", "uploads to the Hugging Face hub, which is not reachable from here: the run "
                   "would fail at its first upload")
    from huggingface_hub import get_token

    if not get_token():
        where.fail(f"training.{key}", "uploads to the Hugging Face hub, but no token is set: `hf auth login`, or "
                   "HF_TOKEN in the environment")


FLASH = {
    "flash_attention_2": ("is_flash_attn_2_available", "flash_attn", "flash-attn"),
    "flash_attention_3": ("is_flash_attn_3_available", "flash_attn_interface", "flash-attn-3"),
    "flash_attention_4": ("is_flash_attn_4_available", "flash_attn", "flash-attn-4"),
}


def attention(where: Where, model: dict):
    """model.attn_implementation against the installed transformers' own list, and what it needs."""
    impl = model.get("attn_implementation")
    if not impl:
        return
    if "/" in impl:  # a kernel from the hub (kernels-community/...): needs `kernels` and, once, the hub
        _need(where, "model.attn_implementation", f"the hub kernel '{impl}'", "kernels", "kernels")
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    known = ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]
    if impl not in known:
        where.fail("model.attn_implementation", f"'{impl}' is not one of {', '.join(known)}{did_you_mean(impl, known)}")
    if impl in FLASH:
        import transformers.utils as tu

        check, module, pip = FLASH[impl]
        if not installed(module):
            where.fail("model.attn_implementation", f"{impl} needs the `{pip}` package, which is not installed "
                       f"(pip install {pip}; or use sdpa)")
        if not getattr(tu, check, lambda: True)():
            where.fail("model.attn_implementation", f"{impl} needs a CUDA GPU and a supported `{pip}` build, and "
                       "this machine has neither; use sdpa")


# training settings whose code runs only on an accelerator (the trainer crashes at construction or its first step
# on a CPU-only machine), and why
ACCELERATOR_ONLY = {
    "activation_offloading": "TRL moves activations off the accelerator on its streams, and fails building the "
                             "trainer without one",
    "use_liger_kernel": "the Liger kernels are Triton GPU kernels",
    "use_vllm": "TRL generates with vLLM on a GPU",
}


def has_accelerator() -> bool:
    import torch

    if hasattr(torch, "accelerator"):
        return torch.accelerator.current_accelerator() is not None
    return torch.cuda.is_available()


def device(where: Where, training: dict):
    """Settings only some devices have: said here with the line that set them, each on its own."""
    if training.get("tf32"):
        from transformers.utils import is_torch_tf32_available

        if not is_torch_tf32_available():
            with where.each():
                where.fail("training.tf32", "needs an NVIDIA Ampere or newer GPU, which this machine has not; remove it "
                           "(posttrain picks bf16/fp16 for the device)")
    for key, why in ACCELERATOR_ONLY.items():
        if training.get(key) and not has_accelerator():
            with where.each():
                where.fail(f"training.{key}", f"needs a GPU ({why}); this machine has none: remove it, or "
                           "validate on the machine that will train")


def quantization(where: Where, quant: dict | None):
    if quant:
        _need(where, "quantization", "4/8-bit loading (bitsandbytes)", "bitsandbytes", "bitsandbytes")
