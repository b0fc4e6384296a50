"""A pruning run's options: read from prune.py's parser into one frozen dataclass, checked before
any slow work, and the config built from them (nothing is filled in later)."""
import hashlib
import json
import os
from dataclasses import dataclass, fields

from ..utils.errors import UserError
from .criteria import CRITERIA
from .output.publish import DEFAULT_SEN_FILE, check_input_outside, check_save_dir

DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))
METHODS = ("native", "paddleslim")
DEFAULT_FINETUNE_LR_SCALE = 0.1   # --finetune_lr_scale when not given


@dataclass(frozen=True)
class PruneOptions:
    config: str                        # the configuration file
    pruning_ratio: float
    retraining_iters: int
    model_path: str = None
    save_dir: str = "output"
    method: str = "native"             # this project's engine, or PaddleSeg 2.6's (PaddleSlim)
    criterion: str = "fpgm"
    sen_file: str = None
    sen_eval_num: int = None
    sen_ratios: tuple = DEFAULT_RATIOS
    sen_evaluator: str = "auto"        # what evaluates sensitivity: predictor, dygraph or auto
    sen_bn_batches: int = 0            # training batches batch norms are recalibrated on per point
    target: str = "flops"              # what pruning_ratio cuts: see paddleseg.slim.targets
    allow_lower_target: bool = False   # prune at the most the grid reaches instead of failing
    min_coverage: float = 0.5          # least share of conv FLOPs that must be prunable
    channel_step: int = 8
    latency_shape: tuple = None        # N C H W of the latency target (None: the deploy shape)
    latency_table: str = None          # latency table file (None: cached under SEG_HOME)
    latency_allocation: str = None     # see paddleseg.slim.latency.allocate.ALLOCATORS
    latency_samples: int = 8           # sample plans a new latency table measures
    batch_size: int = None             # retraining batch size (None: the config's)
    learning_rate: float = None        # retraining learning rate (None: the config's)
    num_workers: int = 0
    seed: int = None
    distill: str = "none"              # distillation from the unpruned model: none, pixel, channel
    distill_weight: float = 1.0
    distill_temperature: float = 1.0
    retrain_schedule: str = "config"   # config: the config's lr_scheduler; finetune: warm-up+cosine
    finetune_lr_scale: float = None    # finetune peak = config rate times this (None: 0.1)
    prune_steps: int = 1               # prune-and-retrain steps that reach the plan
    reconstruct: int = 0               # training batches the least-squares refit uses (0: none)
    max_miou_drop: float = None        # accuracy budget in mIoU points (None: prune to the ratio)
    budget_step: float = 0.1           # the budget search's step of target cut
    budget_iters: int = None           # its retraining per step (None: retraining_iters)
    trial_allocations: tuple = None    # latency allocations retrained and compared (None: one)
    trial_iters: int = None            # its retraining per candidate (None: retraining_iters)
    device: str = "cpu"                # where everything runs, latency measured included
    cpu_threads: int = None            # threads per process (None: every core, shared by ranks)
    opts: tuple = None                 # --opts KEY=VALUE overrides of the config
    export: bool = True

    @classmethod
    def from_args(cls, args):
        """The options of a parsed prune.py command line (an ``argparse.Namespace``)."""
        given = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        method = given.get("method") or "native"
        given["criterion"] = given.get("criterion") or ("l1" if method == "paddleslim" else "fpgm")
        given["sen_ratios"] = tuple(given.get("sen_ratios") or DEFAULT_RATIOS)
        for name in ("latency_shape", "opts", "trial_allocations"):
            if given.get(name) is not None:
                given[name] = tuple(given[name])
        return cls(**given)

    @property
    def sensitivity_path(self):
        return self.sen_file or os.path.join(self.save_dir, DEFAULT_SEN_FILE)

    def build_config(self):
        """The config the run retrains with: --retraining_iters, --batch_size and
        --learning_rate put into it (its schedule spans the retraining, as a fresh training run
        of that length)."""
        from ..cvlibs import Config
        return Config(self.config, learning_rate=self.learning_rate, batch_size=self.batch_size,
                      iters=self.retraining_iters or None,
                      opts=list(self.opts) if self.opts else None)


def check_common(o):
    """The checks both methods (ours and PaddleSlim's) make before any slow work."""
    if not 0.0 < o.pruning_ratio < 1.0:
        raise UserError(f"--pruning_ratio must lie in (0, 1), got {o.pruning_ratio}")
    if o.retraining_iters < 0:
        raise UserError(f"--retraining_iters must be >= 0, got {o.retraining_iters}")
    if o.batch_size is not None and o.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {o.batch_size}")
    if o.learning_rate is not None and o.learning_rate <= 0:
        raise UserError(f"--learning_rate must be > 0, got {o.learning_rate}")
    check_recipe(o)
    if o.criterion not in CRITERIA:
        raise UserError(f"--criterion must be one of {', '.join(CRITERIA)}, got {o.criterion}")
    if o.sen_eval_num is not None and o.sen_eval_num < 1:
        raise UserError(f"--sen_eval_num must be >= 1, got {o.sen_eval_num}")
    if o.sen_bn_batches < 0:
        raise UserError(f"--sen_bn_batches must be >= 0 (0: no recalibration), got "
                        f"{o.sen_bn_batches}")
    if o.model_path and not os.path.exists(o.model_path):
        raise UserError(f"--model_path not found: {o.model_path}")
    check_input_outside(o.model_path, o.save_dir)
    check_save_dir(o.save_dir, o.sen_file)


def check_recipe(o):
    """The retraining recipe's flags: values in range, none given that would have no effect."""
    from .distill import DISTILL_KINDS
    from .retrain import SCHEDULES
    if o.distill not in DISTILL_KINDS:
        raise UserError(f"--distill must be one of {', '.join(DISTILL_KINDS)}, got {o.distill}")
    if o.retrain_schedule not in SCHEDULES:
        raise UserError(f"--retrain_schedule must be one of {', '.join(SCHEDULES)}, got "
                        f"{o.retrain_schedule}")
    if not o.distill_weight > 0:
        raise UserError(f"--distill_weight must be > 0, got {o.distill_weight}")
    if not o.distill_temperature > 0:
        raise UserError(f"--distill_temperature must be > 0, got {o.distill_temperature}")
    if o.distill == "none" and (o.distill_weight, o.distill_temperature) != (1.0, 1.0):
        raise UserError("--distill_weight and --distill_temperature need --distill pixel or "
                        "channel (without it there is no distillation)")
    if o.reconstruct < 0:
        raise UserError(f"--reconstruct must be >= 0 (training batches; 0: no reconstruction), "
                        f"got {o.reconstruct}")
    if o.reconstruct and o.prune_steps > 1:
        raise UserError("--reconstruct refits the convs after a one-step prune; it does not "
                        "combine with --prune_steps (give one of the two)")
    if o.prune_steps < 1:
        raise UserError(f"--prune_steps must be >= 1, got {o.prune_steps}")
    if o.prune_steps > 1 and o.retraining_iters < o.prune_steps:
        raise UserError(f"--prune_steps {o.prune_steps} retrains after every step: give at least "
                        f"as many --retraining_iters (got {o.retraining_iters})")
    check_budget(o)
    check_trial(o)
    if o.finetune_lr_scale is not None:
        if not o.finetune_lr_scale > 0:
            raise UserError(f"--finetune_lr_scale must be > 0, got {o.finetune_lr_scale}")
        if o.retrain_schedule != "finetune":
            raise UserError("--finetune_lr_scale needs --retrain_schedule finetune")
        if o.learning_rate is not None:
            raise UserError("--finetune_lr_scale scales the config's learning rate; with "
                            "--learning_rate the finetune schedule peaks at that rate instead: "
                            "give one of the two")


def check_budget(o):
    """--max_miou_drop and its flags: in range, and not given without it."""
    from ..utils.distributed import world_size
    if o.max_miou_drop is None:
        if (o.budget_step, o.budget_iters) != (0.1, None):
            raise UserError("--budget_step and --budget_iters need --max_miou_drop")
        return
    if not o.max_miou_drop > 0:
        raise UserError(f"--max_miou_drop must be > 0 (mIoU points), got {o.max_miou_drop}")
    if not 0 < o.budget_step < 1:
        raise UserError(f"--budget_step must lie in (0, 1), got {o.budget_step}")
    if o.budget_iters is not None and o.budget_iters < 1:
        raise UserError(f"--budget_iters must be >= 1, got {o.budget_iters}")
    if world_size() > 1:
        raise UserError("--max_miou_drop searches in one process; start it without "
                        "paddle.distributed.launch")


def check_trial(o):
    """--trial_allocations and --trial_iters: known names, at least two, and nothing they
    cannot combine with."""
    from ..utils.distributed import world_size
    from .latency.allocate import ALLOCATIONS
    if o.trial_allocations is None:
        if o.trial_iters is not None:
            raise UserError("--trial_iters needs --trial_allocations")
        return
    unknown = [name for name in o.trial_allocations if name not in ALLOCATIONS]
    if unknown:
        raise UserError(f"--trial_allocations: unknown allocation {unknown[0]!r}; choose among "
                        f"{', '.join(ALLOCATIONS)}")
    names = o.trial_allocations
    if len(names) < 2 or len(set(names)) < len(names):
        raise UserError("--trial_allocations needs two or more different allocations, got "
                        f"{' '.join(o.trial_allocations)}")
    if o.latency_allocation is not None:
        raise UserError("--latency_allocation names one allocation and --trial_allocations "
                        "several to choose from: give one of the two")
    if o.max_miou_drop is not None:
        raise UserError("--trial_allocations does not combine with --max_miou_drop (the budget "
                        "search allocates each of its cuts with --latency_allocation)")
    if o.trial_iters is not None and o.trial_iters < 1:
        raise UserError(f"--trial_iters must be >= 1, got {o.trial_iters}")
    if world_size() > 1:
        raise UserError("--trial_allocations runs in one process; start it without "
                        "paddle.distributed.launch")


def options_fingerprint(o, names, **facts):
    """A short hash of the options ``names`` of ``o`` and of ``facts``: what a resumable state
    file (--prune_steps, --max_miou_drop) must agree on with the run that resumes it."""
    keyed = dict(facts, **{name: getattr(o, name) for name in names})
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def setup_facts(cfg, model_path, eval_num):
    """The sensitivity fingerprint's ``setup``: what makes two analyses' metrics comparable
    (the model and val-set config, the weights, the number of eval images)."""
    keyed = {k: cfg.dic.get(k) for k in ("model", "val_dataset")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    weights = ""
    if model_path:
        path = model_path if os.path.isfile(model_path) else os.path.join(model_path, "model.pdparams")
        with open(path, "rb") as f:
            weights = hashlib.sha256(f.read()).hexdigest()[:16]
    return {"config": digest, "weights": weights or "none", "eval_images": eval_num}
