"""The headline table: each model trained on CamVid, then pruned, retrained and timed.

    python benchmarks/prune_speedup.py --models FastSCNN         # one model, everything
    python benchmarks/prune_speedup.py --models UNet --phase prepare   # train/prune only
    python benchmarks/prune_speedup.py --models UNet --phase latency   # time it (quiet machine)
    python benchmarks/prune_speedup.py --phase report            # RESULTS.md etc. from results.json
    python benchmarks/prune_speedup.py --models FastSCNN --phase recovery   # recipes x seeds
    python benchmarks/prune_speedup.py --phase report --merge_from ../wt/benchmarks/results.json \
        --models HarDNet --merge_parts recovery    # a model's entry measured in a worktree

Per model (``configs/camvid/``; its resolution, batch and iterations are the training budget):

1. train from scratch with ``train.py``, evaluating every checkpoint on the full val split
   (the mIoU curve); the last checkpoint is the unpruned model (no checkpoint is picked on val);
2. unpruned: export it, count GFLOPs and params at the latency input shape;
3. control: ``train.py --model_path`` fine-tunes the unpruned model the same retraining
   iterations as the pruned rows get; its mIoU is what the pruned rows are compared with;
4. rows of ``slim/prune/prune.py``: FLOPs target (``--ratios``), latency target
   (``--latency_ratios``, when prune.py has ``--target latency``), the same latency target
   with the FLOPs target's allocation (``--latency_allocation equal_loss``: the control the
   latency allocation is judged against at an equal measured speedup), and PaddleSeg 2.6's original
   method through PaddleSlim (``--method paddleslim``, ``--paddleslim_ratios``), all from the
   same checkpoint, config and data;
5. latency: Paddle Inference (CPU, oneDNN) of every export of the model, ``--warmup`` runs
   each, then ``--repeats`` rounds timing one run of each export in a random order per round;
   median and p10/p90 per export, speedup = unpruned median / median.

``--phase recovery`` (see bench_recovery.py): the latency-target row's pruned model retrained
with each of ``--recipes`` and each of ``--seeds``, beside the control fine-tuned with each
recipe's schedule and the same seeds; merged into results.json's ``recovery`` (its own section of
RESULTS.md), not into the headline rows. With ``--frontier_seeds`` every other pruned row of the
engine is retrained with the same seeds too, so that the headline table's changes are seed means.

``--row_recipe NAME`` (default ``plain``, the config schedule) retrains the rows with another
recipe wherever recipes are not what is compared: the budget rows' search and final retraining
(prune.py gets the recipe's flags) and, in the recovery phase, the seeds of the latency row and
of the ``--frontier_seeds`` rows, each against that recipe's control: the frontier and the
budget with a model's best recipe.

Every step is cached under ``--work_dir`` keyed by a hash of all that affects it (see
bench_cache.py), so an interrupted run continues and a run with other arguments or other code
never reuses a result. A step killed midway continues too where its command can: the training
at its last checkpoint (``--resume_model``), a prune.py row and a recovery unit from what they
left (the allocation, the retraining's checkpoints), each to the result of an uninterrupted run;
a resumed step's time sums the runs its log holds. When a model is done, its entry (with this command and all arguments) is
merged into ``results.json``, and RESULTS.md, speedup.png and the generated blocks of README.md
and docs/prune.md are rebuilt from results.json alone (``--phase report`` does only that).
Relative paths in the arguments are taken from the repository root, wherever it runs from.
"""
import concurrent.futures
import datetime
import importlib.util
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

import paddleseg  # noqa: E402  (import order: cv2 before paddle)
from paddleseg.slim.resume import last_checkpoint  # noqa: E402
from paddleseg.utils.checkpoint import checkpoint_iteration  # noqa: E402
from paddleseg.utils import cli, logger  # noqa: E402
from paddleseg.utils.errors import UserError  # noqa: E402

import bench_cache  # noqa: E402
import bench_recipes  # noqa: E402
import bench_recovery  # noqa: E402
import bench_report  # noqa: E402

MODELS = {
    "BiSeNetV2": "configs/camvid/bisenet_camvid_256x192.yml",
    "FCN-HRNetW18": "configs/camvid/fcn_hrnetw18_camvid_256x192.yml",
    "FastSCNN": "configs/camvid/fastscnn_camvid_256x192.yml",
    "HarDNet": "configs/camvid/hardnet_camvid_256x192.yml",
    "UNet": "configs/camvid/unet_camvid_128x96.yml",
}
DEFAULT_DATA = os.path.join("..", "shared", "data", "camvid")
DEFAULT_OUT = os.path.join("benchmarks")
DEFAULT_DOCS = ("README.md", os.path.join("docs", "prune.md"))
MIN_ROUNDS = 30
# bump when a step's own logic here changes what it produces (its sources are hashed too)
STEP_VERSION = {"train": 1, "unpruned": 1, "control": 1, "prune": 1, "paddleslim": 1,
                "count": 1, "recovery": 1}
# the record of a budget row: 2 keeps report.json's budget section (the chosen cut and why the
# next was refused), which version 1 dropped; only the budget rows are made again for it
BUDGET_RECORD = 2
RECOVERY_SOURCES = bench_cache.ENGINE_SOURCES + ("benchmarks/bench_recovery.py",)


class BenchmarkError(UserError):
    pass


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, choices=list(MODELS),
                   help="default: all")
    p.add_argument("--phase", choices=["all", "prepare", "latency", "report", "recovery"],
                   default="all",
                   help="prepare: train/prune/export only; latency: time prepared steps and "
                        "merge (fails on a missing step); all: both; report: rebuild the "
                        "outputs from results.json; recovery: the retraining recipes x seeds "
                        "on the first latency ratio's row")
    p.add_argument("--recipes", nargs="+", default=list(bench_recipes.RECIPES),
                   choices=list(bench_recipes.RECIPES),
                   help="--phase recovery: the retraining recipes (bench_recipes.RECIPES)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                   help="--phase recovery: retraining seeds of every recipe and control")
    p.add_argument("--frontier_seeds", action="store_true",
                   help="--phase recovery: also retrain every other pruned row (--ratios, the "
                        "other --latency_ratios, the equal-loss allocation's, --budget_drops) "
                        "with every seed: the headline table's, the frontier's and the goals' "
                        "means")
    p.add_argument("--row_recipe", default="plain", choices=list(bench_recipes.RECIPES),
                   help="the recipe the pruned rows are retrained with where it is not the "
                        "recipes' comparison: the --budget_drops rows' search and final "
                        "retraining (prune.py gets its flags), and with --phase recovery the "
                        "seeds of the latency row and the --frontier_seeds rows, against its "
                        "control (added to --recipes). Give it to both phases: the budget rows "
                        "are made with it")
    p.add_argument("--recovery_jobs", type=int, default=1,
                   help="--phase recovery: units run at once (each its own process)")
    p.add_argument("--recovery_threads", type=int, default=None,
                   help="--phase recovery: OMP_NUM_THREADS of each unit (default: "
                        "--train_threads; part of the unit's key, its time per iteration depends "
                        "on it)")
    p.add_argument("--ratios", nargs="*", type=float, default=[0.3],
                   help="FLOPs-target pruning ratios (0.1 0.2 0.3 where time allows)")
    p.add_argument("--latency_ratios", nargs="*", type=float, default=[0.3],
                   help="latency-target ratios (run when prune.py has --target latency)")
    p.add_argument("--equal_loss_ratios", nargs="*", type=float, default=None,
                   help="the --latency_ratios that also get the FLOPs-target allocation's row "
                        "(the equal-loss row the latency target's own allocation is judged "
                        "against); default: every one. Each such row is a prune.py run, and "
                        "with --frontier_seeds as many retrainings as seeds")
    p.add_argument("--budget_drops", nargs="*", type=float, default=[],
                   help="mIoU budgets (points) of latency_budget rows: prune.py --target latency "
                        "--max_miou_drop D --pruning_ratio --budget_ceiling")
    p.add_argument("--budget_ceiling", type=float, default=0.5,
                   help="the latency cut the budget rows search up to")
    p.add_argument("--paddleslim_ratios", nargs="*", type=float, default=[0.3],
                   help="ratios for PaddleSeg 2.6's method through PaddleSlim (none: skip)")
    p.add_argument("--train_iters", type=int, default=None,
                   help="training iterations (default: the config's, the model's budget)")
    p.add_argument("--retraining_iters", type=int, default=None,
                   help="retraining iterations of every pruned row and of the control "
                        "(default: a quarter of the training iterations)")
    p.add_argument("--criterion", choices=["l1", "fpgm"], default="fpgm")
    p.add_argument("--paddleslim_criterion", choices=["l1", "fpgm"], default="l1",
                   help="PaddleSlim pruner (l1: L1NormFilterPruner, as PaddleSeg 2.6)")
    p.add_argument("--sen_ratios", nargs="+", type=float, default=[0.2, 0.4, 0.6, 0.8])
    p.add_argument("--sen_eval_num", type=int, default=20,
                   help="val images each sensitivity point is evaluated on (both engines)")
    p.add_argument("--channel_step", type=int, default=8)
    p.add_argument("--latency_samples", type=int, default=8,
                   help="prune.py --latency_samples for the latency-target rows")
    p.add_argument("--input_shape", nargs=4, type=int, default=[1, 3, 512, 1024],
                   metavar=("N", "C", "H", "W"), help="latency (and GFLOPs) input shape")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=MIN_ROUNDS,
                   help=f"timed rounds, >= {MIN_ROUNDS}; each times every export once")
    p.add_argument("--cpu_threads", type=int, default=2, help="latency threads")
    p.add_argument("--train_threads", type=int, default=2,
                   help="OMP_NUM_THREADS of the training, pruning and control runs")
    p.add_argument("--eval_points", type=int, default=4,
                   help="points of the training mIoU curve (checkpoints evaluated)")
    p.add_argument("--paddleslim_timeout", type=int, default=3600,
                   help="seconds after which a PaddleSlim run is stopped and reported as such")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset_root", default=DEFAULT_DATA)
    p.add_argument("--work_dir", default=os.path.join("benchmarks", "work"))
    p.add_argument("--out_dir", default=DEFAULT_OUT,
                   help="where results.json, RESULTS.md and speedup.png are")
    p.add_argument("--docs", nargs="*", default=None,
                   help="files whose generated benchmark blocks are rebuilt (default: README.md "
                        "and docs/prune.md when --out_dir is benchmarks, else none)")
    p.add_argument("--gpu_results", default=None,
                   help="with --phase report: merge this table of benchmarks/gpu_latency.py "
                        "into results.json first")
    p.add_argument("--merge_from", default=None,
                   help="with --phase report: first merge the entries of --models (named "
                        "explicitly) from this other results.json (a run in a worktree)")
    p.add_argument("--merge_parts", nargs="+", choices=["models", "recovery"],
                   default=["models", "recovery"],
                   help="with --merge_from: the headline entry, the recovery entry, or both")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args):
    for name in ("ratios", "latency_ratios", "paddleslim_ratios", "sen_ratios"):
        if not all(0 < r < 1 for r in getattr(args, name)):
            raise BenchmarkError(f"--{name} must lie in (0, 1), got {getattr(args, name)}")
    if not 0 < args.budget_ceiling < 1 or not all(d > 0 for d in args.budget_drops):
        raise BenchmarkError(f"--budget_ceiling must lie in (0, 1) and --budget_drops be > 0, got "
                             f"{args.budget_ceiling} and {args.budget_drops}")
    if args.row_recipe not in args.recipes:   # its seeds and control: the rows' baseline
        args.recipes.append(args.row_recipe)
    if args.equal_loss_ratios is None:
        args.equal_loss_ratios = list(args.latency_ratios)
    stray = [r for r in args.equal_loss_ratios if r not in args.latency_ratios]
    if stray:
        raise BenchmarkError(f"--equal_loss_ratios {stray} are not among --latency_ratios "
                             f"{args.latency_ratios}: an equal-loss row is compared with the "
                             "latency target's row at the same ratio; add them to both")
    if args.repeats < MIN_ROUNDS:
        raise BenchmarkError(f"--repeats must be >= {MIN_ROUNDS} (medians of at least "
                             f"{MIN_ROUNDS} rounds), got {args.repeats}")
    for name in ("train_iters", "retraining_iters", "eval_points", "sen_eval_num", "cpu_threads",
                 "train_threads", "channel_step", "paddleslim_timeout", "recovery_jobs",
                 "recovery_threads"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "retraining_iters" else 1):
            raise BenchmarkError(f"--{name} must be positive, got {value}")
    if args.merge_from and (args.phase != "report" or args.models is None):
        raise BenchmarkError("--merge_from goes with --phase report and the --models to merge "
                             "named (the other file's other entries are older or another "
                             "run's)")
    if args.models is None:
        args.models = list(MODELS)
    if args.docs is None:
        same = os.path.realpath(os.path.join(ROOT, args.out_dir)) == os.path.realpath(
            os.path.join(ROOT, DEFAULT_OUT))
        args.docs = list(DEFAULT_DOCS) if same else []


# ---------------------------------------------------------------- subprocesses


def rel(path):
    """``path`` as commands show it: relative to the repository root (their working folder)
    when inside it, else absolute."""
    return bench_cache.shown(os.path.join(ROOT, path))


def command_text(argv):
    return shlex.join(["python", *argv])


def without_phase(argv):
    """``argv`` less its ``--phase``: a model timed by ``--phase latency`` after ``--phase
    prepare`` has exactly the results of the one command that runs both (every step is keyed
    by its arguments), and that command is the one to record."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--phase":
            skip = True
        elif not a.startswith("--phase="):
            out.append(a)
    return out


# the commands running now: a benchmark stopped by SIGTERM (kill, timeout) stops them too, or a
# prune.py left behind would skew the next run's timings and write into a step folder it restarts
RUNNING = set()


def stop_commands_on_sigterm():
    def stop(signum, frame):
        for proc in list(RUNNING):
            proc.kill()
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stop)


def run_command(argv, log_path, threads, timeout=None, append=False):
    """Run ``python argv`` from the repository root, teeing its output to ``log_path`` (after
    what it holds with ``append``: a resumed step's log keeps the killed run's part).

    Returns (exit code, the last ``error:`` line or None, seconds); exit code None: timed out.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    logger.info(f"$ {command_text(argv)}")
    start = time.time()
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    RUNNING.add(proc)
    timed_out = threading.Event()

    def stop():
        timed_out.set()
        proc.kill()   # the child we started, by its own handle
    timer = threading.Timer(timeout, stop) if timeout else None
    if timer:
        timer.start()
    error = None
    try:
        # line-buffered: a killed run's log keeps every line it printed (attempts_seconds)
        with open(log_path, "a" if append else "w", encoding="utf-8", buffering=1) as log:
            if append:   # where this run's part starts (attempts_seconds)
                log.write(f"{RUN_STARTED} {time.strftime(LOG_TIME)}\n")
            for line in proc.stdout:
                log.write(line)
                sys.stdout.write("    " + line)
                if line.startswith("error:"):
                    error = line[len("error:"):].strip()
        code = proc.wait()
    finally:
        if timer:
            timer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        RUNNING.discard(proc)
    return (None if timed_out.is_set() else code), error, round(time.time() - start, 1)


RUN_STARTED, LOG_TIME = "=== run started", "%Y-%m-%d %H:%M:%S"
LOGGED_TIME = re.compile(r"\s*(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) ")


def attempts_seconds(log_path):
    """The seconds of every run a resumed step's log holds (each from its start line to its
    last timestamped line, a killed run's included), summed: the step's time as if it had
    run once, less the moments between a kill and the restart."""
    def moment(stamp):
        return time.mktime(time.strptime(stamp, LOG_TIME))
    total, start, last = 0.0, None, None
    with open(log_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(RUN_STARTED):
                if start is not None:
                    total += last - start
                start = last = moment(line[len(RUN_STARTED):].strip())
                continue
            logged = LOGGED_TIME.match(line)
            if logged and start is not None:   # lines before the first run's mark: no run
                last = moment(logged[1])
    return round(total + (last - start if start is not None else 0.0), 1)


def prune_cli_options():
    """{option: choices} of slim/prune/prune.py as it is now (flags come and go with versions)."""
    spec = importlib.util.spec_from_file_location("prune_cli", os.path.join(ROOT, "slim", "prune",
                                                                             "prune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return {opt: action.choices for action in module.build_parser()._actions
            for opt in action.option_strings}


def has_latency_target():
    choices = prune_cli_options().get("--target")
    return bool(choices) and "latency" in choices


# the latency-target row kinds and the --latency_allocation each runs
LATENCY_ALLOCATIONS = {"latency": "loss_per_ms", "latency_equal_loss": "equal_loss"}
BUDGET = "latency_budget"   # the row kind of --max_miou_drop (its "ratio" is the budget)


# ---------------------------------------------------------------- in-process helpers


def build_config(cfg_path, args, iters=None, as_commands_see_it=False):
    """The model's config on --dataset_root: for reading here (the root made absolute, so the
    current folder does not matter) or as the train.py / prune.py commands, run from the
    repository root, read it (the step keys hash that one)."""
    from paddleseg.cvlibs import Config
    root = args.dataset_root if as_commands_see_it else os.path.normpath(
        os.path.join(ROOT, args.dataset_root))
    return Config(os.path.join(ROOT, cfg_path), iters=iters, opts=data_opts(root))


def data_opts(root):
    return [f"train_dataset.dataset_root={root}", f"val_dataset.dataset_root={root}"]


def evaluate_checkpoint(cfg, path):
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.core.val import evaluate_metrics
    model = build_and_load(cfg, path)
    model.eval()
    return float(evaluate_metrics(model, cfg.val_dataset, print_detail=False)["mIoU"])


def flops_params(cfg, path, shape):
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.slim import count_flops_params
    flops, params = count_flops_params(build_and_load(cfg, path), list(shape))
    return int(flops), int(params)


def data_fingerprint(root):
    """List files' bytes and the size of every file they name: what the steps read."""
    import hashlib
    h = hashlib.sha256()
    for name in ("train.txt", "val.txt"):
        path = os.path.join(ROOT, root, name)
        if not os.path.isfile(path):
            raise BenchmarkError(f"{path} not found: is --dataset_root {root} the CamVid folder "
                                 "(see ../shared/data/camvid/SOURCE.txt)?")
        with open(path, "rb") as f:
            text = f.read()
        h.update(text)
        for entry in text.decode("utf-8").split():
            full = os.path.join(ROOT, root, entry)
            h.update(f"{entry}:{os.path.getsize(full) if os.path.isfile(full) else -1}".encode())
    return h.hexdigest()[:16]


def majority_class_miou(cfg):
    """mIoU of predicting the training set's most frequent class everywhere on the val split:
    the floor a model that learned nothing reaches."""
    import numpy as np
    from paddleseg.core import metrics as M
    n = cfg.num_classes

    def counts(dataset):
        total = np.zeros(n, np.int64)
        for _, label_path in dataset.file_list:
            label = dataset.read_label(label_path)
            total += np.bincount(label[label < n].ravel(), minlength=n)[:n]
        return total
    majority = int(np.argmax(counts(cfg.train_dataset)))
    label_area = counts(cfg.val_dataset)
    intersect, pred_area = np.zeros(n, np.int64), np.zeros(n, np.int64)
    intersect[majority], pred_area[majority] = label_area[majority], label_area.sum()
    return float(M.summarize(intersect, pred_area, label_area)["mIoU"])


def software():
    import numpy
    import paddle
    try:
        from importlib.metadata import version
        slim = version("paddleslim")
    except Exception:  # not installed: the PaddleSlim rows say so themselves
        slim = None
    return {"python": platform.python_version(), "paddle": paddle.__version__,
            "paddleslim": slim, "numpy": numpy.__version__}


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores visible"


# ---------------------------------------------------------------- scripts that read the steps
# (benchmarks/studies/latency_profiles.py and retrain_seeds.py: they write docs from the
# checkpoints and reports this benchmark left under its --work_dir)


def step_file(work_dir, model, kind, key, *parts):
    """A file of a step this benchmark ran under ``work_dir``; UserError where it is not there."""
    path = os.path.join(bench_cache.Steps(os.path.join(work_dir, model)).folder(kind, key),
                        *parts)
    if not os.path.isfile(path):
        raise UserError(f"{path} is missing: --work_dir must be the folder the benchmark ran in, "
                        "on this machine")
    return path


def generated_by(script, argv):
    """The sentence a generated doc opens with: its command (``script``: the path under
    benchmarks/), date and machine."""
    return (f"Generated by `{shlex.join(['python', 'benchmarks/' + script, *argv])}` on "
            f"{datetime.date.today().isoformat()} ({machine()}); do not edit.")


# ---------------------------------------------------------------- steps


class ModelRun:
    """The steps of one model (see the module docstring), cached under work_dir/<model>.

    Each ``*_material`` method lists what its step's result depends on (the step's key);
    ``train_record`` must be set (by :meth:`train`) before the later steps are described.
    """

    def __init__(self, name, args):
        self.name, self.args = name, args
        self.cfg_path = MODELS[name]
        self.steps = bench_cache.Steps(os.path.join(ROOT, args.work_dir, name),
                                       compute=args.phase != "latency")
        self.cfg = build_config(self.cfg_path, args, iters=args.train_iters)
        self.train_iters = self.cfg.iters
        self.retraining_iters = (args.retraining_iters if args.retraining_iters is not None
                                 else max(1, self.train_iters // 4))
        self.train_record = None
        self.base_material = {
            "model": name, "data": data_fingerprint(args.dataset_root),
            "config": build_config(self.cfg_path, args, args.train_iters, True).dic,
            "seed": args.seed, "threads": args.train_threads}

    def material(self, kind, sources, **more):
        code = bench_cache.code_version(sources, extra=more.pop("libraries", None))
        return dict(self.base_material, step_version=STEP_VERSION[kind], code=code, **more)

    # -- what each step depends on

    def eval_every(self):
        return max(1, math.ceil(self.train_iters / self.args.eval_points))

    def train_material(self):
        return self.material("train", bench_cache.TRAIN_SOURCES, iters=self.train_iters,
                             eval_every=self.eval_every())

    def unpruned_material(self):
        return self.material("unpruned", bench_cache.TRAIN_SOURCES, train=self.train_record["key"],
                             input_shape=list(self.args.input_shape))

    def control_material(self):
        return self.material("control", bench_cache.TRAIN_SOURCES, train=self.train_record["key"],
                             retraining_iters=self.retraining_iters)

    def sensitivity_material(self):
        return self._analysis_material(bench_cache.ENGINE_SOURCES)

    def _analysis_material(self, sources):
        """What a native pruning row shares with its sensitivity analysis, over ``sources``."""
        a = self.args
        return self.material("prune", sources, train=self.train_record["key"],
                             criterion=a.criterion, sen_ratios=list(a.sen_ratios),
                             sen_eval_num=a.sen_eval_num)

    def latency_setup(self):
        """What a latency table depends on beyond the model: shape, threads, sample plans."""
        a = self.args
        return {"shape": list(a.input_shape), "threads": a.cpu_threads,
                "samples": a.latency_samples}

    def prune_material(self, target, ratio):
        latency = None if target == "flops" else dict(
            self.latency_setup(), allocation=LATENCY_ALLOCATIONS.get(target, "loss_per_ms"))
        recipe = self.row_recipe_flags()
        budget = ({"ceiling": self.args.budget_ceiling, "record": BUDGET_RECORD,
                   # only with another recipe: the config schedule's rows keep their keys
                   **({"recipe": recipe} if recipe else {})}
                  if target == BUDGET else None)
        return dict(self._analysis_material(bench_cache.PRUNE_SOURCES), target=target,
                    ratio=ratio, retraining_iters=self.retraining_iters,
                    channel_step=self.args.channel_step, latency=latency,
                    **({"budget": budget} if budget else {}))

    def row_recipe_flags(self):
        """prune.py's flags of --row_recipe (none for the config schedule)."""
        return bench_recipes.recipe_flags(self.args.row_recipe, self.retraining_iters)

    def paddleslim_material(self, ratio):
        a = self.args
        return self.material("paddleslim", bench_cache.PRUNE_SOURCES,
                             libraries={"paddleslim": software()["paddleslim"]},
                             train=self.train_record["key"], ratio=ratio,
                             retraining_iters=self.retraining_iters,
                             criterion=a.paddleslim_criterion, sen_eval_num=a.sen_eval_num,
                             timeout=a.paddleslim_timeout)

    # -- training, the unpruned model and the control

    def train(self):
        a = self.args

        def compute(folder):
            out = os.path.join(folder, "out")
            argv = ["train.py", "--config", self.cfg_path, "--iters", str(self.train_iters),
                    "--seed", str(a.seed), "--save_interval", str(self.eval_every()),
                    "--keep_checkpoint_max", str(a.eval_points + 1), "--log_iters", "10",
                    "--save_dir", rel(out), "--opts", *data_opts(a.dataset_root)]
            # a killed training continues at its last checkpoint: the same run (exact resume);
            # one killed after its last iteration (in the evaluations below) is not run again
            last = last_checkpoint(out)
            done = checkpoint_iteration(last) if last else 0
            log = os.path.join(folder, "train.log")
            if done < self.train_iters:
                code, error, seconds = run_command(
                    argv + (["--resume_model", rel(last)] if last else []), log,
                    a.train_threads, append=True)
                if code != 0:
                    raise BenchmarkError(f"training {self.name} failed: "
                                         f"{error or f'exit {code}'}")
            if last:
                seconds = attempts_seconds(log)
            curve = []
            for it in checkpoint_iters(out):
                ckpt = os.path.join(out, f"iter_{it}")
                curve.append([it, round(evaluate_checkpoint(self.cfg, ckpt), 6)])
                logger.info(f"{self.name}: val mIoU {curve[-1][1]:.4f} at iteration {it}")
            for it, _ in curve[:-1]:   # only the last one is used further (removed once the
                shutil.rmtree(os.path.join(out, f"iter_{it}"))   # curve is whole: a resume's)
            result = {"checkpoint": rel(os.path.join(out, f"iter_{self.train_iters}",
                                                     "model.pdparams")),
                      "curve": curve, "seconds": seconds,
                      "seconds_per_iter": seconds_per_iter(log, seconds, self.train_iters)}
            if last:
                result["resumed_from_iter"] = done
            return result, [command_text(argv)]
        self.train_record = self.steps.run("train", self.train_material(), compute,
                                           resumable=True)
        return self.train_record

    @property
    def checkpoint(self):
        return self.train_record["result"]["checkpoint"]

    def unpruned(self):
        def compute(folder):
            from paddleseg.core.export import export_model
            from paddleseg.core.model_loader import build_and_load
            model = build_and_load(self.cfg, os.path.join(ROOT, self.checkpoint))
            flops, params = flops_params(self.cfg, os.path.join(ROOT, self.checkpoint),
                                         self.args.input_shape)
            export = os.path.join(folder, "export")
            export_model(model, export, val_transforms_config=self.cfg.val_dataset_config.get(
                "transforms"), model_type=type(model).__name__, extra_deploy_info={"pruned": False})
            return {"export": rel(export), "flops": flops, "params": params}, []
        return self.steps.run("unpruned", self.unpruned_material(), compute)

    def control(self):
        a, iters = self.args, self.retraining_iters

        def compute(folder):
            out = os.path.join(folder, "out")
            argv = ["train.py", "--config", self.cfg_path, "--model_path", self.checkpoint,
                    "--iters", str(iters), "--seed", str(a.seed), "--save_interval", str(iters),
                    "--keep_checkpoint_max", "1", "--log_iters", "10", "--save_dir", rel(out),
                    "--opts", *data_opts(a.dataset_root)]
            code, error, seconds = run_command(argv, os.path.join(folder, "control.log"),
                                               a.train_threads)
            if code != 0:
                raise BenchmarkError(f"the control run of {self.name} failed: "
                                     f"{error or f'exit {code}'}")
            ckpt = os.path.join(out, f"iter_{iters}")
            return {"miou": round(evaluate_checkpoint(self.cfg, ckpt), 6), "seconds": seconds}, \
                [command_text(argv)]
        return self.steps.run("control", self.control_material(), compute)

    # -- pruning rows

    def sensitivity_file(self):
        """Shared by the native rows of one setup (every ratio and target): one analysis."""
        key = bench_cache.digest(self.sensitivity_material())
        return os.path.join(self.steps.root, f"sensitivity-{key[:12]}.json")

    def latency_table_file(self):
        """Shared by the latency-target rows of one setup: measured once."""
        # shared by both allocations: the table does not depend on it
        key = bench_cache.digest(dict(self.prune_material("latency", None),
                                      latency=self.latency_setup()))
        return os.path.join(self.steps.root, f"latency_table-{key[:12]}.json")

    def prune(self, target, ratio):
        """A row of this project's engine: ``target`` flops, latency, latency_equal_loss (the
        latency target with the FLOPs target's allocation) or latency_budget (``ratio`` is then
        the --max_miou_drop budget, searched up to --budget_ceiling)."""
        a = self.args
        extra = ([] if target == "flops" else
                 ["--target", "latency", "--latency_shape", *map(str, a.input_shape),
                  "--cpu_threads", str(a.cpu_threads), "--latency_samples",
                  str(a.latency_samples), "--latency_table", rel(self.latency_table_file()),
                  "--latency_allocation", LATENCY_ALLOCATIONS.get(target, "loss_per_ms")])
        cut = ratio
        if target == BUDGET:   # searched and retrained with the row recipe
            cut = a.budget_ceiling
            extra += ["--max_miou_drop", str(ratio), *self.row_recipe_flags()]
        argv = ["slim/prune/prune.py", "--config", self.cfg_path, "--model_path", self.checkpoint,
                "--pruning_ratio", str(cut), "--retraining_iters", str(self.retraining_iters),
                "--criterion", a.criterion, "--sen_file", rel(self.sensitivity_file()),
                "--sen_eval_num", str(a.sen_eval_num), "--sen_ratios", *map(str, a.sen_ratios),
                "--channel_step", str(a.channel_step), "--seed", str(a.seed), *extra]
        return self._pruning_step("prune", self.prune_material(target, ratio), argv, None,
                                  resumable=True)

    def paddleslim(self, ratio):
        a = self.args
        argv = ["slim/prune/prune.py", "--method", "paddleslim", "--config", self.cfg_path,
                "--model_path", self.checkpoint, "--pruning_ratio", str(ratio),
                "--retraining_iters", str(self.retraining_iters),
                "--criterion", a.paddleslim_criterion, "--sen_eval_num", str(a.sen_eval_num),
                "--seed", str(a.seed)]
        return self._pruning_step("paddleslim", self.paddleslim_material(ratio), argv,
                                  a.paddleslim_timeout)

    def _pruning_step(self, kind, material, argv, timeout, resumable=False):
        def compute(folder):
            out = os.path.join(folder, "out")
            full = [*argv, "--save_dir", rel(out), "--opts", *data_opts(self.args.dataset_root)]
            log = os.path.join(folder, f"{kind}.log")
            # prune.py resumes a killed run of the same command from what it left in out/
            resumed = resumable and os.path.isfile(log)
            code, error, seconds = run_command(full, log, self.args.train_threads, timeout,
                                               append=resumable)
            if resumed:
                seconds = attempts_seconds(log)
            if code is None:
                return {"error": f"stopped after {timeout} s (--paddleslim_timeout); "
                                 f"{last_progress(log)}", "seconds": seconds}, [command_text(full)]
            if code == 2 and error:   # a one-line refusal: a result (the same every time)
                return {"error": error, "seconds": seconds}, [command_text(full)]
            if code != 0:
                raise BenchmarkError(f"{command_text(full)} failed: {error or f'exit {code}'}")
            report = bench_report.read_json(os.path.join(out, "report.json"))
            return {"report": slim_report(report),
                    "model": rel(os.path.join(out, "model.pdparams")),
                    "export": rel(os.path.join(out, "export")), "seconds": seconds}, \
                [command_text(full)]
        return self.steps.run(kind, material, compute, resumable=resumable)

    def count(self, record):
        """GFLOPs and params of a pruned row's model at the latency input shape (its own
        step: another --input_shape recounts without pruning again); None for a failed row."""
        if record["result"].get("error"):
            return None

        def compute(folder):
            flops, params = flops_params(self.cfg, os.path.join(ROOT, record["result"]["model"]),
                                         self.args.input_shape)
            return {"flops": flops, "params": params}, []
        return self.steps.run("count", self.count_material(record), compute)["result"]

    # -- accuracy recovery (--phase recovery)

    def recovery(self, row, recipe, seed, control=False):
        """The latency ``row``'s pruned model retrained with ``recipe`` and ``seed`` (its
        control with ``control``: the unpruned model fine-tuned with the recipe's schedule)."""
        a = self.args
        material = self.recovery_material(row, recipe, seed, control)
        flags, threads = material["flags"], material["threads"]

        def compute(folder):
            out = os.path.join(folder, "result.json")
            argv = ["benchmarks/bench_recovery.py", "--report",
                    rel(os.path.join(ROOT, os.path.dirname(row["result"]["model"]),
                                     "report.json")),
                    "--seed", str(seed), "--out", rel(out), "--save_dir",
                    rel(os.path.join(folder, "out")), "--dataset_root", a.dataset_root,
                    *(["--control"] if control else []), "--", *flags]
            code, error, seconds = run_command(argv, os.path.join(folder, "recovery.log"),
                                               threads, append=True)
            if code != 0:
                raise BenchmarkError(f"{command_text(argv)} failed: {error or f'exit {code}'}")
            shutil.rmtree(os.path.join(folder, "out"), ignore_errors=True)
            return bench_report.read_json(out), [command_text(argv)]
        # a unit killed in its retraining (an ended session) continues from its checkpoints
        return self.steps.run("recovery", material, compute, resumable=True)["result"]

    def recovery_material(self, row, recipe, seed, control=False):
        flags = bench_recipes.recipe_flags(recipe, self.retraining_iters)
        if control:
            flags = bench_recovery.control_flags(flags)
        threads = self.args.recovery_threads or self.args.train_threads
        return dict(self.material("recovery", RECOVERY_SOURCES, train=self.train_record["key"],
                                  retraining_iters=self.retraining_iters, flags=flags, seed=seed,
                                  control=control, row=None if control else row["key"]),
                    threads=threads)

    def count_material(self, record):
        return self.material("count", bench_cache.TRAIN_SOURCES, pruned=record["key"],
                             input_shape=list(self.args.input_shape))


def slim_report(report):
    """What the table needs from a prune.py report.json."""
    keep = ("model_name", "pruning_ratio", "target", "criterion", "flops_before", "flops_after",
            "flops_reduction", "params_before", "params_after", "miou_baseline", "miou_pruned",
            "miou_retrained", "retraining_iters", "input_shape", "seconds", "engine",
            "target_reachable", "target_lowered_to", "latency")
    out = {k: report[k] for k in keep if k in report}
    if "paddleslim" in report:
        out["paddleslim"] = {k: v for k, v in report["paddleslim"].items() if k != "layer_ratios"}
    if report.get("budget"):   # --max_miou_drop (else null): each step without its plan
        out["budget"] = dict(report["budget"], steps=[
            {k: v for k, v in step.items() if k != "plan"} for step in report["budget"]["steps"]])
    if "coverage" in report:
        out["coverage"] = {k: report["coverage"][k] for k in ("convs", "prunable_convs",
                                                              "flops_coverage")
                           if k in report["coverage"]}
    return out


def checkpoint_iters(folder):
    its = [int(m.group(1)) for m in (re.fullmatch(r"iter_(\d+)", d) for d in os.listdir(folder))
           if m]
    return sorted(its)


def seconds_per_iter(log_path, seconds, iters):
    """Mean ``batch_cost`` of train.py's log lines after the first (warm-up); else wall/iters."""
    with open(log_path, encoding="utf-8") as f:
        costs = [float(m.group(1)) for m in re.finditer(r"batch_cost ([0-9.]+)s", f.read())]
    costs = costs[1:] or costs
    return round(sum(costs) / len(costs), 3) if costs else round(seconds / iters, 3)


def last_progress(log_path):
    """The log's last line of our own progress (``[INFO]``), else its last line: a library's
    warnings (PaddleSlim lists hundreds of variable names) say nothing about where it was."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        lines = [ln.strip() for ln in f if ln.strip()]
    ours = [ln for ln in lines if " [INFO] " in ln]
    return f"last log line: {(ours or lines)[-1][-200:]}" if lines else "no output"


# ---------------------------------------------------------------- one model's entry


def prepare_model(name, args):
    """Run (or reuse) every step of ``name``; returns (ModelRun, [(row, step record whose
    export is timed, or None)])."""
    run = ModelRun(name, args)
    logger.info(f"==== {name}: {run.cfg_path}, {run.train_iters} iterations, "
                f"retraining {run.retraining_iters}")
    run.train()
    unpruned, control = run.unpruned(), run.control()
    variants = [(bench_report.base_row("unpruned", unpruned, run.train_record), unpruned)]
    variants.append((bench_report.base_row("control", unpruned, run.train_record, control), None))

    def pruned(kind, ratio, record):
        return bench_report.pruned_row(kind, ratio, record, run.count(record))
    for ratio in args.ratios:
        variants.append(pruned("flops", ratio, run.prune("flops", ratio)))
    latency_ok = has_latency_target()
    for kind, ratio in latency_rows(args):
        if latency_ok:
            variants.append(pruned(kind, ratio, run.prune(kind, ratio)))
        else:
            variants.append((bench_report.not_run_row(
                kind, ratio, "slim/prune/prune.py has no --target latency in this version"),
                None))
    if latency_ok:
        for drop in args.budget_drops:
            variants.append(pruned(BUDGET, drop, run.prune(BUDGET, drop)))
    for ratio in args.paddleslim_ratios:
        variants.append(pruned("paddleslim", ratio, run.paddleslim(ratio)))
    return run, variants


def latency_rows(args):
    """[(row kind, ratio)] of the latency target: per --latency_ratios its own allocation's
    row, then the FLOPs-target allocation's where --equal_loss_ratios has the ratio."""
    return [(kind, ratio) for ratio in args.latency_ratios for kind in LATENCY_ALLOCATIONS
            if kind == "latency" or ratio in args.equal_loss_ratios]


def recovery_entry(name, args, argv):
    """Every recipe x seed on the first latency ratio's row, and their controls."""
    run = ModelRun(name, args)
    ratio = args.latency_ratios[0]
    logger.info(f"==== {name}: accuracy recovery at latency target {ratio}: recipes "
                f"{', '.join(args.recipes)}, seeds {args.seeds}, {run.retraining_iters} "
                "retraining iterations each")
    run.train()
    row = run.prune("latency", ratio)
    if row["result"].get("error"):
        raise BenchmarkError(f"{name}'s latency row failed: {row['result']['error']}")
    report = bench_report.read_json(os.path.join(ROOT, os.path.dirname(row["result"]["model"]),
                                                 "report.json"))
    flags_of = {recipe: bench_recipes.recipe_flags(recipe, run.retraining_iters)
                for recipe in args.recipes}
    control_of = {recipe: " ".join(bench_recovery.control_flags(flags_of[recipe]))
                  or "config schedule" for recipe in args.recipes}
    firsts = {key: recipe for recipe, key in reversed(list(control_of.items()))}
    # --frontier_seeds: the other pruned rows retrained with the row recipe and every seed
    frontier = frontier_records(run, args) if args.frontier_seeds else []
    records = {(kind, ratio): record for kind, ratio, record in frontier}
    # (recipe, seed, control?) or (row kind, ratio, seed); one control per schedule (its first
    # recipe's), then every recipe, then the frontier's rows: --recovery_jobs at once
    tasks = ([("recipe", recipe, seed, True) for recipe in args.recipes
              if firsts[control_of[recipe]] == recipe for seed in args.seeds]
             + [("recipe", recipe, seed, False) for recipe in args.recipes for seed in args.seeds]
             + [("row", kind, ratio, seed) for kind, ratio, _ in frontier for seed in args.seeds])

    def unit(task):
        if task[0] == "row":
            return run.recovery(records[task[1:3]], args.row_recipe, task[3])
        return run.recovery(row, *task[1:])
    with concurrent.futures.ThreadPoolExecutor(args.recovery_jobs) as pool:
        done = dict(zip(tasks, pool.map(unit, tasks)))
    recipes, controls = {}, {}
    for recipe in args.recipes:
        label, flags = bench_recipes.RECIPES[recipe][0], flags_of[recipe]
        controls.setdefault(control_of[recipe], {
            "flags": bench_recovery.control_flags(flags),
            "mious": [done[("recipe", firsts[control_of[recipe]], seed, True)]["miou"]
                      for seed in args.seeds]})
        units = [done[("recipe", recipe, seed, False)] for seed in args.seeds]
        recipes[recipe] = {"label": label, "flags": flags, "control": control_of[recipe],
                           "mious": [u["miou"] for u in units],
                           # a unit whose whole retraining a killed run made measured none
                           "seconds_per_iter": [u["seconds_per_iter"] for u in units
                                                if u["seconds_per_iter"] is not None]}
    latency = report.get("latency") or {}
    speedup = (f"{latency['measured_ms_before'] / latency['measured_ms_after']:.2f}x"
               if latency.get("measured_ms_after") else "not timed")
    return {"ratio": ratio, "row_label": bench_report.row_label("latency", ratio),
            "row_step_key": row["key"],
            "speedup": speedup, "retraining_iters": run.retraining_iters, "seeds": args.seeds,
            "unit_threads": args.recovery_threads or args.train_threads,
            "units_at_once": args.recovery_jobs,
            "row_recipe": args.row_recipe,
            "machine": machine(), "git": bench_cache.git_commit(),
            "date": datetime.date.today().isoformat(),
            "command": command_text(["benchmarks/prune_speedup.py", *argv]),
            "recipes": recipes, "controls": controls,
            "rows": [{"kind": kind, "ratio": ratio, "label": bench_report.row_label(kind, ratio),
                      "control": control_of[args.row_recipe],
                      "mious": [done[("row", kind, ratio, seed)]["miou"] for seed in args.seeds]}
                     for kind, ratio, _ in frontier]}


def frontier_records(run, args):
    """[(kind, ratio, prune step record)] of every pruned row of this project's engine beside
    the recovery's own: the FLOPs-target rows, the other latency ratios, the equal-loss
    allocation's rows and the budget rows (each from the main phase's cache), so that every
    mIoU change of the headline table is a seed mean; a row that failed there has no model to
    retrain and is left out. PaddleSlim's rows are its engine's, retrained once."""
    rows = ([("flops", r) for r in args.ratios]
            + [("latency", r) for r in args.latency_ratios[1:]]
            + [(kind, r) for kind, r in latency_rows(args) if kind != "latency"]
            + [(BUDGET, d) for d in args.budget_drops])
    out = []
    for kind, ratio in rows:
        record = run.prune(kind, ratio)
        if record["result"].get("error"):
            logger.info(f"{run.name}: {bench_report.row_label(kind, ratio)} failed, not retrained "
                        f"over seeds: {record['result']['error']}")
            continue
        out.append((kind, ratio, record))
    return out


def time_model(run, variants, args):
    """Interleaved latency of the model's exports; fills each row's latency and speedup."""
    from paddleseg.deploy.benchmark import interleaved_latency, latency_stats
    timed = [(row, rec) for row, rec in variants if rec is not None and row["status"] == "ok"
             and rec["result"].get("export")]
    logger.info(f"==== {run.name}: latency of {len(timed)} exports at {args.input_shape}, "
                f"{args.warmup} warm-up runs each, {args.repeats} rounds in random order")
    samples = interleaved_latency([os.path.join(ROOT, rec["result"]["export"]) for _, rec in timed],
                                  args.input_shape, args.warmup, args.repeats, args.cpu_threads,
                                  shuffle_seed=args.seed)
    for (row, _), times in zip(timed, samples):
        stats = latency_stats(times)
        row["latency"] = {k: round(v, 3) for k, v in stats.items()}
        row["latency"]["rounds"] = len(times)
    return [row for row, _ in variants]


def model_entry(run, rows, args, argv):
    train = run.train_record["result"]
    cfg = run.cfg
    resize = next((t.get("target_size") for t in cfg.dic["train_dataset"].get("transforms", [])
                   if t.get("type") == "Resize"), None)
    return {
        "command": command_text(["benchmarks/prune_speedup.py", *without_phase(argv)]),
        "args": {k: v for k, v in sorted(vars(args).items()) if k not in ("debug",)},
        "git": bench_cache.git_commit(), "machine": machine(), "software": software(),
        "config": run.cfg_path,
        "data": {"root": args.dataset_root, "train_images": len(cfg.train_dataset),
                 "val_images": len(cfg.val_dataset), "num_classes": cfg.num_classes,
                 "majority_class_miou": round(majority_class_miou(cfg), 6)},
        "training": {"iters": run.train_iters, "batch_size": cfg.batch_size,
                     "resolution": resize,
                     "learning_rate": cfg.dic["lr_scheduler"]["learning_rate"],
                     "threads": args.train_threads, "seconds": train["seconds"],
                     "seconds_per_iter": train["seconds_per_iter"], "curve": train["curve"],
                     "step_key": run.train_record["key"],
                     "commands": run.train_record["commands"]},
        "retraining_iters": run.retraining_iters,
        "latency_setup": {"input_shape": list(args.input_shape), "threads": args.cpu_threads,
                          "warmup": args.warmup, "rounds": args.repeats,
                          "order": "random within each round", "seed": args.seed,
                          "backend": "Paddle Inference CPU, oneDNN"},
        "rows": bench_report.finish_rows(rows),
    }


def main(argv):
    args = parse_args(argv)
    out_dir = os.path.join(ROOT, args.out_dir)
    if args.phase == "report":
        if args.merge_from:
            bench_report.merge_from(out_dir, os.path.join(ROOT, args.merge_from), args.models,
                                    args.merge_parts)
        bench_report.write_outputs(out_dir, [os.path.join(ROOT, d) for d in args.docs],
                                   args.gpu_results)
        return 0
    bench_report.check_results_file(os.path.join(out_dir, bench_report.RESULTS))
    if args.phase == "recovery":
        for name in args.models:
            bench_report.merge_recovery(out_dir, name, recovery_entry(name, args, argv))
            bench_report.write_outputs(out_dir, [os.path.join(ROOT, d) for d in args.docs])
        return 0
    for name in args.models:
        run, variants = prepare_model(name, args)
        if args.phase == "prepare":
            continue
        rows = time_model(run, variants, args)
        bench_report.merge_model(out_dir, name, model_entry(run, rows, args, argv))
        bench_report.write_outputs(out_dir, [os.path.join(ROOT, d) for d in args.docs])
        logger.info(f"==== {name}: merged into {os.path.join(args.out_dir, bench_report.RESULTS)}")
    return 0


if __name__ == "__main__":
    stop_commands_on_sigterm()
    cli.run(main)
