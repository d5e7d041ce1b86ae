"""bench/convert_survey.py on a few configs of tests/data/convert laid out as the tools' repositories lay them out
(no mirror needed): each file's result, the NOT TRANSLATED key count, the section it writes."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "convert"


@pytest.fixture(scope="module")
def survey():
    spec = importlib.util.spec_from_file_location("convert_survey", REPO / "bench" / "convert_survey.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _put(tree: Path, dest: str, src: Path | str):
    path = tree / dest
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(src, Path):
        shutil.copy(src, path)
    else:
        path.write_text(src)


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "tree"
    # the dataset names resolve only through the repo root's data/dataset_info.json (it is not beside the config)
    _put(t, "LLaMA-Factory/examples/train_lora/llama3_lora_sft.yaml", DATA / "llama-factory" / "llama3_lora_sft.yaml")
    _put(t, "LLaMA-Factory/data/dataset_info.json", DATA / "llama-factory" / "dataset_info.json")
    _put(t, "torchtune/recipes/configs/llama3_2/1B_full_single_device.yaml",
         DATA / "torchtune" / "1B_full_single_device.yaml")
    _put(t, "alignment-handbook/recipes/accelerate_configs/multi_gpu.yaml",
         "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 8\n")
    _put(t, "axolotl/examples/llama-3/lora-1b.yml", DATA / "axolotl" / "lora-1b.yml")
    _put(t, "axolotl/examples/llama-3/README.md", "not a config\n")
    return t


def test_survey_classifies_each_config(survey, tree, tmp_path, monkeypatch):
    from posttrain.convert import TOOLS

    def bug(conv, text):
        raise KeyError("boom")

    monkeypatch.setattr(TOOLS["axolotl"], "convert", bug)  # a bug in a tool's table: a traceback, counted
    monkeypatch.setattr(survey, "posttrain_version", lambda: "posttrain here")  # (it asks git: a process)
    out = tmp_path / "RESULTS.md"
    out.write_text("# posttrain benchmarks\n\nprose kept\n")
    results = survey.main(["--tree", str(tree), "--out", str(out)])

    kinds = {(t, p): k for t in results for p, k, _ in results[t]["files"]}
    assert kinds == {("LLaMA-Factory", "examples/train_lora/llama3_lora_sft.yaml"): survey.CLEAN,
                     ("torchtune", "recipes/configs/llama3_2/1B_full_single_device.yaml"): survey.NOT,
                     ("alignment-handbook", "recipes/accelerate_configs/multi_gpu.yaml"): survey.REFUSED,
                     ("axolotl", "examples/llama-3/lora-1b.yml"): survey.TRACEBACK}
    assert results["torchtune"]["keys"] == {"optimizer_in_bwd": 1}
    assert "KeyError: 'boom'" in results["axolotl"]["files"][0][2]

    text = out.read_text()
    assert text.startswith("# posttrain benchmarks\n\nprose kept\n") and "<!-- /bench:convert_survey -->" in text
    assert "| **total** | 4 | 1 | 1 | 1 | 1 |" in text
    assert "| torchtune | 1 | 0 | 1 | 0 | 0 |" in text
    assert "| `optimizer_in_bwd` | 1 |" in text
    assert "Accelerate launch config" in text and "- axolotl `examples/llama-3/lora-1b.yml`: KeyError" in text


def test_survey_without_mirrors_says_how_to_get_them(survey, tmp_path):
    with pytest.raises(SystemExit) as e:
        survey.main(["--mirrors", str(tmp_path / "none"), "--out", str(tmp_path / "R.md")])
    assert str(e.value).startswith("convert_survey: no mirror of axolotl-ai-cloud/axolotl") and "git clone" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "R.md").exists()
