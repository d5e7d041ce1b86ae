"""Convert survey: `posttrain convert` over every YAML config in the example folders of the other tools.

    python bench/convert_survey.py [--mirrors DIR | --tree DIR] [--export DIR] [--out bench/RESULTS.md] [--files F.tsv]

Each config is converted in-process as `posttrain convert FILE` does it (tool detected from its keys, every key's
fate, the recipe text), from the root of its tool's tree: LLaMA-Factory dataset names resolve through the repo's
data/dataset_info.json as `llamafactory-cli train examples/...` run from there would, alignment-handbook's stage
comes from the folder names. A file ends one of four ways:
  nothing left        every key mapped, dropped with why, or a default made explicit (the command's exit 0);
  NOT TRANSLATED      the recipe is written with some key NOT TRANSLATED (exit 3);
  refused             a one-line PosttrainError (exit 2: not a training config, a setting posttrain cannot run);
  traceback           any other exception: a bug, listed with its file.
Per tool and in total, plus the NOT TRANSLATED lines counted by source key (top 25) and the refusals by reason.

Sources (nothing of them is in this repository):
  --mirrors DIR  a folder holding git clones (bare or not) named owner+name, or owner+name/repo (default
                 /work/.mirror); each tool's folder is exported from its HEAD to a temporary tree (--export DIR:
                 to DIR, kept). Get them with e.g.
                 git clone --bare https://github.com/axolotl-ai-cloud/axolotl DIR/axolotl-ai-cloud+axolotl/repo
  --tree DIR     an exported tree: DIR/<tool>/ holds the repo's files at their own paths (tools: SOURCES).
The table goes into its own section of bench/RESULTS.md (--out) and is printed. Imports nothing but
posttrain.convert and posttrain.errors, so PYTHONPATH=<an older checkout> surveys that version (this script does
not put its own checkout on sys.path).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import re
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.append(str(BENCH))

import table  # noqa: E402

# survey tool -> (repository, the folder of its examples, other files converting reads)
SOURCES = {
    "axolotl": ("axolotl-ai-cloud/axolotl", "examples", ()),
    "LLaMA-Factory": ("hiyouga/LLaMA-Factory", "examples", ("data/dataset_info.json",)),
    "alignment-handbook": ("huggingface/alignment-handbook", "recipes", ()),
    "torchtune": ("pytorch/torchtune", "recipes", ()),
}
MIRRORS = Path("/work/.mirror")
CLEAN, NOT, REFUSED, TRACEBACK = "nothing left", "some NOT TRANSLATED", "refused", "traceback"
KINDS = (CLEAN, NOT, REFUSED, TRACEBACK)
TOP = 25


def git_dir(mirrors: Path, repo: str) -> Path | None:
    base = mirrors / repo.replace("/", "+")
    return next((d for d in (base / "repo", base) if d.is_dir()), None)


def export(mirrors: Path, tree: Path) -> list[str]:
    """Each tool's example folder (and the files converting reads) from its mirror's HEAD into tree/<tool>/;
    returns one line per tool saying which commit."""
    missing = [repo for repo, _, _ in SOURCES.values() if git_dir(mirrors, repo) is None]
    if missing:
        sys.exit(f"convert_survey: no mirror of {', '.join(missing)} under {mirrors}: pass --mirrors DIR (git clones "
                 f"named owner+name, e.g. git clone --bare https://github.com/{missing[0]} "
                 f"DIR/{missing[0].replace('/', '+')}/repo) or --tree DIR (an exported tree)")
    lines = []
    for tool, (repo, folder, extra) in SOURCES.items():
        src, dest = git_dir(mirrors, repo), tree / tool
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(src), "archive", "--format=tar", "HEAD", folder, *extra],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        head = subprocess.run(["git", "-C", str(src), "log", "-1", "--format=%h %cs"], check=True, capture_output=True,
                              text=True).stdout.split()
        lines.append(f"{repo} `{folder}/` at {head[0]} ({head[1]})")
    return lines


def configs(tree: Path, tool: str) -> list[Path]:
    folder = tree / tool / SOURCES[tool][1]
    return sorted(p.relative_to(tree / tool) for p in folder.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def survey_file(root: Path, rel: Path) -> tuple[str, str, list[str]]:
    """(kind, detail, NOT TRANSLATED source keys) of one config, converted from its tool's root."""
    from posttrain.convert import convert
    from posttrain.convert.core import fate_lines, recipe_text
    from posttrain.errors import PosttrainError

    with contextlib.chdir(root):
        try:
            conv = convert(rel)
            fate_lines(conv)
            recipe_text(conv, Path(f"{rel.stem}.posttrain.yaml"))
        except PosttrainError as e:
            return REFUSED, str(e), []
        except Exception as e:  # noqa: BLE001 - a traceback is what is counted
            where = traceback.extract_tb(e.__traceback__)[-1]
            return TRACEBACK, f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})", []
    keys = [re.sub(r"\[\d+\]", "[]", f.key) for f in conv.untranslated]
    return (NOT if keys else CLEAN), "", keys


def survey(tree: Path) -> dict:
    """{tool: {"files": [(path, kind, detail)], "keys": Counter}} over every tool folder present in `tree`."""
    out = {}
    for tool in SOURCES:
        if not (tree / tool / SOURCES[tool][1]).is_dir():
            continue
        files, keys = [], collections.Counter()
        for rel in configs(tree, tool):
            kind, detail, nt = survey_file(tree / tool, rel)
            files.append((str(rel), kind, detail))
            keys.update(nt)
        out[tool] = {"files": files, "keys": keys}
    return out


def reason(detail: str, path: str) -> str:
    """A refusal's message without the file's own name, so that equal reasons group."""
    text = detail.splitlines()[0].replace(path, "FILE")
    return text if len(text) <= 150 else text[:147] + "..."


def report(results: dict) -> str:
    tools = list(results)
    counts = {t: collections.Counter(kind for _, kind, _ in results[t]["files"]) for t in tools}
    total = sum(counts.values(), collections.Counter())
    rows = [[t, len(results[t]["files"]), *(counts[t][k] for k in KINDS)] for t in tools]
    rows.append(["**total**", sum(len(results[t]["files"]) for t in tools), *(total[k] for k in KINDS)])
    parts = [table.table(["tool", "files", *KINDS], rows)]

    keys = sum((results[t]["keys"] for t in tools), collections.Counter())
    if keys:
        top = [[f"`{k}`", n, *(results[t]["keys"][k] or "" for t in tools)] for k, n in keys.most_common(TOP)]
        parts.append(f"NOT TRANSLATED lines by source key, top {min(TOP, len(keys))} of {len(keys)} keys "
                     f"({sum(keys.values())} lines):\n\n" + table.table(["source key", "lines", *tools], top))
    refused = collections.Counter((t, reason(d, p)) for t in tools for p, k, d in results[t]["files"] if k == REFUSED)
    if refused:
        parts.append("Refused, by reason:\n\n" + table.table(
            ["tool", "files", "reason"], [[t, n, r.replace("|", "\\|")] for (t, r), n in refused.most_common()]))
    tracebacks = [f"- {t} `{p}`: {d}" for t in tools for p, k, d in results[t]["files"] if k == TRACEBACK]
    parts.append("Tracebacks:\n\n" + "\n".join(tracebacks) if tracebacks else "Tracebacks: none.")
    return "\n\n".join(parts) + "\n"


def posttrain_version() -> str:
    import posttrain

    root = Path(posttrain.__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "log", "-1", "--format=%h"], capture_output=True, text=True)
    return f"posttrain from {root}" + (f" at {head.stdout.strip()}" if head.returncode == 0 else "")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mirrors", type=Path, default=MIRRORS, help="folder of the tools' git mirrors (owner+name)")
    p.add_argument("--tree", type=Path, help="an exported tree (DIR/<tool>/...) instead of the mirrors")
    p.add_argument("--export", type=Path, help="export the mirrors to this folder (kept) instead of a temporary one")
    p.add_argument("--out", default=str(table.RESULTS), help="the RESULTS.md whose section is rewritten")
    p.add_argument("--files", type=Path, help="also write every file's result here (tool, path, result, detail; TSV)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="convert-survey-") as tmp:
        if args.tree:
            tree, sources = args.tree.resolve(), [f"the exported tree {args.tree}"]
        else:
            tree = (args.export or Path(tmp)).resolve()
            sources = export(args.mirrors, tree)
        results = survey(tree)
    if not results:
        sys.exit(f"convert_survey: no tool folder under {tree} (expected {', '.join(f'{t}/{f}/' for t, (_, f, _) in SOURCES.items())})")
    command = "python bench/convert_survey.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = (f"`{command}`, {date}, {posttrain_version()}; every YAML under " + "; ".join(sources) + ".\n\n")
    body = head + report(results)
    table.write_section("convert_survey", "Convert survey: other tools' example configs (bench/convert_survey.py)",
                        body, out=args.out)
    print(body + f"\nwrote {args.out}")
    if args.files:
        args.files.write_text("".join(f"{t}\t{p}\t{k}\t{d.splitlines()[0] if d else ''}\n"
                                      for t in results for p, k, d in results[t]["files"]))
    return results


if __name__ == "__main__":
    main()
