"""Wall time of prune.py's sensitivity phase: one process against N ranks of
``paddle.distributed.launch``, taken in turns, on the same inputs (the sensitivity files must be
byte for byte the same).

    python benchmarks/studies/sensitivity_scaling.py \\
        --config configs/membrane/bisenet_membrane_256x256.yml --rounds 3 --nproc 2

Each round runs every setup once, in an order drawn afresh (seeded) so a change in the
machine's load does not always hit the same one: one process with every core (the default),
N ranks (each with cores / N threads, the default under the launcher), and one process with one
thread. A run is ``slim/prune/prune.py`` from scratch (untrained weights unless --model_path,
a new sensitivity file) with one retraining iteration; the time is the "sensitivity analysis"
phase of its report.json (on rank 0, which waits for the other ranks' points). Writes
benchmarks/studies/sensitivity_scaling.md (with the command, machine and date; ``--out``
another file, e.g. ``sensitivity_scaling_grid9.md`` for the default 9-ratio grid) and prints it.
"""
import argparse
import datetime
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile

import numpy as np

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # prune_speedup, bench_*
ROOT = os.path.dirname(BENCHMARKS)
sys.path[:0] = [BENCHMARKS, ROOT]

from paddleseg.utils import cli  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402
from prune_speedup import machine, software  # noqa: E402

PRUNE = os.path.join(ROOT, "slim", "prune", "prune.py")
PHASE = "sensitivity analysis"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/membrane/bisenet_membrane_256x256.yml")
    p.add_argument("--model_path", default=None, help="weights (default: untrained, seeded)")
    p.add_argument("--sen_ratios", nargs="+", type=float, default=[0.2, 0.4, 0.6])
    p.add_argument("--sen_eval_num", type=int, default=3)
    p.add_argument("--sen_evaluator", "--sen_engine", dest="sen_evaluator",
                   choices=["auto", "predictor", "dygraph"], default="dygraph",
                   help="prune.py's --sen_evaluator (default dygraph: every setup evaluates the "
                        "same way, and the committed tables were measured with it); "
                        "--sen_engine is the old name")
    p.add_argument("--nproc", type=int, default=2, help="ranks of the launcher setup")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/studies/sensitivity_scaling.md",
                   help="markdown written here (relative to the repository)")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.nproc < 2:
        raise UserError("--rounds must be >= 1 and --nproc >= 2")
    return args


def setups(nproc):
    """(name, launcher ranks or None, --cpu_threads or None)."""
    cores = os.cpu_count() or 1
    return [(f"1 process, {cores} threads (default)", None, None),
            (f"{nproc} ranks, {max(1, cores // nproc)} thread(s) each (default)", nproc, None),
            ("1 process, 1 thread", None, 1)]


def prune_argv(args, save_dir, threads):
    argv = ["--config", args.config, "--pruning_ratio", "0.1", "--retraining_iters", "1",
            "--sen_ratios", *map(str, args.sen_ratios), "--sen_eval_num", str(args.sen_eval_num),
            "--seed", str(args.seed), "--batch_size", "1", "--save_dir", save_dir,
            "--sen_evaluator", args.sen_evaluator]
    if args.model_path:
        argv += ["--model_path", args.model_path]
    if threads:
        argv += ["--cpu_threads", str(threads)]
    return argv


def run_once(args, ranks, threads, work):
    """(seconds of the sensitivity phase, the sensitivity file's bytes)."""
    save_dir = os.path.join(work, "out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env.pop("OMP_NUM_THREADS", None)    # each setup's own default decides
    cmd = [sys.executable]
    if ranks:
        cmd += ["-m", "paddle.distributed.launch", "--nproc_per_node", str(ranks),
                "--log_dir", os.path.join(work, "log")]
    cmd += [PRUNE, *prune_argv(args, save_dir, threads)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise UserError(f"{shlex.join(cmd)} failed: {' | '.join(tail)}")
    with open(os.path.join(save_dir, "report.json"), encoding="utf-8") as f:
        seconds = json.load(f)["seconds"][PHASE]
    with open(os.path.join(save_dir, "sensitivity.json"), "rb") as f:
        return seconds, f.read()


def measure(args):
    """({setup: [seconds per round]}, {setup: set of distinct sensitivity files})."""
    plans = setups(args.nproc)
    times = {name: [] for name, _, _ in plans}
    files = {name: set() for name, _, _ in plans}
    order = random.Random(args.seed)
    for r in range(args.rounds):
        for name, ranks, threads in order.sample(plans, len(plans)):
            with tempfile.TemporaryDirectory(prefix="sen_scaling_") as work:
                seconds, data = run_once(args, ranks, threads, work)
            times[name].append(seconds)
            files[name].add(data)
            print(f"round {r + 1} of {args.rounds}: {name}: {seconds:.1f} s", flush=True)
    return times, files


def same_files(files):
    """(the ranks' file equals the one-thread process's, every round alike; the multi-thread
    process's equals it too). Ranks run one thread each here, so the first must hold; more
    threads sum in another order and may move a metric in its last bits."""
    default, ranks, single = files.values()
    equal = len(ranks | single) == 1
    return equal, equal and default == ranks


def render(args, argv, times, files):
    names = list(times)
    base = np.array(times[names[0]])
    lines = ["# Sensitivity analysis: one process against several ranks", "",
             "Generated by "
             f"`{shlex.join(['python', 'benchmarks/studies/sensitivity_scaling.py', *argv])}` "
             f"on {datetime.date.today().isoformat()}; do not edit.", "",
             f"Machine: {machine()}; Paddle {software()['paddle']}. Model: `{args.config}`, "
             f"grid {' '.join(map(str, args.sen_ratios))}, {args.sen_eval_num} eval images, "
             f"evaluated in {args.sen_evaluator}. "
             f"{args.rounds} rounds, each running every setup once in a random order; the time "
             "is prune.py's sensitivity phase (report.json).", "",
             "| setup | seconds per round | median | median of per-round ratios to the "
             "default single process |", "|-|-|-:|-:|"]
    for name in names:
        t = np.array(times[name])
        ratio = float(np.median(t / base))
        lines.append(f"| {name} | {', '.join(f'{v:.1f}' for v in t)} | {np.median(t):.1f} | "
                     f"{ratio:.2f}x |")
    equal, all_equal = same_files(files)
    lines += ["", f"The sensitivity file of {names[1]} is byte for byte the one of {names[2]} "
              f"(the same threads per process), in every round: {'yes' if equal else 'NO'}. "
              f"The {names[0]} run's file is the same too: {'yes' if all_equal else 'no'} "
              "(other thread counts sum in another order, which can move a metric in its last "
              "bits)."]
    return "\n".join(lines) + "\n"


def main(argv):
    args = parse_args(argv)
    times, files = measure(args)
    text = render(args, argv, times, files)
    out = os.path.join(ROOT, args.out)
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(out + ".tmp", out)
    print(text)
    return 0 if same_files(files)[0] else 1


if __name__ == "__main__":
    cli.run(main)
