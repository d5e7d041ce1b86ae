"""What a setting needs (posttrain.needs), checked at validate: packages, the hub, a GPU, files."""

import pytest
from conftest import refused, write_recipe

from posttrain import needs
from posttrain.checks import load_recipe

BASE = "stage: sft\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"
DPO = "stage: dpo\nmodel: {name_or_path: gpt2}\ndata: {train: d.jsonl}\n"


def test_report_to_an_integration_that_is_not_installed(tmp_path, monkeypatch, cli):

    monkeypatch.setattr(needs, "installed", lambda module: module not in ("wandb", "tensorboard", "tensorboardX"))
    for name in ("wandb", "tensorboard"):
        p = write_recipe(tmp_path, BASE + f"training: {{report_to: [{name}]}}\n")
        code, out, err = cli("validate", p, "--no-data")
        assert code == 2 and f"'{name}' needs the `{name}` package" in err and "pip install" in err
        assert len(err.strip().splitlines()) == 1


def test_report_to_an_unknown_integration_gets_a_hint(tmp_path):
    assert "did you mean 'wandb'" in refused(tmp_path, BASE + "training: {report_to: wandbb}\n")


def test_push_to_hub_offline_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg = refused(tmp_path, BASE + "training: {push_to_hub: true}\n")
    assert "training.push_to_hub" in msg and "HF_HUB_OFFLINE" in msg


def test_push_to_hub_without_a_token_is_refused(tmp_path, monkeypatch):
    import huggingface_hub

    from posttrain import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    msg = refused(tmp_path, BASE + "training: {push_to_hub: true}\n")
    assert "training.push_to_hub" in msg and "no token" in msg


def test_orpo_generate_during_eval_needs_wandb_or_comet(tmp_path, monkeypatch):

    monkeypatch.setattr(needs, "installed", lambda module: module not in ("wandb", "comet_ml"))
    msg = refused(tmp_path, DPO.replace("dpo", "orpo") + "training: {generate_during_eval: true}\n")
    assert "training.generate_during_eval" in msg and "pip install wandb" in msg


def test_liger_without_liger_kernel(tmp_path, monkeypatch):

    monkeypatch.setattr(needs, "installed", lambda module: module != "liger_kernel")
    msg = refused(tmp_path, BASE + "training: {use_liger_kernel: true}\n")
    assert "training.use_liger_kernel" in msg and "pip install liger-kernel" in msg


def test_deepspeed_json_without_deepspeed_is_one_line_exit_2(tmp_path, cli):
    from posttrain.needs import installed

    if installed("deepspeed"):
        pytest.skip("deepspeed is installed here")
    ds = write_recipe(tmp_path, '{"zero_optimization": {"stage": 2}}', "ds.json")
    p = write_recipe(tmp_path, BASE)
    code, out, err = cli("validate", p, f"training.deepspeed={ds}", "--no-data")
    assert code == 2 and "training.deepspeed" in err and "pip install deepspeed" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_any_error_from_the_config_constructor_is_one_line(tmp_path, monkeypatch, cli):
    """build_config turns whatever the TRL config raises (here an ImportError, as from a missing
    integration) into one line, exit 2."""
    import trl

    def boom(self, *a, **kw):
        raise ImportError("some integration is missing\nand a long story follows")

    monkeypatch.setattr(trl.SFTConfig, "__post_init__", boom)
    code, out, err = cli("validate", write_recipe(tmp_path, BASE), "--no-data")
    assert code == 2 and "SFTConfig rejects these settings: some integration is missing" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_flash_attention_needs_the_package_and_a_gpu(tmp_path, monkeypatch):

    monkeypatch.setattr(needs, "installed", lambda module: module != "flash_attn")
    msg = refused(tmp_path, BASE.replace("gpt2}", "gpt2, attn_implementation: flash_attention_2}"))
    assert "model.attn_implementation" in msg and "pip install flash-attn" in msg
    monkeypatch.setattr(needs, "installed", lambda module: True)
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert "needs a CUDA GPU" in refused(tmp_path, BASE.replace("gpt2}", "gpt2, attn_implementation: "
                                                                           "flash_attention_2}"))


@pytest.mark.parametrize("text, says", [
    (DPO + "training: {loss_type: [sigmod]}\n", "'sigmod' is not one of sigmoid, hinge"),
    (DPO + "training: {loss_type: [sigmoid, hing]}\n", "did you mean 'hinge'"),
    (DPO + "training: {f_divergence_type: js}\n", "is not one of reverse_kl"),
    (BASE + "training: {loss_type: nl}\n", "did you mean 'nll'"),
    (BASE + "training: {lr_scheduler_type: cosine_with_restart}\n", "did you mean 'cosine_with_restarts'"),
    (BASE + "training: {optim: adamw_torh}\n", "did you mean 'adamw_torch'"),
    (DPO + "training: {truncation_mode: keep_middle}\n", "is not one of keep_end, keep_start"),
    (BASE.replace("gpt2}", "gpt2, attn_implementation: spda}"), "did you mean 'sdpa'"),
])
def test_enumerated_values_are_checked_against_the_installed_library(tmp_path, text, says):
    msg = refused(tmp_path, text)
    assert says in msg, msg


def test_dpo_loss_types_come_from_trl_and_a_single_name_is_accepted(tmp_path):
    from posttrain.schema import config_class, field_choices

    assert {"sigmoid", "ipo", "hinge"} <= set(field_choices(config_class("trl:DPOConfig"))["loss_type"])
    r = load_recipe(str(write_recipe(tmp_path, DPO + "training: {loss_type: ipo}\n")))
    assert r.training["loss_type"] == ["ipo"]




def test_tf32_without_an_ampere_gpu_is_one_line_at_its_key(tmp_path, monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_torch_tf32_available", lambda: False)
    msg = refused(tmp_path, BASE + "training:\n  max_steps: 2\n  tf32: true\n")
    assert msg.startswith("r.yaml:6: training.tf32: needs an NVIDIA Ampere"), msg


def test_accelerator_only_settings_on_a_cpu_machine_are_one_line_each(tmp_path, monkeypatch):
    """TRL's activation offloading looks for the accelerator when the trainer is built (an AttributeError on a CPU);
    said at validate instead, each accelerator-only key on its own line."""
    monkeypatch.setattr(needs, "has_accelerator", lambda: False)
    msg = refused(tmp_path, BASE + "training:\n  max_steps: 2\n  activation_offloading: true\n")
    assert msg.startswith("r.yaml:6: training.activation_offloading: needs a GPU"), msg
    assert len(msg.splitlines()) == 1
    monkeypatch.setattr(needs, "installed", lambda module: True)  # liger installed: the device is what is missing
    msg = refused(tmp_path, BASE + "training:\n  activation_offloading: true\n  use_liger_kernel: true\n")
    assert [line.split(": ")[1] for line in msg.splitlines()] == ["training.activation_offloading",
                                                                  "training.use_liger_kernel"], msg
    monkeypatch.setattr(needs, "has_accelerator", lambda: True)
    assert load_recipe(str(write_recipe(tmp_path, BASE + "training: {activation_offloading: true}\n")))
