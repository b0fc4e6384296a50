"""Fault drill: SIGKILL train.py and prune.py at random moments, restart them, check the outcome.

For each command the drill first runs it once uninterrupted (the reference). Then, in a fresh
folder, it starts the command, kills it (SIGKILL, whole process group) after a random delay
drawn over the reference's duration, restarts it the way a user would (train.py with
``--resume_model`` at the newest checkpoint, prune.py with the very same command), and repeats
until ``--kills`` kills have landed; a last run finishes undisturbed. It checks that

* every restart starts (no run is left unable to continue),
* every file a later step reads loads cleanly after each kill (checkpoints through the safe
  loader, JSON files parse), and
* the final outputs equal the reference (same seed): weights within 1e-6, same prune plan.

It prints one summary line per command and, with ``--json``, writes the counts.

    python tools/fault_drill.py --kills 20 --json fault_drill.json
"""
import argparse
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

TRAIN_ITERS = 60
CONFIG_TEXT = """\
batch_size: 2
iters: {iters}
train_dataset:
  type: OpticDiscSeg
  dataset_root: {data}
  mode: train
  transforms:
    - type: Resize
      target_size: [48, 48]
    - type: RandomHorizontalFlip
    - type: Normalize
val_dataset:
  type: OpticDiscSeg
  dataset_root: {data}
  mode: val
  transforms:
    - type: Resize
      target_size: [48, 48]
    - type: Normalize
model:
  type: FastSCNN
  num_classes: 2
optimizer:
  type: sgd
  momentum: 0.9
  weight_decay: 4.0e-5
lr_scheduler:
  type: PolynomialDecay
  learning_rate: 0.01
  end_lr: 0
  power: 0.9
loss:
  types:
    - type: CrossEntropyLoss
  coef: [1, 0.4]
"""


def train_command(config, save_dir, resume=None):
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), "--config", config, "--save_dir", save_dir,
           "--save_interval", "5", "--do_eval", "--seed", "3", "--log_iters", "1", "--num_workers", "0"]
    return cmd + (["--resume_model", resume] if resume else [])


def prune_command(config, model_path, save_dir):
    return [sys.executable, os.path.join(ROOT, "slim", "prune", "prune.py"), "--config", config,
            "--model_path", model_path, "--save_dir", save_dir, "--pruning_ratio", "0.2",
            "--sen_ratios", "0.2", "0.4", "--sen_eval_num", "2", "--retraining_iters", "4",
            "--seed", "3"]


def newest_checkpoint(save_dir):
    done = [d for d in glob.glob(os.path.join(save_dir, "iter_*"))
            if os.path.isfile(os.path.join(d, "model.pdparams"))]
    return max(done, key=lambda d: int(d.rsplit("_", 1)[1])) if done else None


def run_to_end(cmd, log):
    start = time.time()
    with open(log, "ab") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    return proc.returncode, time.time() - start


def run_and_kill(cmd, delay, log):
    """Start ``cmd``, SIGKILL its process group after ``delay`` s. True when the kill landed
    (the run was still going), False when it had already finished."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        try:
            proc.wait(timeout=delay)
            return False, proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True, None


def corrupt_files(folder):
    """Files a later step reads that fail to load: checkpoints and JSON."""
    from paddleseg.utils.checkpoint import safe_load_state_dict
    bad = []
    for path in glob.glob(os.path.join(folder, "**", "*"), recursive=True):
        if ".tmp" in path or ".staging" in path or not os.path.isfile(path):
            continue  # temporaries are never read by a later step
        try:
            if path.endswith((".pdparams", ".pdopt")):
                safe_load_state_dict(path)
            elif path.endswith(".json"):
                with open(path) as f:
                    json.load(f)
        except Exception as e:  # noqa: BLE001  (any failure to load counts)
            bad.append(f"{path}: {e}")
    return bad


def weights_equal(path_a, path_b, tol=1e-6):
    from paddleseg.utils.checkpoint import safe_load_state_dict
    a, b = safe_load_state_dict(path_a), safe_load_state_dict(path_b)
    if set(a) != set(b):
        return False
    return all(np.allclose(np.asarray(a[k]), np.asarray(b[k]), atol=tol, rtol=0) for k in a)


def drill(name, start_cmd, restart_cmd, finished, outputs_match, duration, kills, rng, log):
    """Kill/restart until ``kills`` kills landed, then finish. Returns the counts."""
    counts = {"command": name, "kills": 0, "restarts": 0, "finished_before_kill": 0,
              "corrupt_files": 0, "corrupt_examples": [], "failed_restarts": 0}
    cmd = start_cmd
    attempts = 0
    while counts["kills"] < kills and attempts < kills * 4:
        attempts += 1
        landed, code = run_and_kill(cmd, rng.uniform(0.5, duration), log)
        if landed:
            counts["kills"] += 1
        else:
            counts["finished_before_kill"] += 1
            counts["failed_restarts"] += int(code != 0)
        bad = corrupt_files(finished.folder)
        counts["corrupt_files"] += len(bad)
        counts["corrupt_examples"] += bad[:2]
        if finished():
            cmd = start_cmd  # it completed: start the run over (a fresh folder) to keep drilling
            shutil.rmtree(finished.folder)
        else:
            cmd = restart_cmd()
            counts["restarts"] += 1
        print(f"  {name}: kill {counts['kills']}/{kills}", flush=True)
    if finished():
        shutil.rmtree(finished.folder)
        cmd = start_cmd
    while not finished():  # the last runs finish undisturbed (resuming as often as needed)
        code, _ = run_to_end(cmd, log)
        counts["failed_restarts"] += int(code != 0)
        if code != 0:
            break
        cmd = restart_cmd()
    counts["finished"] = finished()
    counts["equal_to_uninterrupted"] = bool(counts["finished"] and outputs_match())
    return counts


class Done:
    """Callable: has the run in ``folder`` produced its final output file?"""

    def __init__(self, folder, final_file):
        self.folder, self.final_file = folder, final_file

    def __call__(self):
        return os.path.isfile(os.path.join(self.folder, self.final_file))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per command")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--commands", nargs="+", default=["train", "prune"], choices=["train", "prune"])
    parser.add_argument("--work_dir", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", default=None, help="write the counts here")
    args = parser.parse_args()
    from make_synthetic_optic_disc import make_dataset

    work = args.work_dir or tempfile.mkdtemp(prefix="fault_drill_")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "runs.log")
    data = make_dataset(os.path.join(work, "data"), num_train=6, num_val=2, size=64, overwrite=True)
    config = os.path.join(work, "drill.yml")
    with open(config, "w") as f:
        f.write(CONFIG_TEXT.format(iters=TRAIN_ITERS, data=data))
    rng = random.Random(args.seed)
    results = []

    ref_train = os.path.join(work, "ref_train")
    final_ckpt = f"iter_{TRAIN_ITERS}/model.pdparams"
    code, train_seconds = run_to_end(train_command(config, ref_train), log)
    if code != 0:
        sys.exit(f"error: the reference training run failed (exit {code}); see {log}")
    print(f"reference train.py: {train_seconds:.1f} s", flush=True)

    if "train" in args.commands:
        folder = os.path.join(work, "drill_train")
        done = Done(folder, final_ckpt)
        results.append(drill(
            "train.py", train_command(config, folder),
            lambda: train_command(config, folder, newest_checkpoint(folder)), done,
            lambda: weights_equal(os.path.join(folder, final_ckpt), os.path.join(ref_train, final_ckpt)),
            train_seconds, args.kills, rng, log))

    if "prune" in args.commands:
        model_path = os.path.join(ref_train, final_ckpt)
        ref_prune = os.path.join(work, "ref_prune")
        code, prune_seconds = run_to_end(prune_command(config, model_path, ref_prune), log)
        if code != 0:
            sys.exit(f"error: the reference prune.py run failed (exit {code}); see {log}")
        print(f"reference prune.py: {prune_seconds:.1f} s", flush=True)
        folder = os.path.join(work, "drill_prune")
        cmd = prune_command(config, model_path, folder)

        def same_prune():
            from paddleseg.utils.checkpoint import read_checkpoint
            structures_equal = read_checkpoint(os.path.join(folder, "model.pdparams"))[1] == \
                read_checkpoint(os.path.join(ref_prune, "model.pdparams"))[1]
            return structures_equal and weights_equal(os.path.join(folder, "model.pdparams"),
                                                      os.path.join(ref_prune, "model.pdparams"))

        results.append(drill("prune.py", cmd, lambda: cmd, Done(folder, "report.json"), same_prune,
                             prune_seconds, args.kills, rng, log))

    for r in results:
        print(f"{r['command']}: {r['kills']} kills, {r['restarts']} restarts, "
              f"{r['corrupt_files']} corrupt files, finished={r['finished']}, "
              f"equal to uninterrupted run={r['equal_to_uninterrupted']}, "
              f"failed restarts={r['failed_restarts']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kills_per_command": args.kills, "seed": args.seed, "results": results}, f,
                      indent=1)
    ok = all(r["finished"] and r["equal_to_uninterrupted"] and not r["corrupt_files"]
             for r in results)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
