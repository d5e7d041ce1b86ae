"""Run directories: lock, manifest, resume detection, atomic finish.

A run directory is finished exactly when manifest.json says status "finished"; that is written last,
after the final model files are in place. Everything else (running, failed, killed mid-save) is
unfinished, and `--resume` continues it from its newest checkpoint.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import sys
import time
from contextlib import contextmanager, suppress
from importlib import metadata
from pathlib import Path

from posttrain.errors import RunDirError

MANIFEST = "manifest.json"
RESOLVED = "recipe.resolved.yaml"
LOCK = ".posttrain.lock"
SAVING = ".saving-final"
_CKPT = re.compile(r"^checkpoint-(\d+)$")
PACKAGES = ("posttrain", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes")


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first. The Trainer writes trainer_state.json last, so a checkpoint
    cut short by a kill has none (or a truncated one) and is skipped."""
    found = []
    for p in Path(out).glob("checkpoint-*"):
        m = _CKPT.match(p.name)
        if not (m and p.is_dir()):
            continue
        try:
            json.loads((p / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def prepare(out: Path, recipe_hash: str, *, resume: bool, overwrite: bool, force: bool = False) -> Path | None:
    """Decide what happens to an existing output dir. Returns the checkpoint to resume from, or None.

    Refuses (RunDirError) whenever going on would silently lose or mix work.
    """
    out = Path(out)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other; pick one")
    manifest = read_manifest(out)
    ckpts = checkpoints(out) if out.is_dir() else []
    occupied = out.is_dir() and any(p.name != LOCK for p in out.iterdir())
    if occupied and manifest is None and not ckpts:
        raise RunDirError(f"{out} is not empty and holds no posttrain run; choose another output_dir "
                          "(posttrain never clears a directory it did not create)")
    if resume:
        if manifest and manifest.get("status") == "finished":
            raise RunDirError(f"{out} holds a finished run; nothing to resume (use --overwrite to train again)")
        if manifest and manifest.get("recipe_hash") != recipe_hash and not force:
            raise RunDirError(f"{out} was started from a different recipe (hash {manifest.get('recipe_hash')} vs "
                              f"{recipe_hash}); resume it with the same recipe and overrides, or pass --force to "
                              "resume anyway")
        return ckpts[-1] if ckpts else None
    if not overwrite and manifest and manifest.get("status") == "finished":
        raise RunDirError(f"{out} already holds a finished run; pass --overwrite to replace it")
    if not overwrite and ckpts:
        raise RunDirError(f"{out} holds an unfinished run (newest {ckpts[-1].name}); pass --resume to continue it "
                          "or --overwrite to start over")
    if occupied:
        _clear(out)  # --overwrite, or an unfinished run that never reached a checkpoint: nothing to keep
    return None


def _clear(out: Path):
    for p in out.iterdir():
        if p.name == LOCK:
            continue
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


@contextmanager
def locked(out: Path):
    """Hold an exclusive lock on the output dir; a second run on the same dir refuses at once."""
    import fcntl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{out} is in use by another posttrain run (lock {LOCK}); wait for it or pick another output_dir") from None
        yield
    finally:
        os.close(fd)


class Manifest:
    """manifest.json, rewritten atomically at each change."""

    def __init__(self, out: Path, stage: str, recipe_hash: str, source: str):
        self.path = Path(out) / MANIFEST
        old = read_manifest(out) or {}
        self.data = {
            "stage": stage,
            "recipe_hash": recipe_hash,
            "recipe": source,
            "status": "running",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ended": None,
            "duration_s": None,
            "command": " ".join(["posttrain", *sys.argv[1:]]),
            "versions": versions(),
            "world_size": int(os.environ.get("WORLD_SIZE", "1")),
            "device": None,
            "resumed_from": None,
            "attempts": old.get("attempts", 0) + 1,
            "data": {},
            "metrics": {},
        }
        self._t0 = time.time()

    def update(self, **kw):
        self.data.update(kw)
        self.save()

    def save(self):
        write_json_atomic(self.path, self.data)

    def end(self, status: str):
        self.data["status"] = status
        self.data["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.data["duration_s"] = round(time.time() - self._t0, 2)
        self.save()


def clear_staging(out: Path):
    """The final model is first written to out/.saving-final (see commit_staging)."""
    tmp = Path(out) / SAVING
    if tmp.exists():
        shutil.rmtree(tmp)


def commit_staging(out: Path):
    """Rename the staged final model's files into out/ one by one.

    Each rename is atomic; the manifest is only marked finished after all are in place, so a kill
    at any point leaves a run that is visibly unfinished.
    """
    out = Path(out)
    tmp = out / SAVING
    for p in sorted(tmp.iterdir()):
        dest = out / p.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(p, dest)
    tmp.rmdir()
