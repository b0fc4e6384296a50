"""Cached benchmark steps, each keyed by a hash of everything that affects its result.

A step (train a model, fine-tune the control, prune at a ratio, ...) is described by its
*material*: a JSON-able dict of every input that changes what it computes (the config after
``_base_`` merge and overrides, iterations, seed, criterion, target, ratio, sensitivity grid,
channel step, the keys of the steps it builds on, and the code version: a hash of the source
files it runs). Its key is the SHA-256 of that material, and its outputs live in
``ROOT/<kind>-<key[:12]>/`` with a ``step.json`` written last. A step is reused only when that
record holds the same key; anything else is computed afresh, and the log says which inputs
differ from the records already there, so no result is ever reused for other arguments.
"""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import time

import paddleseg  # noqa: F401  (import order: cv2 before paddle)
from paddleseg.utils import logger
from paddleseg.utils.errors import UserError
from paddleseg.utils.fileio import write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = "step.json"
# fields that tell the rows of one kind of step apart (not the reason one was not reused)
ROW_FIELDS = ("ratio", "target", "pruned")
# fields that make a step another unit of the same kind, not an earlier version of it: a
# recovery unit's seed, recipe flags, control flag and row (the other seeds of a recipe are not
# explained as "made with other seed" each time a unit starts)
IDENTITY_FIELDS = {"recovery": ("seed", "flags", "control", "row")}

# the sources each kind of step runs; a change in any of them is a new code version
TRAIN_SOURCES = ("train.py", "val.py", "paddleseg/__init__.py", "paddleseg/env.py",
                 "paddleseg/core/*.py", "paddleseg/models/**/*.py", "paddleseg/datasets/*.py",
                 "paddleseg/transforms/*.py", "paddleseg/cvlibs/*.py", "paddleseg/utils/*.py")
PRUNE_SOURCES = TRAIN_SOURCES + ("slim/prune/prune.py", "paddleseg/slim/**/*.py",
                                 "paddleseg/deploy/*.py")
# the engine without the latency measurement and the targets: a sensitivity analysis, or a
# retraining of a given plan, never times a model nor allocates a target, so a change there does
# not discard hours of analysis and retraining (a new module of the engine is in, by default)
ENGINE_SOURCES = PRUNE_SOURCES + ("!paddleseg/slim/latency/**/*.py",
                                  "!paddleseg/slim/targets/**/*.py")


class StepNotPrepared(UserError):
    """``--phase latency`` met a step that ``--phase prepare`` has not run with these
    arguments."""


def digest(obj):
    """SHA-256 of ``obj`` as canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def source_files(patterns, root=ROOT):
    """The files the glob ``patterns`` name, less those of the patterns that start with "!"."""
    files, excluded = set(), set()
    for pattern in patterns:
        chosen = excluded if pattern.startswith("!") else files
        chosen.update(glob.glob(os.path.join(root, pattern.lstrip("!")), recursive=True))
    return sorted(os.path.relpath(f, root) for f in files - excluded if os.path.isfile(f))


def code_version(patterns, root=ROOT, extra=None):
    """Hash of the named source files (path and bytes) plus ``extra`` (library versions)."""
    h = hashlib.sha256()
    for rel in source_files(patterns, root):
        with open(os.path.join(root, rel), "rb") as f:
            h.update(rel.encode() + b"\0" + hashlib.sha256(f.read()).digest())
    if extra:
        h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()[:16]


# what the benchmark writes itself: a model merged into results.json does not make the tree
# the next model runs from "dirty"
GENERATED = ("benchmarks/results.json", "benchmarks/RESULTS.md", "benchmarks/speedup.png",
             "benchmarks/frontier.png",
             "README.md", "docs/prune.md")


def git_commit(root=ROOT):
    """``commit`` or ``commit+dirty`` (informational: the keys hash the sources themselves);
    changes to the benchmark's own outputs (:data:`GENERATED`) do not count."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ".", *(f":(exclude){p}" for p in GENERATED)],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit[:12] + ("+dirty" if dirty else "")


def differences(old, new, prefix=""):
    """Dotted names of the entries that differ between two materials."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def shown(path):
    """``path`` relative to the repository root when inside it, else absolute."""
    full = os.path.abspath(path)
    return os.path.relpath(full, ROOT) if full.startswith(ROOT + os.sep) else full


def read_record(folder):
    try:
        with open(os.path.join(folder, RECORD), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class Steps:
    """The cached steps of one model under ``root``.

    ``compute=False`` (``--phase latency``): a step that is not already there with the same key
    raises StepNotPrepared instead of running.
    """

    def __init__(self, root, compute=True):
        self.root, self.compute = root, compute

    def folder(self, kind, key):
        return os.path.join(self.root, f"{kind}-{key[:12]}")

    def run(self, kind, material, fn, resumable=False):
        """The record of step ``kind`` for ``material``: reused when done with the same key,
        else ``fn(folder)`` is run, which returns (result dict, commands list). A folder that
        a killed run left (no record) is started over, unless the step is ``resumable``: its
        command continues from what the folder holds (the key says it was made with the same
        inputs), as a killed retraining continues from its last checkpoint."""
        material = dict(material, kind=kind)
        key = digest(material)
        folder = self.folder(kind, key)
        record = read_record(folder)
        if record is not None and record.get("key") == key:
            logger.info(f"reusing {kind} step {shown(folder)} (same key {key[:12]})")
            return record
        self._explain_new_key(kind, material, key)
        if not self.compute:
            raise StepNotPrepared(f"the {kind} step for these arguments ({key[:12]}) has not run; "
                                  "run --phase prepare (or all) with the same arguments first")
        if os.path.isdir(folder) and resumable:
            logger.info(f"resuming {kind} step {shown(folder)}: a killed run left it")
        elif os.path.isdir(folder):  # a run killed before its record: ours, start over
            shutil.rmtree(folder)
        os.makedirs(folder, exist_ok=True)
        start = time.time()
        result, commands = fn(folder)
        record = {"kind": kind, "key": key, "material": material, "result": result,
                  "commands": commands, "seconds": round(time.time() - start, 1)}
        write_json(os.path.join(folder, RECORD), record)
        return record

    def _explain_new_key(self, kind, material, key):
        for other in sorted(glob.glob(os.path.join(self.root, f"{kind}-*"))):
            record = read_record(other)
            if record and record.get("key") != key and "material" in record:
                diff = differences(record["material"], material)
                identity = ROW_FIELDS + IDENTITY_FIELDS.get(kind, ())
                if any(d.split(".")[0] in identity for d in diff):
                    continue    # another row or unit, not an earlier version of this one
                logger.info(f"not reusing {shown(other)}: made with other "
                            f"{', '.join(diff[:6])}{' ...' if len(diff) > 6 else ''}")
