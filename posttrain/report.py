"""`posttrain report RUN_OR_PIPELINE_DIR`: PNG plots and a markdown summary of finished runs.

A run dir (manifest.json) or a pipeline root (pipeline.json, one run dir per stage). Written into that
directory: loss_<run>.png (training and eval loss over steps, from log_history.json), <stage>_<run>.png
(the metrics the stage declares in `Stage.plots`, e.g. PPO's mean reward and KL per update),
accuracy.png (before/after bars, when a demo.json is there), eval.png (lm-eval results across runs, from each
manifest's `eval`; a pipeline's base model from <root>/base) and report.md. matplotlib is an optional
dependency (the `demo` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain import runs, stages
from posttrain.errors import PosttrainError

LOSS_KEYS = ("loss", "eval_loss")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PosttrainError("posttrain report needs matplotlib: pip install 'posttrain[demo]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def find_runs(path: Path) -> list[tuple[str, Path]]:
    """[(name, run dir)] for a run dir or a pipeline root."""
    if (path / runs.MANIFEST).is_file():
        return [(path.name, path)]
    summary = path / "pipeline.json"
    if summary.is_file():
        stages = json.loads(summary.read_text()).get("stages", [])
        return [(s["stage"], Path(s["output_dir"])) for s in stages if (Path(s["output_dir"]) / runs.MANIFEST).is_file()]
    found = sorted((p.name, p) for p in path.iterdir() if (p / runs.MANIFEST).is_file()) if path.is_dir() else []
    if not found:
        raise PosttrainError(f"{path}: neither a run directory (manifest.json) nor a pipeline root (pipeline.json)")
    return found


def _history(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / "log_history.json").read_text())
    except (OSError, ValueError):
        return []


def _save(plt, fig, out: Path) -> Path:
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_loss(plt, name: str, history: list[dict], out: Path) -> Path | None:
    series = {k: [(e["step"], e[k]) for e in history if k in e and "step" in e] for k in LOSS_KEYS}
    if not any(series.values()):
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) < 30 else None, label=key)
    ax.set(title=f"{name}: loss", xlabel="step", ylabel="loss")
    ax.legend()
    return _save(plt, fig, out)


def plot_metrics(plt, name: str, stage: str, history: list[dict], out: Path) -> Path | None:
    """The stage's own metrics over its updates (`Stage.plots`: PPO's mean reward and KL, ...), one panel each."""
    spec = stages.all_stages().get(stage)
    panels = [(p, [e[p.key] for e in history if p.key in e]) for p in (spec.plots if spec else ())]
    panels = [(p, values) for p, values in panels if values]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.5), squeeze=False)
    for ax, (p, values) in zip(axes[0], panels):
        ax.plot(range(1, len(values) + 1), values, marker="o" if len(values) < 30 else None)
        ax.set(title=f"{name}: {p.title}", xlabel=f"{stage} update", ylabel=p.key)
    return _save(plt, fig, out)


def plot_demo(plt, demo: dict, out: Path) -> Path:
    pol = demo["policies"]
    names = list(pol)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    bars = a.bar(names, [pol[n]["exact_match"] for n in names], color=["gray", "tab:blue", "tab:green", "tab:orange"])
    a.bar_label(bars, fmt="%.2f")
    a.set(title=f"exact match, {demo['held_out']['prompts']} held-out prompts", ylim=(0, 1))
    rm, dpo = demo["reward_model"], demo["dpo"]
    labels = ["reward model\nbefore", "reward model\nafter", "DPO implicit\nreward"]
    bars = b.bar(labels, [rm["before"]["accuracy"], rm["after"]["accuracy"], dpo["accuracy"]],
                 color=["gray", "tab:purple", "tab:orange"])
    b.bar_label(bars, fmt="%.2f")
    b.set(title=f"pair accuracy, {demo['held_out']['pairs']} held-out pairs", ylim=(0, 1))
    return _save(plt, fig, out)


def eval_table(found: list[tuple[str, Path]]) -> dict[str, dict[str, float]]:
    """{"task metric": {run: value}} from the runs' manifests (`posttrain eval`)."""
    table: dict[str, dict[str, float]] = {}
    for name, run_dir in found:
        for task, entry in ((runs.read_manifest(run_dir) or {}).get("eval") or {}).items():
            for metric, v in entry.get("metrics", {}).items():
                if isinstance(v.get("value"), (int, float)):
                    table.setdefault(f"{task} {metric}", {})[name] = v["value"]
    return table


def plot_eval(plt, table: dict, names: list[str], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(table) * len(names)), 3.8))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        bars = ax.bar([j + i * width for j in range(len(table))], [row.get(name, 0) for row in table.values()], width,
                      label=name)
        ax.bar_label(bars, fmt="%.2f")
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(table))], list(table))
    ax.set(title="lm-eval", ylim=(0, 1.05) if all(0 <= v <= 1 for row in table.values() for v in row.values()) else None)
    ax.legend()
    return _save(plt, fig, out)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_markdown(path: Path, found: list[tuple[str, Path]], images: list[Path], demo: dict | None) -> str:
    lines = [f"# posttrain report: {path.name}", ""]
    lines += ["| run | stage | status | duration | key metrics |", "|---|---|---|---|---|"]
    for name, run_dir in found:
        m = runs.read_manifest(run_dir) or {}
        metrics = m.get("metrics") or {}
        keys = {**{k: metrics[k] for k in ("train_loss", "eval_loss") if k in metrics},
                **stages.headline(m.get("stage", ""), metrics)}
        shown = ", ".join(f"{k} {_fmt(v)}" for k, v in keys.items()) or "-"
        dur = m.get("duration_s")
        lines.append(f"| {name} | {m.get('stage', '?')} | {m.get('status', '?')} | "
                     f"{f'{dur:.0f} s' if isinstance(dur, (int, float)) else '-'} | {shown} |")
    if demo:
        pol = demo["policies"]
        names = list(pol)
        lines += ["", f"## Held-out measurements ({demo['held_out']['prompts']} prompts, "
                      f"{demo['held_out']['pairs']} pairs)", "",
                  "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for key, label in (("exact_match", "exact match"), ("reward_score", "reward-model score"),
                           ("preference_accuracy", "pair accuracy (log-prob)")):
            lines.append(f"| {label} | " + " | ".join(f"{pol[n][key]:.3f}" if key in pol[n] else "-" for n in names)
                         + " |")
        rm, dpo, ppo = demo["reward_model"], demo["dpo"], demo.get("ppo") or {}
        lines += ["", f"- reward model accuracy: {rm['before']['accuracy']:.3f} before, {rm['after']['accuracy']:.3f} after",
                  f"- DPO implicit reward (reference = SFT): accuracy {dpo['accuracy']:.3f}, margin {dpo['margin']:.3f}"]
        changed = [f"{n} +{pol[n]['vs_sft']['gained']} / -{pol[n]['vs_sft']['lost']}" for n in names if "vs_sft" in pol[n]]
        if changed:
            lines.append("- answers turned right / wrong relative to SFT (same prompts): " + ", ".join(changed))
        if ppo:
            lines.append(f"- PPO mean reward {ppo['score_first']:.3f} -> {ppo['score_last']:.3f}, "
                         f"KL {ppo['kl_last']:.3f} ({ppo['updates']} updates)")
        if demo.get("timings_s"):
            lines.append(f"- wall time: {demo['timings_s']['total']:.0f} s")
    table = eval_table(found)
    if table:
        names = [n for n, _ in found if any(n in row for row in table.values())]
        lines += ["", "## lm-eval", "", "| task metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        lines += [f"| {key} | " + " | ".join(_fmt(float(row[n])) if n in row else "-" for n in names) + " |"
                  for key, row in table.items()]
    if images:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    return "\n".join(lines) + "\n"


def report(path: str | Path) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        raise PosttrainError(f"{path}: no such directory")
    found = find_runs(path)
    plt = _pyplot()
    images = []
    for name, run_dir in found:
        history = _history(run_dir)
        stage = (runs.read_manifest(run_dir) or {}).get("stage", "")
        images += [p for p in (plot_loss(plt, name, history, path / f"loss_{name}.png"),
                               plot_metrics(plt, name, stage, history, path / f"{stage}_{name}.png")) if p]
    demo = None
    if (path / "demo.json").is_file():
        demo = json.loads((path / "demo.json").read_text())
        images.append(plot_demo(plt, demo, path / "accuracy.png"))
    table = eval_table(found)
    if table:
        images.append(plot_eval(plt, table, [n for n, _ in found if any(n in row for row in table.values())],
                                path / "eval.png"))
    md = path / "report.md"
    md.write_text(summary_markdown(path, found, images, demo), encoding="utf-8")
    return [*images, md]


def main(path: str) -> int:
    for p in report(path):
        print(p)
    md = (Path(path) / "report.md").read_text(encoding="utf-8")
    if "## lm-eval" in md:
        print("\n" + md.split("## lm-eval", 1)[1].split("\n## ", 1)[0].strip())
    return 0
