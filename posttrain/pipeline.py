"""Pipelines: one YAML file chains recipes (SFT -> reward -> PPO, SFT -> DPO) and wires their outputs.

    output_root: runs/rlhf_gpt2            # optional (default runs/<pipeline name>)
    stages:
      sft:    {recipe: alpaca_gpt2}
      reward: {recipe: reward_gpt2, after: sft}
      ppo:    {recipe: ppo_gpt2, after: [sft, reward], training: {total_episodes: 64}}
      dpo:    {recipe: dpo_gpt2, after: sft, model.dtype: fp32}
    eval:                                  # optional: lm-eval after each named stage (`base`: the first model)
      tasks: [eval/arithmetic.yaml]
      stages: [base, sft, dpo]             # default: base and every policy stage

A stage's model is the output of the policy stage it comes after (gkd's teacher_model instead: its
student stays the recipe's model); ppo's reward_model (and so its default value model) is the reward
stage's output; grpo/rloo/online_dpo get the reward stage's output added to their rewards. Values set
in the stage entry (or on the command line) win over wiring.
Each stage is identified by its resolved recipe plus its upstream stages' identities; a stage whose
output holds a finished run with the same identity is skipped. An eval whose results are in a stage's manifest
(same tasks, limit and few-shot count) is skipped too; the base model's go to <output_root>/base.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

from posttrain import checks, evaluate, launch, runs
from posttrain import stages as registry
from posttrain.errors import PosttrainError, Problems, RecipeError
from posttrain.generate import recipe_template
from posttrain.keys import EVAL_KEYS, Key
from posttrain.merge import merge_adapter
from posttrain.recipe import (
    Recipe,
    apply_overrides,
    deep_merge,
    load_raw,
    read_yaml,
    resolve_pipeline_path,
    resolve_recipe_path,
)
from posttrain.util import Where, did_you_mean

log = logging.getLogger("posttrain")

ENTRY_KEYS = ("recipe", "after")
PIPELINE_KEYS = ("stages", "output_root", "description", "eval")
PIPELINE_EVAL_KEYS = {**EVAL_KEYS, "stages": Key((list, str), help="stage names to measure after, and `base`")}
BASE = "base"


@dataclasses.dataclass
class Stage:
    name: str
    after: list[str]
    recipe: Recipe
    merge_inputs: list[str]  # upstream run dirs holding LoRA adapters to merge before this stage runs
    raw: dict = dataclasses.field(default_factory=dict, repr=False)  # the merged, wired mapping: checked again
    lines: dict = dataclasses.field(default_factory=dict, repr=False)  # with the model level once upstream ran
    launched: object = None  # the Accelerate launch (posttrain.launch.Launch) it runs under
    pending: tuple = ()  # keys wired to an upstream output that did not exist when the pipeline was checked
    level: str = "owners"  # how far it was checked then

    def checked(self) -> Recipe:
        """The recipe checked up to the `model` level: as loaded when nothing was pending, else checked again now
        that its upstream outputs exist."""
        if self.level == "model" and not self.pending:
            return self.recipe
        recipe = checks.validate(copy.deepcopy(self.raw), where=self.lines, source=self.recipe.source,
                                 default_name=self.name, level="model", launched=self.launched)
        recipe.upstream = self.recipe.upstream
        return recipe


def _nest(entry: dict) -> dict:
    """Stage-entry overrides may be nested (`training: {max_steps: 2}`) or dotted (`model.dtype: fp32`)."""
    out: dict = {}
    for key, value in entry.items():
        for part in reversed(str(key).split(".")):
            value = {part: value}
        out = deep_merge(out, value)
    return out


def _has(raws: list[dict], dotted: str) -> bool:
    """One of `raws` (the stage entry, its command-line overrides) sets the dotted key."""
    for node in raws:
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return True
    return False


def order(stages: dict[str, list[str]]) -> list[str]:
    """Topological order (file order among equals); a cycle is a RecipeError naming it."""
    visiting, out = [], []

    def visit(name):
        if name in out:
            return
        if name in visiting:
            cycle = " -> ".join(visiting[visiting.index(name):] + [name])
            raise RecipeError(f"stages: cycle in after ({cycle})")
        visiting.append(name)
        for dep in stages[name]:
            visit(dep)
        visiting.pop()
        out.append(name)

    for name in stages:
        visit(name)
    return out


def load_pipeline(name_or_path: str, overrides: list[str] | None = None, level: str = "owners", launched=None):
    """Resolve every stage's recipe, wire outputs, check each up to `level` (the keys wired to an upstream output
    that does not exist yet are left for later), and with the Accelerate launch it runs under (`launched`).
    Every stage's problems are reported at once.
    Returns (name, output_root, [Stage])."""
    path = resolve_pipeline_path(name_or_path)
    doc, lines = read_yaml(path)
    for k in doc:
        if k not in PIPELINE_KEYS:
            raise RecipeError(f"{path.name}:{lines.get(k, '?')}: {k}: unknown key in pipeline"
                              f"{did_you_mean(k, PIPELINE_KEYS)}")
    entries = doc.get("stages")
    if not isinstance(entries, dict) or not entries:
        raise RecipeError(f"{path.name}: stages: expected a mapping of stage name -> {{recipe: ..., after: ...}}")
    root = doc.get("output_root") or f"runs/{path.stem}"

    # CLI overrides are prefixed with the stage name: sft.training.max_steps=20
    per_stage: dict[str, list[str]] = {name: [] for name in entries}
    for item in overrides or []:
        stage_name, _, rest = item.partition(".")
        if stage_name not in entries or not rest:
            raise RecipeError(f"override '{item.split('=')[0]}': expected STAGE.KEY=VALUE with STAGE one of "
                              f"{', '.join(entries)}{did_you_mean(stage_name, entries)}")
        per_stage[stage_name].append(rest)

    deps = {}
    for name, entry in entries.items():
        where = f"{path.name}:{lines.get(f'stages.{name}', '?')}: stages.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str):
            raise RecipeError(f"{where}: expected a mapping with `recipe: NAME_OR_PATH`")
        after = entry.get("after") or []
        after = [after] if isinstance(after, str) else after
        for dep in after:
            if dep not in entries:
                raise RecipeError(f"{where}.after: unknown stage '{dep}'{did_you_mean(dep, entries)}")
        deps[name] = list(after)

    stages: dict[str, Stage] = {}
    problems: list[str] = []
    for name in order(deps):
        blocked = any(d not in stages for d in deps[name])  # an upstream stage has problems: not wired, not run
        entry = entries[name]
        recipe_path = path.parent / entry["recipe"]  # a path relative to the pipeline file, else a recipe name or path
        if Path(entry["recipe"]).is_absolute() or not recipe_path.is_file():
            recipe_path = resolve_recipe_path(entry["recipe"])
        raw, where = load_raw(recipe_path)
        explicit = [_nest({k: v for k, v in entry.items() if k not in ENTRY_KEYS}), apply_overrides({}, per_stage[name])]
        raw = deep_merge(raw, explicit[0])
        if not _has(explicit, "output_dir"):
            raw["output_dir"] = f"{root}/{name}"
        merge_inputs, wired = ([], {}) if blocked else _wire(name, raw, [stages[d] for d in deps[name]], explicit)
        raw = apply_overrides(raw, per_stage[name], where)
        pending = tuple(k for k, out in wired.items() if not Path(out).exists())
        if blocked:  # still checked, as far as it does not depend on what the upstream would give it
            consumer = registry.all_stages().get(raw.get("stage"))
            pending = ("model", *(registry.wire(w).key for w in (consumer.inputs.values() if consumer else ())))
        try:
            recipe = checks.validate(copy.deepcopy(raw), where=where, source=str(recipe_path), default_name=name,
                                     level=level, pending=pending, launched=launched)
        except RecipeError as e:
            problems += [f"stage {name} ({recipe_path.name}): {line}" for line in str(e).splitlines()]
            continue
        if not blocked:
            recipe.upstream = {d: stages[d].recipe.hash for d in deps[name]}
            stages[name] = Stage(name, deps[name], recipe, merge_inputs, raw, where, launched, pending, level)
    if problems:
        raise Problems(problems)
    return path.stem, root, [stages[n] for n in order(deps)]


def _wire(name: str, raw: dict, upstream: list[Stage], explicit: list[dict]) -> tuple[list[str], dict[str, str]]:
    """Point this stage at its upstream outputs, unless the stage entry (or the command line) set the key itself.
    Returns the upstream LoRA runs to merge first, and each key wired -> the output it names."""
    merge_inputs, wired = [], {}
    kind = {u.name: registry.get(u.recipe.stage).output for u in upstream}
    consumer = registry.all_stages().get(raw.get("stage"))  # an unknown stage is refused by validate
    inputs = dict(consumer.inputs) if consumer else {}
    target = registry.wire(inputs.pop("policy", "model.name_or_path")).key  # where an upstream policy goes (gkd: teacher)
    policies = [u for u in upstream if kind[u.name] == "policy"]
    if len(policies) > 1 and not _has(explicit, target):
        raise RecipeError(f"stages.{name}: comes after several policy stages "
                          f"({', '.join(u.name for u in policies)}); set {target} in its entry")
    if policies and not _has(explicit, target):
        up = policies[0].recipe
        path = up.output_dir
        if up.peft:  # a LoRA run's output is an adapter: load a merged copy, never the bare base
            path = f"{up.output_dir}/merged"
            merge_inputs.append(up.output_dir)
        if target == "model.name_or_path":
            raw.setdefault("model", {})["name_or_path"] = path
            for key in ("gguf_file", "revision", "tokenizer"):
                raw["model"].pop(key, None)  # those described the original model, not the stage output
        else:
            raw[target] = path
        wired[target] = path
    for output, w in inputs.items():
        producers = [u for u in upstream if kind[u.name] == output]
        w = registry.wire(w)
        if not producers or _has(explicit, w.key):
            continue
        out = producers[0].recipe.output_dir
        if w.as_item:
            items = list(raw.get(w.key) or [])
            if not any(isinstance(i, dict) and i.get("model") == out or i == out for i in items):
                items.append({"model": out})
            raw[w.key] = items
        else:
            raw[w.key] = out
        wired[w.key] = out
    return merge_inputs, wired


def load_eval(name_or_path: str, stages: list[Stage]) -> dict | None:
    """The pipeline's `eval:` entry, checked: its options, `stages` (default: base and every policy stage)."""
    path = resolve_pipeline_path(name_or_path)
    doc, lines = read_yaml(path)
    if doc.get("eval") is None:
        return None
    where = Where({k: f"{path.name}:{n}" for k, n in lines.items()})
    where.found, problems = [], []
    opts = checks.own_section(where, "eval", doc["eval"], PIPELINE_EVAL_KEYS)
    policies = [s.name for s in stages if registry.get(s.recipe.stage).output == "policy"]
    names = opts["stages"] or [BASE, *policies]
    opts["stages"] = names = [names] if isinstance(names, str) else names
    for n in names:
        if n != BASE and n not in policies:
            kind = next((s.recipe.stage for s in stages if s.name == n), None)
            problems.append(where.at("eval.stages", f"{n}: " + (
                f"a {kind} stage has no policy model to measure" if kind else
                f"no such stage (stages: {BASE}, {', '.join(s.name for s in stages)}){did_you_mean(n, [s.name for s in stages])}")))
    if opts["tasks"]:
        problems += [where.at("eval.tasks", p) for p in evaluate.check(opts["tasks"])]
    problems = [str(p) for p in where.found] + problems
    if problems:
        raise Problems(problems)
    return opts


def _measure(target: str, out: Path, opts: dict, template: str | None = None) -> str:
    """Run the pipeline's eval on `target` into `out` unless its results are there: 'measured' or 'measured before'."""
    if evaluate.measured(target, out, opts):
        log.info("eval of %s: skipped (results in %s)", target, out / runs.MANIFEST)
        return "measured before"
    evaluate.evaluate(target, opts["tasks"], limit=opts["limit"], batch_size=opts["batch_size"],
                      num_fewshot=opts["num_fewshot"], chat_template=opts["chat_template"], template=template, out=out)
    return "measured"


def _status(stage: Stage) -> str:
    """done: a finished run of this recipe in its output_dir; unfinished: one that did not finish; else new."""
    m = runs.read_manifest(Path(stage.recipe.output_dir)) or {}
    if m.get("recipe_hash") != stage.recipe.hash:
        return "new"
    return "done" if m.get("status") == "finished" else "unfinished"


def run_pipeline(name_or_path: str, overrides=None, *, start: str | None = None, only: str | None = None,
                 overwrite: bool = False) -> int:
    # every stage checked now, as far as it can be before its upstream ran: a bad one fails before the first trains
    name, root, stages = load_pipeline(name_or_path, overrides, level="model", launched=launch.from_environment())
    names = [s.name for s in stages]
    for flag, value in (("--from", start), ("--only", only)):
        if value and value not in names:
            raise RecipeError(f"{flag} {value}: no such stage (stages: {', '.join(names)}){did_you_mean(value, names)}")
    forced = set(names) if overwrite else {start} if start else {only} if only else set()
    for s in stages:  # --from: every stage downstream of it too (stages are in order)
        if start and forced.intersection(s.after):
            forced.add(s.name)
    selected, by_name = [s for s in stages if not only or s.name == only], {s.name: s for s in stages}
    ev = load_eval(name_or_path, stages)
    measure = set(ev["stages"]) if ev else set()

    summary, failed = [], None  # failed: the row of the stage that failed
    if BASE in measure and not only:  # the model the first stage starts from, prompted as that stage trains
        first = stages[0].recipe
        row = {"stage": BASE, "type": "model", "output_dir": f"{root}/{BASE}", "duration_s": 0.0}
        summary.append(row)
        try:
            row["status"] = _measure(first.model["name_or_path"], Path(root) / BASE, ev, recipe_template(first.resolved))
        except Exception as e:
            row["status"], row["error"], failed = "failed", _error(e), row
    for s in selected:
        row = {"stage": s.name, "type": s.recipe.stage, "output_dir": s.recipe.output_dir, "duration_s": 0.0}
        summary.append(row)
        if failed:
            row["status"] = "not run"
            continue
        state = _status(s)
        if state == "done" and s.name not in forced:
            log.info("stage %s: skipped (finished run with the same recipe in %s)", s.name, s.recipe.output_dir)
            row["status"] = "skipped"
        else:
            missing = [d for d in s.after if _status(by_name[d]) != "done"]
            if missing:
                row["status"] = "failed"
                row["error"] = f"upstream stage(s) {', '.join(missing)} have no finished run"
                failed = row
                continue
            resume = state == "unfinished" and s.name not in forced and bool(runs.checkpoints(Path(s.recipe.output_dir)))
            log.info("stage %s (%s): %s -> %s", s.name, s.recipe.stage, "resuming" if resume else "running",
                     s.recipe.output_dir)
            t0 = time.time()
            try:
                for up in s.merge_inputs:
                    merge_adapter(Path(up))
                checks.train(s.checked(), resume=resume, overwrite=not resume)
                row["status"] = "ran"
            except Exception as e:  # a stage crash must not lose the summary of what ran before it
                row["status"], row["error"], failed = "failed", _error(e), row
            row["duration_s"] = round(time.time() - t0, 1)
        if s.name in measure and not failed:
            try:
                row["status"] += f", {_measure(s.recipe.output_dir, Path(s.recipe.output_dir), ev)}"
            except Exception as e:
                row["status"], row["error"], failed = "eval failed", _error(e), row
        m = runs.read_manifest(Path(s.recipe.output_dir)) or {}
        row["metrics"] = registry.headline(s.recipe.stage, m.get("metrics") or {})

    Path(root).mkdir(parents=True, exist_ok=True)
    runs.write_json_atomic(Path(root) / "pipeline.json", {
        "pipeline": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": summary,
        "status": "failed" if failed else "finished"})
    print(format_summary(summary))
    if failed:
        print(f"posttrain: error: stage {failed['stage']} failed: {failed['error']}\n"
              f"  earlier stages are intact; fix it and run the same command again to continue from {failed['stage']}",
              flush=True)
        return 1
    return 0


def _error(e: Exception) -> str:
    return str(e) if isinstance(e, PosttrainError) else f"{type(e).__name__}: {e}"


def format_summary(rows: list[dict]) -> str:
    table = [("stage", "type", "status", "time", "headline metrics", "output")]
    for r in rows:
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in (r.get("metrics") or {}).items()) or "-"
        table.append((r["stage"], r["type"], r["status"], f"{r['duration_s']:.0f}s", metrics, r["output_dir"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe(name_or_path: str, overrides=None, launched=None) -> str:
    """`posttrain validate` for a pipeline: every stage resolved, wired and checked (its data; its model where it
    does not come from an earlier stage); no weights loaded."""
    name, root, stages = load_pipeline(name_or_path, overrides, level="model", launched=launched)
    ev = load_eval(name_or_path, stages)
    out = [f"# pipeline {name}: {len(stages)} stages, outputs under {root}"]
    if ev:
        out.append(f"ok: eval {', '.join(evaluate.task_list(ev['tasks']))} after {', '.join(ev['stages'])}: checked")
    for s in stages:
        wiring = [f"model={s.recipe.model['name_or_path']}",
                  *(f"{key}={value}" for key, value in s.recipe.extra.items() if isinstance(value, str))]
        after = f" after {', '.join(s.after)}" if s.after else ""
        out.append(f"ok: {s.name} ({s.recipe.stage}){after}: checked; {'; '.join(wiring)} -> {s.recipe.output_dir}")
        out += [f"  not checked: {note}" for note in s.recipe.notes]
    return "\n".join(out)


def is_pipeline_file(name_or_path: str) -> bool:
    """A pipeline path, or a bare name found in recipes/pipelines/ and not in recipes/."""
    p = Path(name_or_path)
    try:
        if not p.is_file():
            try:
                resolve_recipe_path(name_or_path)
                return False
            except RecipeError:
                p = resolve_pipeline_path(name_or_path)  # a RecipeError here too: neither
        doc, _ = read_yaml(p)
    except RecipeError:
        return False
    return "stages" in doc and "stage" not in doc

