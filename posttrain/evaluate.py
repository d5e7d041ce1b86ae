"""`posttrain eval`: measure a run with lm-evaluation-harness, the model loaded as it trained.

The run's model (a full model, or its LoRA adapter merged onto the base it names), its tokenizer, the dtype its
recipe set, and the prompt template it trained with (posttrain.generate.run_template): chat -> lm-eval applies the
tokenizer's chat template (the one saved with the run); alpaca -> each user turn is written in the Alpaca template;
raw (or --no-chat-template) -> the task's text as it is. lm-eval's HFLM gets the model object; simple_evaluate
runs the tasks. Tasks are lm-eval names or local task YAML files (or folders of them) over local data, whose
`dataset_kwargs.data_files` are read relative to the YAML file. Results go into the run's manifest (`eval`,
one entry per task) and eval.json beside it, with the prompts lm-eval built.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import time
from importlib import metadata
from pathlib import Path

from posttrain import runs
from posttrain.data.formats import alpaca_prompt
from posttrain.errors import PosttrainError
from posttrain.generate import load_policy, recipe_of, run_template
from posttrain.recipe import RECIPES_DIR
from posttrain.util import did_you_mean, first_line

log = logging.getLogger("posttrain")

INSTALL = "pip install 'posttrain[eval]'"
EVAL_JSON = "eval.json"
OPTIONS = ("tasks", "limit", "batch_size", "num_fewshot", "chat_template")  # a recipe's or pipeline's `eval:` keys


def missing_extra() -> str | None:
    if importlib.util.find_spec("lm_eval") is None:
        return f"eval needs lm-evaluation-harness, not installed: {INSTALL}"
    return None


def task_list(tasks) -> list[str]:
    """`a,b` or [a, b] -> [a, b]."""
    items = tasks.split(",") if isinstance(tasks, str) else list(tasks or [])
    return [str(t).strip() for t in items if str(t).strip()]


def is_local(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or Path(spec).is_dir()


def _anchor(value, base: Path):
    """data_files (a path, a list, or split -> either) relative to the task file's folder, not the cwd."""
    if isinstance(value, dict):
        return {k: _anchor(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_anchor(v, base) for v in value]
    if isinstance(value, str) and "://" not in value and not Path(value).expanduser().is_absolute():
        return str(base / value)
    return value


def _data_files(value) -> list[str]:
    if isinstance(value, dict):
        return [f for v in value.values() for f in _data_files(v)]
    return [f for v in value for f in _data_files(v)] if isinstance(value, list) else [value]


def local_tasks(spec: str) -> list[dict]:
    """The task configs of a local task YAML file, or of every task YAML under a folder, data paths anchored."""
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(spec).expanduser()
    if not path.exists() and (RECIPES_DIR / spec).exists():
        path = RECIPES_DIR / spec  # a shipped task: eval/arithmetic.yaml
    if not path.exists():
        raise PosttrainError(f"task {spec}: no such file or folder")
    files = sorted(f for f in path.rglob("*") if f.suffix in (".yaml", ".yml")) if path.is_dir() else [path]
    out = []
    for f in files:
        try:
            cfg = load_yaml(f)
        except Exception as e:  # yaml errors, a missing !function module: one line, naming the file
            raise PosttrainError(f"task {f}: does not parse: {first_line(e)}") from None
        if not isinstance(cfg.get("task"), str):
            if path.is_dir():
                continue  # a group or shared `include:` file
            raise PosttrainError(f"task {f}: not an lm-eval task file (no `task:` name)")
        kwargs = cfg.get("dataset_kwargs") or {}
        if "data_files" in kwargs:
            kwargs["data_files"] = _anchor(kwargs["data_files"], f.parent.resolve())
            for file in _data_files(kwargs["data_files"]):
                if isinstance(file, str) and "://" not in file and not any(c in file for c in "*?[") \
                        and not Path(file).is_file():
                    raise PosttrainError(f"task {f}: dataset_kwargs.data_files: no such file {file}")
        out.append(cfg)
    if not out:
        raise PosttrainError(f"task {spec}: no lm-eval task YAML (with a `task:` name) in this folder")
    return out


@functools.cache
def _shipped_tasks():
    """lm-eval's index of its own tasks: read once per process."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def resolve_tasks(tasks) -> tuple[list, object]:
    """(what simple_evaluate takes as tasks, a TaskManager): local tasks as configs; names checked against
    lm-eval's task index (built only when a name is given: it reads every shipped task, ~10 s)."""
    from lm_eval.tasks import TaskManager

    specs, names = [], []
    for t in task_list(tasks):
        if is_local(t):
            specs += local_tasks(t)
        else:
            names.append(t)
            specs.append(t)
    if not specs:
        raise PosttrainError("eval: no tasks given (--tasks NAME_OR_YAML[,...])")
    manager = _shipped_tasks() if names else TaskManager(include_defaults=False)
    unknown = [n for n in names if n not in manager.all_tasks]
    if unknown:
        raise PosttrainError("; ".join(f"task {n}: not an lm-eval task{did_you_mean(n, manager.all_tasks)}"
                                       for n in unknown))
    return specs, manager


def check(tasks) -> list[str]:
    """Problems with an eval's tasks, for validate: the extra, local task files, task names."""
    if msg := missing_extra():
        return [msg]
    try:
        resolve_tasks(tasks)
    except PosttrainError as e:
        return [str(e)]
    return []


def _harness_lm(model, tokenizer, template: str, batch_size):
    from lm_eval.models.huggingface import HFLM

    class RunLM(HFLM):
        """HFLM that writes chat turns in the run's template when that is Alpaca (which has no Jinja form)."""

        def apply_chat_template(self, chat_history, add_generation_prompt=True):
            if template != "alpaca":
                return super().apply_chat_template(chat_history, add_generation_prompt)
            return "".join(alpaca_prompt(m["content"]) if m["role"] == "user" else
                           m["content"] + ("" if m is chat_history[-1] else tokenizer.eos_token)
                           for m in chat_history if m["role"] != "system")

    return RunLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _rows(results: dict) -> dict[str, dict]:
    """lm-eval's {task: {"metric,filter": v, "metric_stderr,filter": s}} -> {task: {metric: {value, stderr}}}."""
    out = {}
    for task, values in results.items():
        metrics = {}
        for key, value in values.items():
            metric, sep, filt = key.partition(",")
            if not sep or metric.endswith("_stderr"):
                continue
            stderr = values.get(f"{metric}_stderr,{filt}")
            name = metric if filt == "none" else f"{metric},{filt}"
            metrics[name] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
        out[task] = metrics
    return out


def _dtype(recipe: dict | None) -> str:
    return str(((recipe or {}).get("model") or {}).get("dtype") or "auto")


def evaluate(target: str, tasks, *, limit=None, batch_size=8, num_fewshot=None, chat_template: bool = True,
             template: str | None = None, out: str | Path | None = None) -> dict:
    """Evaluate `target` (a run dir, a model dir or hub id); returns {task: {metric: {value, stderr}}}.
    Written into `out` (default: the run dir when it holds a posttrain manifest): manifest `eval` and eval.json.
    `template` overrides the run's own (for a base model measured like the runs trained from it)."""
    if msg := missing_extra():
        raise PosttrainError(msg)
    import lm_eval

    specs, manager = resolve_tasks(tasks)
    if isinstance(limit, float) and limit >= 1:
        limit = int(limit)  # a count; below 1 a fraction of each task
    log.info("eval: loading %s", target)
    model, tokenizer = load_policy(target, _dtype(recipe_of(Path(target))))  # refuses a reward model
    import torch

    if torch.cuda.is_available() and model.device.type == "cpu":
        model.to("cuda")
    if not chat_template:
        template = "raw"
    template = template or run_template(target) or ("chat" if getattr(tokenizer, "chat_template", None) else "raw")
    log.info("eval: %s on %s (prompt template: %s%s)", ", ".join(task_list(tasks)), target, template,
             f", limit {limit}" if limit is not None else "")
    t0 = time.time()
    res = lm_eval.simple_evaluate(
        model=_harness_lm(model, tokenizer, template, batch_size), tasks=specs, task_manager=manager, limit=limit,
        num_fewshot=num_fewshot, apply_chat_template=template != "raw", fewshot_as_multiturn=template == "chat",
        log_samples=True)
    version = metadata.version("lm_eval")
    results = _rows(res["results"])
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    entries = {task: {"metrics": metrics, "model": str(target), "lm_eval_version": version, "limit": limit, "num_fewshot": num_fewshot,
                      "template": template, "samples": (res.get("n-samples") or {}).get(task, {}).get("effective"),
                      "date": stamp} for task, metrics in results.items()}
    print(format_results(results))
    log.info("eval: done in %.0fs", time.time() - t0)
    out = Path(out) if out else Path(target) if runs.read_manifest(Path(target)) else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        manifest = runs.read_manifest(out) or {}
        manifest["eval"] = {**(manifest.get("eval") or {}), **entries}
        runs.write_json_atomic(out / runs.MANIFEST, manifest)
        prompts = {task: [{"prompt": s["arguments"][0][0], "target": s["target"], "response": s["filtered_resps"]}
                          for s in samples] for task, samples in (res.get("samples") or {}).items()}
        runs.write_json_atomic(out / EVAL_JSON, {"model": str(target), "date": stamp, "lm_eval_version": version,
                                                 "template": template, "limit": limit, "results": results,
                                                 "n-shot": res.get("n-shot"), "samples": prompts})
        log.info("eval: results in %s (eval) and %s", out / runs.MANIFEST, out / EVAL_JSON)
    return results


def format_results(results: dict) -> str:
    rows = [("task", "metric", "value", "stderr")]
    rows += [(task, metric, f"{v['value']:.4g}" if isinstance(v["value"], (int, float)) else str(v["value"]),
              "-" if v["stderr"] is None else f"{v['stderr']:.3g}")
             for task, metrics in results.items() for metric, v in metrics.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(target: str, tasks: str, *, limit=None, batch_size=8, num_fewshot=None, chat_template=True) -> int:
    evaluate(target, tasks, limit=limit, batch_size=batch_size, num_fewshot=num_fewshot, chat_template=chat_template)
    return 0


def task_names(tasks) -> list[str]:
    """The names results are filed under: a local file's `task:`, else the name given."""
    return [c["task"] for t in task_list(tasks) for c in (local_tasks(t) if is_local(t) else [{"task": t}])]


def measured(target: str, out: str | Path, options: dict) -> bool:
    """`out` already holds results of `target` on every task of this eval with the same limit and few-shot count."""
    have = ((runs.read_manifest(Path(out)) or {}).get("eval")) or {}
    return all(t in have and have[t].get("model") == str(target) and have[t].get("limit") == options.get("limit")
               and have[t].get("num_fewshot") == options.get("num_fewshot") for t in task_names(options["tasks"]))
