"""Checks that read files but load no weights, shared by `validate`, `plan` and `train`.

- data: every local source (data.train, data.eval) exists, reads, has the columns its format needs,
  and its first rows have shapes the stage can use. Only a hub dataset that cannot be reached (offline,
  not in the cache) stays unchecked, with a note saying so.
- peft.target_modules: matched against the module names of the model, built on the `meta` device from
  its config (local directory or cache). A name that matches nothing is refused with a did-you-mean.
- training.eos_token: a token of the tokenizer (local, or in the cache), or one the recipe adds;
- model.add_tokens (and the other token keys): which are new, and the embedding rows they need.
Each check raises a PosttrainError (one line, exit 2) or returns a note on what it could not check. posttrain.checks
runs them in its pass (the `files` and `model` levels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from posttrain import hub, stages
from posttrain.data.formats import clean_pairs_or_prompts, get, resolve_columns
from posttrain.data.mixture import entries, sample_rows
from posttrain.data.sources import is_local
from posttrain.errors import DataError, PosttrainError, RecipeError
from posttrain.models import (
    add_tokens,
    embedding_rows,
    is_local_path,
    load_config,
    lora_config,
    match_trainable,
    meta_model,
    recipe_tokens,
)
from posttrain.util import did_you_mean, first_line

if TYPE_CHECKING:
    from posttrain.recipe import Recipe

SAMPLE_ROWS = 8
# names other tools give "every linear layer"
ALL_LINEAR = ("all", "all_linear", "linear", "all-linears")


@dataclasses.dataclass
class Sample:
    """The first rows of one data source, checked; `rows` is None (and `note` says why) when unchecked."""

    key: str
    source: str
    rows: object = None  # a datasets.Dataset of up to SAMPLE_ROWS rows, columns renamed by data.column_map
    note: str = ""


def _in_cache(dataset_id: str) -> bool:
    """Whether a hub dataset may be in the local caches (the hub's, or datasets' prepared one)."""
    from huggingface_hub import constants

    if (Path(constants.HF_HUB_CACHE) / f"datasets--{dataset_id.replace('/', '--')}").exists():
        return True
    prepared = Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets")
    return prepared.is_dir() and any(p.name.startswith(dataset_id.replace("/", "___")) for p in prepared.iterdir())


@contextlib.contextmanager
def quiet():
    """No progress bars while a few rows are read: a check's output is its verdict."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _unreachable(source: str) -> str | None:
    """Why a hub dataset cannot be read now (offline and not cached), else None: decided without importing
    datasets, so validating a hub-only recipe offline stays quick."""
    if not is_local(source) and hub.offline() and not _in_cache(source):
        return f"hub dataset '{source}': the hub is not reachable and it is not in the cache"
    return None


def _sample(key: str, entry: dict, data: dict) -> Sample:

    source = entry["source"]
    try:
        with quiet():
            rows = sample_rows(data, entry, source, SAMPLE_ROWS)
    except DataError as e:
        if not is_local(source) and "cannot reach the Hugging Face hub" in str(e):
            return Sample(key, source, note=f"hub dataset '{source}': {e}")
        raise
    return Sample(key, source, rows)


def data(recipe: Recipe) -> list[Sample]:
    """Check the first rows of every data source (each entry of a mixture) against the recipe's format,
    read as the loader reads them; returns the samples, the first training source first."""
    d = recipe.data
    sources = []
    for split in ("train", "eval"):
        for i, e in enumerate(entries(d, split)):
            sources.append((f"data.{split}" if isinstance(d[split], str) else f"data.{split}[{i}]", e))
    samples = []
    for key, entry in sources:
        note = _unreachable(entry["source"])
        if note:
            samples.append(Sample(key, entry["source"], note=note))
            continue

        try:
            s = _sample(key, entry, d)
            if s.rows is not None:
                resolve_columns(s.rows.column_names, d["format"], s.source, d.get("template"))
                if get(d["format"]).tokenized_by == "trl":
                    with quiet():
                        clean_pairs_or_prompts(s.rows, d["format"], s.source, keep_extra=True)
        except DataError as e:
            raise DataError(recipe.where.at(key, str(e))) from None
        samples.append(s)
    return samples


def _meta_model(recipe: Recipe, checked: str):
    """(the model built on the meta device, None), or (None, a note saying why `checked` could not be checked): the
    config of a model named by a local path must read, one on the hub may be out of reach."""
    name = recipe.model["name_or_path"]
    try:
        cfg = load_config(recipe.model)
    except Exception as e:
        if is_local_path(name):
            raise PosttrainError(recipe.where.at("model.name_or_path", f"cannot read the model "
                                 f"config of '{name}': {first_line(e)}")) from None
        return None, f"{checked} (the config of model '{name}' is not reachable: {first_line(e)})"
    try:
        return meta_model(recipe.model, stages.get(recipe.stage).footprint.scoring, cfg), None
    except Exception as e:
        raise PosttrainError(recipe.where.at("model.name_or_path", f"cannot build the model from "
                             f"the config of '{name}': {type(e).__name__}: {first_line(e)}")) from None


def _linear_names(model) -> list[str]:
    import torch

    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - moved in some transformers version
        Conv1D = ()  # noqa: N806
    kinds = (torch.nn.Linear, Conv1D) if Conv1D else (torch.nn.Linear,)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if n and isinstance(m, kinds)}
    return sorted(names - {"lm_head", "score", "classifier"})


def target_modules(recipe: Recipe) -> str | None:
    """Refuse a `peft:` section that cannot apply to the model (target_modules matching nothing, with a
    did-you-mean). Returns None when checked, else a note saying why it could not be checked."""
    peft = recipe.peft
    if not peft:
        return None

    name, seq_cls = recipe.model["name_or_path"], stages.get(recipe.stage).footprint.scoring
    model, note = _meta_model(recipe, "peft.target_modules")
    if model is None:
        return note
    names = [n for n, _ in model.named_modules() if n]
    linear = _linear_names(model)
    what = f"model '{name}' ({type(model).__name__})"
    targets = peft.get("target_modules")

    def refuse(target: str):
        hint = "; did you mean 'all-linear'?" if str(target).lower() in ALL_LINEAR else did_you_mean(
            target, linear + ["all-linear"])
        recipe.where.fail("peft.target_modules", f"{target!r} matches no module of {what}{hint} "
                          f"(its linear layers: {', '.join(linear) or 'none'})")

    if isinstance(targets, (list, tuple)):
        for t in targets:
            if not any(n == t or n.endswith(f".{t}") for n in names):
                refuse(t)
    elif isinstance(targets, str) and targets != "all-linear":
        try:
            pattern = re.compile(targets)
        except re.error as e:
            recipe.where.fail("peft.target_modules", f"{targets!r} is neither a module name nor a valid "
                              f"regular expression ({e})")
        if not any(pattern.fullmatch(n) for n in names):
            refuse(targets)
    import warnings

    from peft import get_peft_model

    try:
        with warnings.catch_warnings():  # peft's notes on the layers (e.g. fan_in_fan_out) come again at train time
            warnings.simplefilter("ignore")
            get_peft_model(model, lora_config(peft, "SEQ_CLS" if seq_cls else "CAUSAL_LM"))
    except Exception as e:
        raise RecipeError(recipe.where.at("peft", f"LoRA cannot be applied to {what}: {first_line(e)}")) from None
    return None


def _tokenizer(recipe: Recipe, key: str):
    """(the recipe's tokenizer read from a local directory or the cache, None) or (None, a note saying why it could
    not be read for `key`); a local tokenizer that does not read is refused."""
    from transformers import AutoTokenizer

    model = recipe.model
    name = model.get("tokenizer") or model["name_or_path"]
    if model.get("gguf_file") and not model.get("tokenizer"):
        return None, f"{key} (the tokenizer inside the GGUF file of '{name}' is read at load)"
    kw = {} if model.get("tokenizer") else {k: model[k] for k in ("revision", "trust_remote_code") if model.get(k)}
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True, **kw), None
    except Exception as e:
        if is_local_path(name):
            raise PosttrainError(recipe.where.at("model.name_or_path", f"cannot read the tokenizer "
                                 f"of '{name}': {first_line(e)}")) from None
        return None, f"{key} (the tokenizer of '{name}' is not on this machine: {first_line(e)})"


def eos_token(recipe: Recipe) -> str | None:
    """training.eos_token must be a token of the tokenizer, or one the recipe adds (model.add_tokens...)."""
    token = recipe.training.get("eos_token")
    if token is None:
        return None
    tok, note = _tokenizer(recipe, "training.eos_token")
    if tok is not None and token not in tok.get_vocab() and token not in recipe_tokens(recipe.model):
        name = recipe.model.get("tokenizer") or recipe.model["name_or_path"]
        recipe.where.fail("training.eos_token", f"{token!r} is not a token of the tokenizer of '{name}' (it must "
                          "already be in its vocabulary, or be added by model.add_special_tokens)")
    return note


def tokens(recipe: Recipe) -> str | None:
    """What the recipe's added tokens do to the tokenizer and the embedding: which are new, which are already
    tokens (left as they are), how many rows the embedding grows to. Returns that line, or a note why unread."""
    if not recipe_tokens(recipe.model) and not recipe.model.get("resize_to_multiple_of"):
        return None
    tok, note = _tokenizer(recipe, "model.add_tokens")
    if tok is None:
        return note
    known = [t for t in recipe_tokens(recipe.model) if t in tok.get_vocab()]
    new = add_tokens(tok, recipe.model)
    try:
        cfg = load_config(recipe.model)
        rows = getattr(cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg, "vocab_size", None)
    except Exception:  # noqa: BLE001 - the rows are only said; the positions check reports an unreadable config
        rows = None
    grown = embedding_rows(rows, len(tok), recipe.model.get("resize_to_multiple_of")) if rows else None
    parts = [f"{len(new)} new ({', '.join(f'{t!r} id {i}' for t, i in zip(tok.convert_ids_to_tokens(new), new))})"]
    if known:
        parts.append(f"already tokens, kept as they are: {', '.join(map(repr, dict.fromkeys(known)))}")
    if grown:
        parts.append(f"embedding {rows} -> {grown} rows" if grown != rows else f"embedding stays {rows} rows")
    return "model tokens: " + "; ".join(parts)


def trainable(recipe: Recipe) -> str | None:
    """Refuse a `model.trainable` pattern that matches no parameter of the model built on the `meta` device
    (with a did-you-mean from its parameter names). Returns the line saying how many parameters will train,
    a note saying why it could not be checked, or None without `model.trainable`."""
    patterns = recipe.model.get("trainable")
    if not patterns:
        return None
    name = recipe.model["name_or_path"]
    model, note = _meta_model(recipe, "model.trainable")
    if model is None:
        return note
    found = match_trainable(model, patterns)
    for p in found["unmatched"]:
        layer0 = [n for n in found["names"] if not re.search(r"\.([1-9]\d*)\.", n)]  # one layer's names suffice
        recipe.where.fail("model.trainable", f"{p!r} matches no parameter of model '{name}' ({type(model).__name__})"
                          f"{did_you_mean(p, found['names'])}; its parameters are named like "
                          f"{', '.join(layer0[:6])}{', ...' if len(layer0) > 6 else ''}")
    n = sum(t.numel() for t, s in found["tensors"] if s)
    total = sum(t.numel() for t, _ in found["tensors"])
    k = sum(s for _, s in found["tensors"])
    return f"model.trainable: {n:,} of {total:,} parameters ({k} tensors, {100 * n / total:.2g}%) will train; the rest are frozen"


POSITION_TABLES = ("wpe", "embed_positions", "position_embeddings")  # learned absolute positions (GPT-2, OPT, ...)


def positions(recipe: Recipe) -> str | None:
    """A model with learned absolute position embeddings cannot run a row longer than its table: data.max_length,
    plus what a stage generates after the prompt, must fit (rotary models only degrade, and are not refused)."""
    model, note = _meta_model(recipe, "data.max_length")
    if model is None:
        return note
    import torch

    tables = [m.num_embeddings for n, m in model.named_modules()
              if n.rsplit(".", 1)[-1] in POSITION_TABLES and isinstance(m, torch.nn.Embedding)]
    generated = stages.get(recipe.stage).footprint.generated_tokens(recipe) or 0  # null: the model's generation config
    need = recipe.data["max_length"] + generated
    if tables and need > min(tables):
        recipe.where.fail("data.max_length", f"{recipe.data['max_length']}{f' + {generated} generated' if generated else ''}"
                          f" tokens do not fit the {min(tables)} positions of model '{recipe.model['name_or_path']}' "
                          "(learned position embeddings: a longer row cannot run); lower it"
                          + (" or the generation length" if generated else ""))
    return None
