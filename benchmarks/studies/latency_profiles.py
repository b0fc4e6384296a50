"""Per-layer profiles of the models that miss the latency target's goal (RESULTS.md, "The
latency target against its goal"): the unpruned model, the latency-target row and its
equal-loss control, each through ``tools/profile_latency.py`` at the benchmark's latency
setup. Writes docs/latency_profiles.md.

    python benchmarks/studies/latency_profiles.py --work_dir /work/bench_work          # the misses
    python benchmarks/studies/latency_profiles.py --work_dir /work/bench_work --all    # every model

The checkpoints are the benchmark's own steps under ``--work_dir`` (found by the step keys
results.json records), so run it on the machine that ran the benchmark; a quiet machine gives
the cleanest figures.
"""
import argparse
import os
import shlex
import subprocess
import sys

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # prune_speedup, bench_*
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [BENCHMARKS, ROOT]

import bench_report  # noqa: E402
from paddleseg.utils import cli  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402
from paddleseg.utils.fileio import write_text  # noqa: E402
from prune_speedup import generated_by, step_file  # noqa: E402

PROFILE = os.path.join(ROOT, "tools", "profile_latency.py")
ROWS = ("latency", "latency_equal_loss")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work_dir", required=True, help="the benchmark's --work_dir")
    p.add_argument("--out_dir", default="benchmarks", help="where results.json is")
    p.add_argument("--out", default="docs/latency_profiles.md")
    p.add_argument("--all", action="store_true", help="every model, not only the misses")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--debug", action="store_true")
    return p.parse_args(argv)


def checkpoints(work_dir, model, entry):
    """[(label, model.pdparams)]: the unpruned model and the two latency-target rows."""
    train = entry["training"]
    found = [("unpruned", step_file(work_dir, model, "train", train["step_key"], "out",
                                    f"iter_{train['iters']}", "model.pdparams"))]
    for r in entry["rows"]:
        if r["row"] in ROWS and r["status"] == "ok":
            found.append((r["label"], step_file(work_dir, model, "prune", r["step_key"], "out",
                                                "model.pdparams")))
    return found


def profile(entry, path, top):
    setup = entry["latency_setup"]
    cmd = [sys.executable, PROFILE, "--config", entry["config"], "--model_path", path,
           "--latency_shape", *map(str, setup["input_shape"]), "--cpu_threads",
           str(setup["threads"]), "--top", str(top)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise UserError(f"{shlex.join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return proc.stdout.rstrip("\n")


def main(argv):
    args = parse_args(argv)
    results = bench_report.load_results(os.path.join(ROOT, args.out_dir))
    lines = ["# Where the time goes: models against the latency target's goal", "",
             f"{generated_by('studies/latency_profiles.py', argv)} Each block is "
             "`tools/profile_latency.py` on one checkpoint of `benchmarks/prune_speedup.py` "
             "(verdicts: benchmarks/RESULTS.md).", ""]
    for model, entry in results["models"].items():
        verdict = bench_report.latency_goal(entry)
        if verdict is None or (not args.all and verdict[2] and verdict[3]):
            continue
        lat, ctl, fast, kept = verdict
        lines += [f"## {model}", "",
                  f"Speedup >= {bench_report.GOAL_SPEEDUP}x: {'met' if fast else 'missed'} "
                  f"({bench_report.fmt_speedup(lat)}); mIoU at least the FLOPs-target "
                  f"allocation's: {'met' if kept else 'missed'} ({lat['miou']:.4f} against "
                  f"{ctl['miou']:.4f} at {bench_report.fmt_speedup(ctl)}).", ""]
        for label, path in checkpoints(args.work_dir, model, entry):
            print(f"{model}: profiling {label}", flush=True)
            lines += [f"### {label}", "", "```", profile(entry, path, args.top), "```", ""]
    write_text(os.path.join(ROOT, args.out), "\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)
