"""posttrain command line. Heavy libraries are imported only by the commands that need them."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from posttrain import __version__, checks, convert, evaluate, launch, lifecycle, pipeline, plan, schema, shipped, stages
from posttrain.demo.run import main as demo
from posttrain.errors import PosttrainError, Problems
from posttrain.generate import main as generate
from posttrain.hub import go_offline_if_unreachable
from posttrain.merge import is_adapter, merge_adapter
from posttrain.preview import preview
from posttrain.report import main as report
from posttrain.util import first_line, is_main_process

log = logging.getLogger("posttrain")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posttrain",
        description="Post-train language models from checked YAML recipes (SFT, reward, PPO, DPO) on TRL.",
    )
    p.add_argument("--version", action="version", version=f"posttrain {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def recipe_args(sp):
        sp.add_argument("recipe", help="recipe name (recipes/NAME.yaml) or path to a YAML file")
        sp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override recipe keys, e.g. training.max_steps=10 model.name_or_path=path")
        sp.add_argument("--stage", help="refuse the recipe unless it is for this stage (used by make targets)")

    t = sub.add_parser("train", help="train one recipe into its output_dir")
    recipe_args(t)
    t.add_argument("--resume", action="store_true", help="continue an unfinished run from its newest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace a finished or unfinished run in output_dir")
    t.add_argument("--force", action="store_true", help="with --resume: resume even though the recipe changed")

    v = sub.add_parser("validate", help="check a recipe or pipeline without training; show a masked example")
    recipe_args(v)
    v.add_argument("--no-data", action="store_true", help="check the recipe only; do not load tokenizer or data")
    v.add_argument("--accelerate-config", metavar="FILE", help="check against this Accelerate launch config")

    mg = sub.add_parser("merge", help="merge a LoRA run's adapter into its base model")
    mg.add_argument("run_dir", help="a run directory holding a LoRA adapter")
    mg.add_argument("--out", help="where to write the merged model (default RUN_DIR/merged)")

    pn = sub.add_parser("plan", help="estimate GPU memory per device for a recipe; say which knob to turn")
    recipe_args(pn)
    pn.add_argument("--gpu-gib", type=float, default=80.0, help="GPU memory to fit, in GiB (default 80)")
    pn.add_argument("--gpus", "--nproc", type=int, default=None, dest="gpus",
                    help="number of GPUs/processes (with --sharding; default: the launch config's, else 1)")
    pn.add_argument("--sharding", choices=("none", "zero2", "zero3", "fsdp"), default=None,
                    help="default: what --accelerate-config (or the environment accelerate sets) says, else none")
    pn.add_argument("--accelerate-config", metavar="FILE", help="the Accelerate launch config the run will use")

    pl = sub.add_parser("pipeline", help="run a pipeline of recipes (recipes/pipelines/NAME.yaml)")
    pl.add_argument("pipeline", help="pipeline name or path")
    pl.add_argument("overrides", nargs="*", metavar="STAGE.KEY=VALUE", help="e.g. sft.training.max_steps=20")
    group = pl.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", metavar="STAGE", help="re-run this stage and every stage after it")
    group.add_argument("--only", metavar="STAGE", help="run only this stage (its upstream stages must be done)")
    pl.add_argument("--overwrite", action="store_true", help="re-run every stage")

    g = sub.add_parser("generate", help="generate with a run's model, in the prompt template the run trained with")
    g.add_argument("run_dir", help="a run directory (full model or LoRA adapter)")
    g.add_argument("--prompt", action="append", required=True, help="an instruction; repeat for several")
    g.add_argument("--input", help="an input for the instruction (the Alpaca template's ### Input)")
    g.add_argument("--template", choices=("auto", "alpaca", "chat", "raw"), default="auto",
                   help="auto: the template of the SFT run this model comes from (default)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    g.add_argument("--temperature", type=float, default=1.0)

    ev = sub.add_parser("eval", help="measure a run with lm-evaluation-harness, loaded as it trained (the eval extra)")
    ev.add_argument("run_dir", metavar="RUN_DIR_OR_MODEL", help="a run directory (full model or LoRA adapter), or a model")
    ev.add_argument("--tasks", required=True,
                    help="comma-separated lm-eval task names and/or local task YAML files or folders")
    ev.add_argument("--limit", type=float, help="at most this many examples per task (a fraction if < 1)")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--num-fewshot", type=int, help="default: each task's own")
    ev.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                    help="give the model the task's text as it is, not in the template the run trained with")

    r = sub.add_parser("report", help="PNG plots and a markdown summary of a run or pipeline directory")
    r.add_argument("path", help="a run directory or a pipeline output_root")

    rc = sub.add_parser("recipes", help="list the shipped recipes; `recipes copy NAME [DEST]` copies one to edit")
    rc.add_argument("action", nargs="?", choices=("list", "copy"), default="list")
    rc.add_argument("name", nargs="?", help="with copy: a shipped recipe or pipeline name")
    rc.add_argument("dest", nargs="?", help="with copy: a file or directory (default ./NAME.yaml)")
    rc.add_argument("--overwrite", action="store_true", help="with copy: replace an existing file")
    rc.add_argument("--model", help="list: only recipes whose name or model contains this (e.g. qwen3, 8b)")
    rc.add_argument("--stage", help="list: only recipes of this stage (sft, dpo, reward, grpo, ...)")
    rc.add_argument("--method", choices=("full", "lora", "qlora"), help="list: only recipes that train so")

    cv = sub.add_parser("convert", help="turn an axolotl, LLaMA-Factory, TRL/alignment-handbook or torchtune config "
                                        "into a posttrain recipe, printing every key's fate",
                        epilog="exit status: 0 every key mapped or dropped with a reason; 3 some keys NOT TRANSLATED "
                               "(the recipe is written all the same, with them as comments); 2 bad input")
    cv.add_argument("file", help="the other tool's YAML config")
    cv.add_argument("-o", "--out", help="the recipe to write (default ./NAME.posttrain.yaml)")
    cv.add_argument("--from", dest="tool", choices=("axolotl", "llama-factory", "trl", "torchtune"),
                    help="the tool the config is for (default: detected from its keys)")
    cv.add_argument("--stage", choices=stages.names(),
                    help="with a TRL-script config (which does not name its trainer): the stage (default: from a "
                         "folder or file name such as dpo/, else from its keys)")
    cv.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")

    d = sub.add_parser("demo", help="the whole pipeline offline on SmolLM2-135M-Instruct, measured on held-out data")
    d.add_argument("--root", default="runs/demo", help="where data, runs and results go (default runs/demo)")
    d.add_argument("--fast", action="store_true", default=None,
                   help="a tiny random model and a few steps per stage (also DEMO_FAST=1)")
    d.add_argument("--overwrite", action="store_true", help="re-run every stage")
    d.add_argument("--prepare-only", action="store_true",
                   help="only the one-time part: fetch and convert the model, write the data; train nothing")
    return p


def _setup_logging():
    ours = [h for h in log.handlers if getattr(h, "posttrain_cli", False)]
    if not ours:
        handler = logging.StreamHandler(sys.stderr)
        handler.posttrain_cli = True
        handler.setFormatter(logging.Formatter("posttrain: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    for handler in ours:  # main() may run several times in one process (tests): write to today's stderr
        handler.stream = sys.stderr  # not setStream: it flushes the old stream, which may be closed
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # peft and TRL read transformers' deprecated alias on every model wrap; nothing a user can act on
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    # bitsandbytes on an AVX512-bf16 CPU warns at import that an optional hub kernel is missing; 4-bit still works
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _load(args, level: str = "model", skip: tuple[str, ...] = (), launched=None):
    """The recipe, through the one check pass (posttrain.checks): every problem reported at once, or none.
    `launched`: the Accelerate launch it will run under (checked with it)."""
    recipe = checks.load_recipe(args.recipe, args.overrides, level=level, skip=skip, launched=launched)
    if args.stage and recipe.stage != args.stage:
        raise PosttrainError(
            f"{args.recipe} is a '{recipe.stage}' recipe, not '{args.stage}'; use `make {recipe.stage}` "
            f"or `posttrain train {args.recipe}`"
        )
    return recipe


def cmd_train(args) -> int:
    recipe = _load(args, launched=launch.from_environment())  # every rank checks alike, before the run dir or weights
    manifest = lifecycle.train(recipe, resume=args.resume, overwrite=args.overwrite, force=args.force)
    if manifest:
        m = manifest.get("metrics", {})
        keys = {**{k: m[k] for k in ("train_loss", "eval_loss") if k in m}, **stages.headline(recipe.stage, m)}
        shown = ", ".join(f"{k}={v:.4g}" for k, v in keys.items())
        print(f"finished {recipe.stage} run in {recipe.output_dir} ({shown})")
        if recipe.eval and is_main_process():
            evaluate.evaluate(recipe.output_dir, **recipe.eval)
    return 0


def cmd_merge(args) -> int:
    if not is_adapter(Path(args.run_dir)):
        raise PosttrainError(f"{args.run_dir} holds no LoRA adapter (adapter_config.json) to merge")
    print(f"merged model written to {merge_adapter(Path(args.run_dir), Path(args.out) if args.out else None)}")
    return 0


def cmd_plan(args) -> int:
    go_offline_if_unreachable()  # plan reads configs and a few rows: from the cache, in seconds, when offline
    launched = launch.resolve(args.accelerate_config)
    recipe = _load(args, launched=launched)
    gpus, sharding = launch.plan_args(launched, args.gpus, args.sharding)
    try:
        text, fits = plan.report(recipe, args.gpu_gib, gpus, sharding)
    except PosttrainError:
        raise
    except Exception as e:  # plan reads only configs: whatever stops the estimate is said in one line
        raise PosttrainError(f"plan: cannot estimate memory for {recipe.source}: {type(e).__name__}: "
                             f"{first_line(e)}") from None
    print(text)
    return 0 if fits else 1


def cmd_validate(args) -> int:
    offline = go_offline_if_unreachable()
    launched = launch.resolve(args.accelerate_config)
    if pipeline.is_pipeline_file(args.recipe):
        print(pipeline.describe(args.recipe, args.overrides, launched))
        return 0
    # --no-data: the recipe and the model's config, not the data or the tokenizer
    recipe = _load(args, skip=("data_readable", "eos_token") if args.no_data else (), launched=launched)
    print(f"# {recipe.source}: {recipe.stage} recipe, hash {recipe.hash}")
    print(recipe.to_yaml(), end="")
    if launched:
        print(f"ok: launch checked ({launched.name}, {launched.processes} process(es), from {launched.source})")
    print(f"ok: recipe checked (training -> {schema.config_class(stages.get(recipe.stage).trl_config).__name__}"
          + (", peft -> LoraConfig" if recipe.peft else "")
          + (", quantization -> BitsAndBytesConfig" if recipe.quantization else "") + ")")
    for note in recipe.notes:
        print(f"not checked: {note}")
    if recipe.peft and not any(n.startswith("peft.target_modules") for n in recipe.notes):
        print(f"ok: peft.target_modules match modules of {recipe.model['name_or_path']}")
    for fact in recipe.facts:
        print(f"ok: {fact}")
    if args.no_data:
        return 0
    if offline:
        print("offline: the Hugging Face hub is not reachable; checking tokenizer and data from local files and cache")
    preview(recipe)
    return 0


def cmd_recipes(args) -> int:
    if args.action == "copy":
        if not args.name:
            raise PosttrainError("recipes copy: name the recipe to copy, e.g. `posttrain recipes copy alpaca_gpt2`")
        print(f"copied to {shipped.copy(args.name, args.dest, overwrite=args.overwrite)}")
        return 0
    if args.name:
        raise PosttrainError(f"recipes {args.action}: takes no name (did you mean `posttrain recipes copy {args.name}`?)")
    print(shipped.listing(args.model, args.stage, args.method))
    return 0


COMMANDS = {
    "train": cmd_train, "validate": cmd_validate, "plan": cmd_plan, "merge": cmd_merge, "recipes": cmd_recipes,
    "pipeline": lambda a: pipeline.run_pipeline(a.pipeline, a.overrides, start=a.start, only=a.only, overwrite=a.overwrite),
    "generate": lambda a: generate(a.run_dir, a.prompt, input_text=a.input, template=a.template,
                                   max_new_tokens=a.max_new_tokens, do_sample=a.sample, temperature=a.temperature),
    "eval": lambda a: evaluate.main(a.run_dir, a.tasks, limit=a.limit, batch_size=a.batch_size, num_fewshot=a.num_fewshot,
                                    chat_template=a.chat_template),
    "report": lambda a: report(a.path),
    "convert": lambda a: convert.run(a.file, a.out, a.tool, a.overwrite, stage=a.stage),  # exit 3: keys NOT TRANSLATED
    "demo": lambda a: demo(a.root, fast=a.fast, overwrite=a.overwrite, prepare_only=a.prepare_only),
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """Options anywhere on the line: `validate NAME --no-data a.b=c` as well as `validate NAME a.b=c --no-data`.
    argparse ends the `overrides` list at the first option, so the KEY=VALUE words after it come back unparsed;
    they are overrides too (parse_intermixed_args does not take subcommands)."""
    p = _parser()
    args, rest = p.parse_known_args(argv)
    if rest and hasattr(args, "overrides") and not any(w.startswith("-") for w in rest):
        args.overrides = [*args.overrides, *rest]
    elif rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    _setup_logging()
    try:
        return COMMANDS[args.command](args)
    except PosttrainError as e:
        if is_main_process():  # under DDP every rank stops; one says why
            for line in str(e).splitlines() if isinstance(e, Problems) else [str(e)]:
                print(f"posttrain: error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("posttrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
