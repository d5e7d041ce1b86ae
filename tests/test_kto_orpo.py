"""KTO and ORPO: the two stages added through the registry train from their shipped recipes, land their
metrics in the manifest, chain after sft in a pipeline, and refuse what TRL would refuse after loading."""

import json

import pytest
import yaml
from conftest import manifest

pytestmark = pytest.mark.slow

FAST = ["training.max_steps=2", "training.eval_steps=2", "training.save_steps=2", "training.logging_steps=1",
        "training.learning_rate=1e-3", "training.per_device_train_batch_size=2", "training.per_device_eval_batch_size=2"]


def _args(fx, out, train, *extra):
    return [f"model.name_or_path={fx['model']}", f"data.train={train}", "data.split=train", f"data.eval={train}",
            "data.eval_split=train[:4]", f"output_dir={out}", *FAST, *extra]



@pytest.fixture(scope="module")
def unpaired(fx, tmp_path_factory):
    """{prompt, completion, label} rows from the preference fixture: chosen -> true, rejected -> false."""
    rows = [json.loads(line) for line in fx["preference"].read_text().splitlines()]
    path = tmp_path_factory.mktemp("kto") / "unpaired.jsonl"
    out = []
    for i, r in enumerate(rows):
        out.append({"prompt": r["prompt"], "completion": r["chosen" if i % 2 else "rejected"], "label": bool(i % 2)})
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


@pytest.mark.parametrize("shape", [pytest.param("unpaired", marks=pytest.mark.both_ends), "paired"])
def test_kto_trains_on_unpaired_rows_and_on_pairs(fx, tmp_path, cli, unpaired, shape):
    out = tmp_path / f"kto_{shape}"
    train, fmt = (unpaired, "unpaired") if shape == "unpaired" else (fx["preference"], "preference")
    code, _, err = cli("train", "kto_gpt2", *_args(fx, out, train, f"data.format={fmt}"))
    assert code == 0, err
    m = manifest(out)
    assert m["status"] == "finished" and m["stage"] == "kto" and m["metrics"]["global_step"] == 2
    assert "kl" in m["metrics"] and "eval_rewards/margins" in m["metrics"], [k for k in m["metrics"] if "eval" not in k]
    assert (out / "model.safetensors").is_file()


@pytest.mark.both_ends
def test_kto_lora_and_orpo_train_and_report(fx, tmp_path, cli):
    out = tmp_path / "kto_lora"
    code, _, err = cli("train", "kto_gpt2_lora", *_args(fx, out, fx["preference"], "peft.target_modules=[c_attn]"))
    assert code == 0, err
    assert (out / "adapter_config.json").is_file() and manifest(out)["status"] == "finished"

    out = tmp_path / "orpo"
    code, stdout, err = cli("train", "orpo_gpt2", *_args(fx, out, fx["preference"]))
    assert code == 0, err
    m = manifest(out)["metrics"]
    assert 0 <= m["eval_rewards/accuracies"] <= 1 and "log_odds_ratio" in m and "nll_loss" in m
    assert "eval_rewards/accuracies=" in stdout  # the headline the stage declares


def test_kto_refuses_a_batch_of_one_at_validate(fx, cli):
    code, _, err = cli("validate", "kto_gpt2", "training.per_device_train_batch_size=1", "--no-data")
    assert code == 2 and "override training.per_device_train_batch_size" in err and "estimates its KL term" in err
    code, _, err = cli("validate", "kto_gpt2", "training.per_device_train_batch_size=1",
                       "training.loss_type=apo_zero_unpaired", "--no-data")
    assert code == 0, err


def test_kto_and_orpo_chain_after_sft(fx, tmp_path, cli, unpaired):
    fast = {"max_steps": 2, "logging_steps": 1, "save_steps": 2, "eval_strategy": "no",
            "per_device_train_batch_size": 2}
    pref = {"train": str(fx["preference"]), "split": "train", "eval": None}
    doc = {"output_root": str(tmp_path / "pipe"), "stages": {
        "sft": {"recipe": "alpaca_gpt2", "model.name_or_path": str(fx["model"]),
                "data": {"train": str(fx["alpaca"]), "eval_fraction": None}, "training": fast},
        "kto": {"recipe": "kto_gpt2", "after": "sft", "data": {**pref, "train": str(unpaired), "format": "unpaired"},
                "training": fast},
        "orpo": {"recipe": "orpo_gpt2", "after": "sft", "data": pref, "training": fast},
    }}
    path = tmp_path / "pipe.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    code, out, err = cli("pipeline", path)
    assert code == 0, err
    for stage in ("kto", "orpo"):
        resolved = yaml.safe_load((tmp_path / "pipe" / stage / "recipe.resolved.yaml").read_text())
        assert resolved["model"]["name_or_path"] == str(tmp_path / "pipe" / "sft")
        assert manifest(tmp_path / "pipe" / stage)["status"] == "finished"
    assert "rewards/margins" in out
