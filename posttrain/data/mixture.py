"""Dataset mixtures: several sources, each read in its own row shape, sampled by weight or row count.

`data.train` (and `data.eval`) is one source (a string, as always) or a list of entries
`{source, name, split, format, column_map, weight | rows}`. Per source: load, rename columns, drop rows
with an empty required field, then take `weight` x its usable rows (a weight over 1 repeats rows) or
`rows` rows, seeded by `data.seed` (default training.seed). Sources are written in the recipe's format
(a sharegpt or alpaca source in a messages mixture becomes messages; preference rows become one shape)
and concatenated, and the mixture is shuffled. Index arrays do the sampling (`select`,
`concatenate_datasets`); no Python loop runs over rows except to convert a row shape.

One source without weight/rows is read as before: its rows in file order, eval_fraction split by
`train_test_split`, so existing recipes produce the same runs.
"""

from __future__ import annotations

import logging

import numpy as np

from posttrain.data import formats
from posttrain.data.sources import load_source, rename_columns
from posttrain.errors import DataError

log = logging.getLogger("posttrain")

def entries(data: dict, split: str = "train") -> list[dict]:
    """The sources of data.train / data.eval as entry mappings (a string source takes the data-level keys)."""
    value = data.get(split)
    if not value:
        return []
    # data-level defaults of every source: how rows say conversations and system prompts, and how prompts are written
    shared = {k: data[k] for k in ("message_map", "role_map", "system_prompt", "template") if data.get(k) is not None}
    if isinstance(value, str):
        return [{"source": value, "name": data.get("name"), "column_map": data.get("column_map"),
                 "split": data.get("split" if split == "train" else "eval_split") or "train",
                 "format": data["format"], "plain": True, **shared}]
    out = []
    for e in value:
        e = {**shared, **({"source": e} if isinstance(e, str) else {k: v for k, v in e.items() if v is not None})}
        e.setdefault("split", "train")
        e["format"] = e.get("format") or data["format"]
        e["plain"] = len(value) == 1 and e.get("weight") is None and e.get("rows") is None
        out.append(e)
    return out


def label(data: dict, split: str = "train") -> str:
    """How messages name the data: the source, or `mixture of N sources (a, b, ...)`."""
    es = entries(data, split)
    if len(es) == 1:
        return es[0]["source"]
    names = ", ".join(e["source"] for e in es[:3]) + (", ..." if len(es) > 3 else "")
    return f"mixture of {len(es)} sources ({names})"


# ---------------------------------------------------------------------------------------------
# One source


def _required(cols: dict, src_fmt: str) -> list[str]:
    """Source columns that must be non-empty for a row to be usable."""
    return [src for dst, src in cols.items() if dst not in formats.get(src_fmt).may_be_blank]


def _conversational(fmt: str) -> bool:
    return formats.get(fmt).conversational


def _is_canonical_chat(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") is not None and "content" in m and m.get("from") is None for m in value)


def _chat_flag(ds, cols: dict, fmt: str) -> bool:
    """Whether a source of a format TRL renders holds conversations (read from its first row)."""
    row = ds[0] if len(ds) else {}
    return "messages" in cols or formats.row_is_chat(row, [cols[c] for c in formats.get(fmt).turn_columns if c in cols])


def convert(ds, fmt: str, src_fmt: str, cols: dict, *, chat: bool, keep_extra: bool, where: str):
    """Rows of one source in the recipe format's columns (canonical names).

    keep_extra keeps the source's other columns (one source: GRPO rewards read them); a mixture keeps
    only the format's columns and those every source has (the caller decides).
    """
    extra = [c for c in ds.column_names if c not in cols.values()] if keep_extra else []
    if fmt == "messages":
        src_col = cols.get("messages")
        first = ds[0][src_col] if src_col and len(ds) else None
        keep = [c for c in extra if c != "messages"]
        if not (src_fmt == "messages" and src_col == "messages" and "system" not in cols and (
                first is None or _is_canonical_chat(first))):
            def fn(batch):
                rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
                return {"messages": [formats.as_messages_row(r, src_fmt, cols) or [] for r in rows]}

            ds = ds.map(fn, batched=True, remove_columns=[c for c in ds.column_names if c not in keep],
                        desc=f"Reading {where} as messages")
        return ds.select_columns(["messages"] + keep)
    if _conversational(fmt):
        spec = formats.get(fmt)
        fields = [c for c in spec.turn_columns if c in cols]
        first = {c: ds[0][cols[c]] for c in fields} if len(ds) else {}
        # rows already in one shape that no rule changes pass as they are, only renamed (below)
        plain = "messages" not in cols and "system" not in cols and not (fmt == "preference" and chat and "prompt" in cols)
        if not (plain and (all(_is_canonical_chat(first.get(c)) for c in fields) if chat
                           else not formats.row_is_chat(first, fields))):
            names = [c for c in cols if c not in ("messages", "system")]
            if "messages" in cols:
                names = [c for c in spec.turn_columns if c not in names] + names

            def fn(batch):
                shaped = [formats.shape_row(dict(zip(batch, values)), fmt, cols, chat) for values in zip(*batch.values())]
                return {c: [r[c] for r in shaped] for c in names}

            ds = ds.map(fn, batched=True, remove_columns=list(cols.values()), desc=f"Shaping {where} rows")
            return ds.select_columns(names + [c for c in extra if c not in names])
    # alpaca / prompt_completion (one format: validation refuses others), and rows passed as they are: canonical names
    renames = {src: dst for dst, src in cols.items() if src != dst}
    if renames:
        ds = ds.rename_columns(renames)
    return ds.select_columns(list(cols) + [c for c in extra if c not in cols])


def _read(entry: dict, split: str, where: str):
    """One source's rows as its entry says: columns renamed, turns and roles mapped, the fixed system prompt
    where a row has none, the prompt written from a prompt format."""
    ds = load_source(entry["source"], split, entry.get("name"))
    if entry.get("column_map"):
        ds = rename_columns(ds, entry["column_map"], where)
    if entry.get("message_map") or entry.get("role_map"):
        ds = formats.map_turns(ds, entry.get("message_map"), entry.get("role_map"), where)
    if entry.get("system_prompt"):
        ds = formats.with_system_prompt(ds, entry["system_prompt"])
    pf = formats.prompt_format(entry.get("template"))
    return pf.render(ds, where) if pf else ds


class _Source:
    """One loaded source: its rows, columns, usable rows, and what is taken from it."""

    def __init__(self, entry: dict, fmt: str, where: str):
        self.entry, self.where, self.fmt = entry, where, fmt
        self.src_fmt = entry.get("format") or fmt
        self.ds = ds = _read(entry, entry.get("split") or "train", where)
        self.cols = formats.source_columns(ds.column_names, self.src_fmt, where, entry.get("template"))
        self.read = len(ds)
        self.kept_idx = formats.usable_rows(ds, _required(self.cols, self.src_fmt), where)
        self.kept = len(self.kept_idx)
        if entry.get("rows") is not None:
            self.target = int(entry["rows"])
        else:
            w = entry.get("weight")
            self.target = int(round((1.0 if w is None else float(w)) * self.kept))
        self.chat = _conversational(fmt) and _chat_flag(ds, self.cols, fmt)

    def stats(self, taken: int, n_eval: int | None = None) -> dict:
        s = {"source": self.entry["source"], "split": self.entry.get("split") or "train"}
        if self.src_fmt != self.fmt:
            s["format"] = self.src_fmt
        s.update({k: self.entry[k] for k in ("weight", "rows") if self.entry.get(k) is not None})
        s.update(read=self.read, kept=self.kept, dropped=self.read - self.kept, taken=taken)
        if n_eval is not None:
            s["eval"] = n_eval
        return s


# ---------------------------------------------------------------------------------------------
# Sampling


def _apportion(total: int, weights: list[int]) -> list[int]:
    """Split `total` over sources in proportion to `weights` (largest remainder: the parts sum to total)."""
    s = sum(weights)
    if s == 0:
        return [0] * len(weights)
    quotas = [total * w / s for w in weights]
    parts = [int(q) for q in quotas]
    for i in sorted(range(len(weights)), key=lambda i: quotas[i] - parts[i], reverse=True)[: total - sum(parts)]:
        parts[i] += 1
    return parts


def _take(pool: np.ndarray, n: int) -> np.ndarray:
    """n indices from an already shuffled pool: whole copies of it, then its first n % len(pool)."""
    if n <= 0 or not len(pool):
        return np.empty(0, dtype=np.int64)
    return np.concatenate([np.tile(pool, n // len(pool)), pool[: n % len(pool)]])


def _n_eval(eval_fraction, total: int) -> int:
    """Rows held out for eval: eval_fraction as a count, or as a fraction of total; refused if that is all of them."""
    exact = isinstance(eval_fraction, int) and not isinstance(eval_fraction, bool)
    n = eval_fraction if exact else max(1, round(total * eval_fraction))
    if n >= total:
        raise DataError(f"data.eval_fraction {eval_fraction} leaves no training rows out of {total}")
    return n


def _plain(src: _Source, fmt: str, chat: bool, eval_fraction, seed: int):
    """One source as before: its usable rows in order; eval_fraction carved by train_test_split."""
    ds = src.ds if src.kept == src.read else src.ds.select(src.kept_idx)
    ds = convert(ds, fmt, src.src_fmt, src.cols, chat=chat, keep_extra=True, where=src.where)
    eval_ds = None
    if eval_fraction:
        parts = ds.train_test_split(test_size=_n_eval(eval_fraction, len(ds)), seed=seed, shuffle=True)
        ds, eval_ds = parts["train"], parts["test"]
    return ds, eval_ds, [src.stats(len(ds), len(eval_ds) if eval_ds is not None else None)]


def _mix(sources: list[_Source], fmt: str, chat: bool, eval_fraction, seed: int, split: str):
    """Sample every source, write each in the recipe's format, concatenate, shuffle.

    Returns (train, eval or None, per-source stats). With eval_fraction, the eval rows are held out of
    each source in proportion to what it contributes, and never also trained on (even when repeated).
    """
    import datasets

    targets = [s.target for s in sources]
    evals = _apportion(_n_eval(eval_fraction, sum(targets)), targets) if eval_fraction else [0] * len(sources)
    train_idx, eval_idx = [], []
    for i, (s, t, e) in enumerate(zip(sources, targets, evals)):
        if e >= s.kept and t > e:
            raise DataError(f"{s.where}: data.eval_fraction holds out {e} of its {s.kept} usable rows, leaving none "
                            f"to train on; lower eval_fraction or give the eval rows as data.eval")
        rng = np.random.default_rng([seed, i])
        perm = s.kept_idx[rng.permutation(s.kept)]
        eval_idx.append(perm[:e])
        train_idx.append(_take(perm[e:], t - e))
        if t == 0:
            log.warning("%s: its weight takes 0 of %d rows", s.where, s.kept)
    if sum(len(t) for t in train_idx) == 0:
        raise DataError(f"data.{split}: the mixture takes no rows (raise a weight or rows)")

    parts, offsets = [], [0]
    for s, tr, ev in zip(sources, train_idx, eval_idx):
        needed = np.unique(np.concatenate([tr, ev]))
        sub = convert(s.ds.select(needed), fmt, s.src_fmt, s.cols, chat=chat, keep_extra=True, where=s.where)
        parts.append(sub)
        # positions of the sampled rows inside `sub` (it holds each needed row once, in sorted order)
        tr[:] = np.searchsorted(needed, tr)
        ev[:] = np.searchsorted(needed, ev)
        offsets.append(offsets[-1] + len(sub))
    parts = _align(parts, sources, fmt)
    mixed = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    rng = np.random.default_rng([seed, len(sources), 7])

    def shuffled(idx):  # every source's sampled rows, at their place in `mixed`, in one random order
        rows = np.concatenate([off + i for off, i in zip(offsets, idx)])
        return mixed.select(rows[rng.permutation(len(rows))])

    train = shuffled(train_idx)
    eval_ds = shuffled(eval_idx) if eval_fraction else None
    stats = [s.stats(len(tr), len(ev) if eval_fraction else None) for s, tr, ev in zip(sources, train_idx, eval_idx)]
    return train, eval_ds, stats


def _align(parts: list, sources: list[_Source], fmt: str) -> list:
    """Same columns and types in every part: the format's columns plus the extra ones all sources share;
    a source without an optional column that may be blank (alpaca's input) gets an empty one, one without
    another optional column (preference's prompt) is refused; types cast to the first source's."""
    if len(parts) == 1:
        return parts
    spec = formats.get(fmt)
    for col in spec.optional:
        has = [col in p.column_names for p in parts]
        if not any(has) or all(has):
            continue
        if col in spec.may_be_blank:  # e.g. alpaca's input: a source without it has it empty
            parts = [p if col in p.column_names else p.add_column(col, [""] * len(p)) for p in parts]
        else:
            i = has.index(False)
            raise DataError(f"{sources[i].where}: has no '{col}' column but other sources of the mixture do; "
                            f"{fmt} sources must all have a {col} column or none")
    common = [c for c in parts[0].column_names if all(c in p.column_names for p in parts[1:])]
    parts = [p.select_columns(common) for p in parts]
    out = [parts[0]]
    for p, s in zip(parts[1:], sources[1:]):
        if p.features != parts[0].features:
            try:
                p = p.cast(parts[0].features)
            except Exception:  # noqa: BLE001 - pyarrow/datasets raise several types for one meaning
                col = next(c for c in common if p.features[c] != parts[0].features[c])
                raise DataError(f"{s.where}: column '{col}' does not have the same shape as in {sources[0].where} "
                                f"({str(p.features[col])[:120]} vs {str(parts[0].features[col])[:120]}); give the "
                                f"sources rows of one shape") from None
        out.append(p)
    return out


def _load(data: dict, split: str, seed: int, eval_fraction=None):
    es = entries(data, split)
    fmt = data["format"]
    n = len(es)
    where = [e["source"] if n == 1 else f"data.{split}[{i}] ({e['source']})" for i, e in enumerate(es)]
    sources = [_Source(e, fmt, w) for e, w in zip(es, where)]
    # one shape for all: if any preference/prompt source is conversational (or data.template is chat), all are
    chat = _conversational(fmt) and (data.get("template") == "chat" or any(s.chat for s in sources))
    if n == 1 and es[0].get("plain"):
        return *_plain(sources[0], fmt, chat, eval_fraction, seed), chat
    return *_mix(sources, fmt, chat, eval_fraction, seed, split), chat


def load_splits(data: dict, seed: int = 42):
    """(train, eval or None, source stats) for a validated `data:` section: data.train / data.eval may each be one
    source or a mixture; the stats record, per source, rows read, kept, dropped and taken, for the run's manifest:
    {seed, train: [...], eval: [...]}."""
    seed = data["seed"] if data.get("seed") is not None else seed
    eval_fraction = None if data.get("eval") else data.get("eval_fraction")
    train, eval_ds, train_stats, chat = _load(data, "train", seed, eval_fraction)
    stats = {"seed": seed, "train": train_stats}
    if data.get("eval"):
        eval_ds, _, stats["eval"], eval_chat = _load(data, "eval", seed)
        if _conversational(data["format"]) and eval_chat != chat:
            # train and eval must be one shape too: make the text side conversational
            fix = lambda ds: convert(ds, data["format"], data["format"],  # noqa: E731
                                     {c: c for c in formats.get(data["format"]).columns if c in ds.column_names},
                                     chat=True, keep_extra=True, where="data")
            train, eval_ds = (fix(train), eval_ds) if eval_chat else (train, fix(eval_ds))
    return train, eval_ds, stats


def sample_rows(data: dict, e: dict, where: str, n: int = 8):
    """The first n rows of one source entry (see `entries`), in the recipe format's columns."""
    fmt = data["format"]
    ds = _read(e, (e.get("split") or "train").split("[")[0] + f"[:{n}]", where)
    src_fmt = e.get("format") or fmt
    cols = formats.source_columns(ds.column_names, src_fmt, where, e.get("template"))
    chat = _conversational(fmt) and (data.get("template") == "chat" or _chat_flag(ds, cols, fmt))
    return convert(ds, fmt, src_fmt, cols, chat=chat, keep_extra=True, where=where)
