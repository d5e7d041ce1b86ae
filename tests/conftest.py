import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import families  # noqa: E402
import tiny  # noqa: E402

from posttrain import stages  # noqa: E402

# A stage the installed TRL cannot run (its STAGE.trl: ppo needs TRL < 1.13) is refused at validate in one line; its
# tests run where it can run, and that line is tested where it cannot (tests/test_trl_versions.py).
PPO_REFUSED = stages.get("ppo").unavailable()
needs_ppo = pytest.mark.skipif(bool(PPO_REFUSED), reason=PPO_REFUSED or "")


def skip_where_refused(recipe: str):
    """In a test parametrized over shipped recipes: skip one whose stage the installed TRL cannot run."""
    from posttrain.shipped import stage_of

    why = stages.get(stage_of(recipe)).unavailable()
    if why:
        pytest.skip(why)


@pytest.fixture(autouse=True)
def _fast_tests_neither_train_nor_spawn(request, monkeypatch):
    """`make test-fast` stays fast: a test not marked slow that takes an optimizer step or starts a process fails,
    naming the marker it needs."""
    if request.node.get_closest_marker("slow"):
        return
    import subprocess

    from accelerate.optimizer import AcceleratedOptimizer

    def refuse(what):
        def fail(*args, **kwargs):
            raise AssertionError(f"this test {what}: mark it @pytest.mark.slow (make test-fast leaves it out)")
        return fail

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a process"))
    monkeypatch.setattr(AcceleratedOptimizer, "step", refuse("trains (an optimizer step)"))


def manifest(out) -> dict:
    """A run directory's manifest.json."""
    return json.loads((Path(out) / "manifest.json").read_text())


def error_lines(err: str) -> list[str]:
    """The `posttrain: error:` lines of a command's stderr, without the prefix."""
    return [line.removeprefix("posttrain: error: ") for line in err.splitlines() if line.startswith("posttrain: error:")]


def write_recipe(tmp_path, text, name="r.yaml") -> Path:
    """A recipe file (text or bytes) in tmp_path."""
    p = Path(tmp_path) / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def refused(tmp_path, text, overrides=()) -> str:
    """The refusal (its message) of loading a recipe written from text, up to the owners level."""
    from posttrain.checks import load_recipe
    from posttrain.errors import RecipeError

    with pytest.raises(RecipeError) as e:
        load_recipe(str(write_recipe(tmp_path, text)), list(overrides))
    return str(e.value)


def one_error_line(code: int, out: str, err: str, expected: str) -> str:
    """Exit 2 with exactly one `posttrain: error:` line (the last posttrain line; warnings may precede), naming
    `expected`, and no traceback."""
    assert code == 2, (out, err)
    lines = [line for line in err.strip().splitlines() if line.startswith("posttrain: ")]
    errors = [line for line in lines if line.startswith("posttrain: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    assert expected in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    """Tiny GPT-2 model + byte-level BPE tokenizer (no pad token, like GPT-2) and data files."""
    return tiny.make_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def family_models(tmp_path_factory):
    """Tiny models of the recipe families (tests/families.py), each built on first use: family_models("qwen3-8b")."""
    return families.Models(tmp_path_factory.mktemp("families"))


@pytest.fixture(scope="session")
def tokenizer(fx):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(fx["model"])


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit code, stdout, stderr)."""
    from posttrain.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
