import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import tiny  # noqa: E402


@pytest.fixture(scope="session")
def fx(tmp_path_factory):
    """Tiny GPT-2 model + byte-level BPE tokenizer (no pad token, like GPT-2) and data files."""
    return tiny.make_all(tmp_path_factory.mktemp("tiny"))


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
