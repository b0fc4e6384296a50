"""The pruning tutorial as one function: baseline -> sensitivity -> allocate -> prune ->
retrain -> evaluate -> save. ``slim/prune/prune.py`` is its command line."""
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field


from ..core.model_loader import build_and_load
from ..core.train import set_seed, train
from ..core.val import evaluate_metrics
from ..utils import logger
from ..utils.errors import UserError
from ..utils.fileio import atomic_path, remove_stale_temporaries, write_json, write_text
from ..utils.progress import format_seconds
from . import sensitivity as sens_mod
from .allocate import TargetUnreachable, allocate_ratios
from .flops import FlopsModel, count_flops_params
from .report import plot_sensitivity, render_markdown
from .storage import save_pruned
from . import build_groups, prune_model

DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass
class PruneOptions:
    config: object                     # a paddleseg.cvlibs.Config
    pruning_ratio: float
    retraining_iters: int
    model_path: str = None
    save_dir: str = "output"
    criterion: str = "fpgm"
    sen_file: str = None
    sen_eval_num: int = None
    sen_ratios: tuple = DEFAULT_RATIOS
    num_workers: int = 0
    channel_step: int = 8
    seed: int = None
    export: bool = True
    timings: dict = field(default_factory=dict)


def check_options(o):
    if not 0.0 < o.pruning_ratio < 1.0:
        raise UserError(f"--pruning_ratio must lie in (0, 1), got {o.pruning_ratio}")
    if o.retraining_iters < 0:
        raise UserError(f"--retraining_iters must be >= 0, got {o.retraining_iters}")
    if o.criterion not in ("l1", "fpgm"):
        raise UserError(f"--criterion must be l1 or fpgm, got {o.criterion}")
    if not o.sen_ratios or not all(0.0 < r < 1.0 for r in o.sen_ratios):
        raise UserError(f"--sen_ratios must all lie in (0, 1), got {list(o.sen_ratios)}")
    if o.channel_step < 1:
        raise UserError(f"--channel_step must be >= 1, got {o.channel_step}")
    if o.sen_eval_num is not None and o.sen_eval_num < 1:
        raise UserError(f"--sen_eval_num must be >= 1, got {o.sen_eval_num}")
    if o.model_path and not os.path.exists(o.model_path):
        raise UserError(f"--model_path not found: {o.model_path}")


def config_fingerprint(cfg, model_path, eval_num):
    """What makes sensitivities comparable: model and val-set config, weights, eval size."""
    keyed = {k: cfg.dic.get(k) for k in ("model", "val_dataset")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    weights = ""
    if model_path:
        path = model_path if os.path.isfile(model_path) else os.path.join(model_path, "model.pdparams")
        with open(path, "rb") as f:
            weights = hashlib.sha256(f.read()).hexdigest()[:16]
    return f"config {digest}; weights {weights or 'none'}; eval images {eval_num}"


class Phase:
    """Times a named phase into ``timings`` and logs its start and end."""

    def __init__(self, timings, name):
        self.timings, self.name = timings, name

    def __enter__(self):
        logger.info(f"== {self.name}")
        self.start = time.time()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.time() - self.start, 2)
        if exc[0] is None:
            logger.info(f"== {self.name} done in {format_seconds(self.timings[self.name])}")


def sensitivity_progress():
    state = {"start": time.time(), "done": 0}

    def report(k, n, group_id, ratio):
        state["done"] += 1
        elapsed = time.time() - state["start"]
        eta = elapsed / max(k - 1, 1) * (n - k + 1) if k > 1 else float("nan")
        logger.info(f"sensitivity: layer {k} of {n} ({group_id}) ratio {ratio:.2f}, "
                    f"ETA {format_seconds(eta) if k > 1 else '?'}")
    return report


def sample_input_shape(dataset):
    return [1] + list(dataset[0]["img"].shape)


def miou(model, dataset, max_images=None):
    return evaluate_metrics(model, dataset, max_images, print_detail=False)["mIoU"]


def allocate(analysis, sens, flops_model, target, channel_step):
    """Per-group ratios for ``target``; an unreachable target falls back to the largest
    reachable reduction and says so."""
    try:
        return allocate_ratios(analysis.groups, sens, flops_model, target,
                               channel_step=channel_step), None
    except TargetUnreachable as e:
        logger.warning(f"{e}; pruning at the largest reachable reduction {e.max_reduction:.3f} instead")
        reachable = e.max_reduction - 1e-9
        return allocate_ratios(analysis.groups, sens, flops_model, reachable,
                               channel_step=channel_step), e.max_reduction


def retrain(o, cfg, model, work_dir):
    """Fine-tune with the config's optimizer, loss and schedule; the CLI has already put
    --retraining_iters, --batch_size and --learning_rate into the config."""
    if o.retraining_iters == 0:
        return
    train(model, cfg.train_dataset, optimizer=cfg.build_optimizer(model), save_dir=work_dir,
          iters=o.retraining_iters, batch_size=cfg.batch_size, save_interval=o.retraining_iters,
          log_iters=max(1, min(10, o.retraining_iters)), num_workers=o.num_workers,
          losses=cfg.loss, keep_checkpoint_max=1, seed=o.seed)


def run(o):
    """Run the whole pipeline; returns the report dict (also written to save_dir)."""
    check_options(o)
    set_seed(o.seed)
    cfg = o.config
    t = o.timings
    created = not os.path.isdir(o.save_dir)
    os.makedirs(o.save_dir, exist_ok=True)
    stage = os.path.join(o.save_dir, f".staging.{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
        report = _run(o, cfg, t, stage)
        publish(stage, o.save_dir)
        remove_stale_temporaries(o.save_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not os.listdir(o.save_dir):
            os.rmdir(o.save_dir)  # a failed run leaves no save_dir it made (sen.pickle stays)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return report


def _run(o, cfg, t, stage):
    with Phase(t, "load and baseline evaluation"):
        model = build_and_load(cfg, o.model_path)
        val_dataset = cfg.val_dataset
        if val_dataset is None:
            raise UserError(f"{cfg.path} has no val_dataset; pruning needs one to measure mIoU")
        model.eval()
        base_miou = miou(model, val_dataset)
        logger.info(f"baseline mIoU {base_miou:.4f}")
    shape = sample_input_shape(val_dataset)
    with Phase(t, "dependency analysis"):
        analysis = build_groups(model, shape)
        cov = analysis.coverage
        logger.info(f"{len(analysis.groups)} prunable groups; coverage: {cov['prunable_convs']} of "
                    f"{cov['convs']} convs prunable, {cov['flops_coverage']:.1%} of conv FLOPs")
    flops0, params0 = count_flops_params(model, shape)
    eval_num = o.sen_eval_num or len(val_dataset)
    sen_file = o.sen_file or os.path.join(o.save_dir, "sen.pickle")
    with Phase(t, "sensitivity analysis"):
        sens = sens_mod.analyze(model, analysis.groups, lambda: miou(model, val_dataset, eval_num),
                                o.sen_ratios, sen_file, o.criterion, sensitivity_progress(),
                                extra=config_fingerprint(cfg, o.model_path, eval_num))
    with Phase(t, "pruning"):
        flops_model = FlopsModel(analysis)
        alloc, reachable = allocate(analysis, sens, flops_model, o.pruning_ratio, o.channel_step)
        prune_model(model, analysis, alloc.plan, o.criterion)
        flops1, params1 = count_flops_params(model, shape)
        pruned_miou = miou(model, val_dataset)
        logger.info(f"FLOPs {flops0 / 1e9:.3f}G -> {flops1 / 1e9:.3f}G ({1 - flops1 / flops0:.1%} fewer), "
                    f"params {params0 / 1e6:.3f}M -> {params1 / 1e6:.3f}M, mIoU right after pruning {pruned_miou:.4f}")
    with Phase(t, "retraining"):
        retrain(o, cfg, model, os.path.join(stage, "retrain"))
        shutil.rmtree(os.path.join(stage, "retrain"), ignore_errors=True)
    with Phase(t, "final evaluation"):
        final = evaluate_metrics(model, val_dataset, print_detail=True)
    report = {
        "model_name": type(model).__name__, "config": cfg.path, "model_path": o.model_path,
        "criterion": o.criterion, "pruning_ratio": o.pruning_ratio, "channel_step": o.channel_step,
        "target_reachable": reachable is None, "max_reachable_ratio": round(alloc.max_reduction, 4),
        "input_shape": shape,
        "flops_before": flops0, "flops_after": flops1, "flops_reduction": round(1 - flops1 / flops0, 4),
        "params_before": params0, "params_after": params1,
        "miou_baseline": base_miou, "miou_pruned": pruned_miou, "miou_retrained": final["mIoU"],
        "retraining_iters": o.retraining_iters, "sen_eval_num": eval_num,
        "sen_ratios": list(o.sen_ratios), "coverage": analysis.coverage,
        "layer_ratios": {gid: round(r, 4) for gid, r in sorted(alloc.plan.items())},
        "seconds": t,
    }
    save_pruned(model, stage, info={"criterion": o.criterion, "pruning_ratio": o.pruning_ratio,
                                    "layer_ratios": report["layer_ratios"]})
    if o.export:
        with Phase(t, "export"):
            from ..core.export import export_model
            export_model(model, os.path.join(stage, "export"),
                         val_transforms_config=cfg.val_dataset_config.get("transforms"),
                         model_type=report["model_name"], extra_deploy_info={"pruned": True})
    plot_sensitivity(sens, alloc.plan, os.path.join(stage, "sensitivity.png"))
    write_json(os.path.join(stage, "report.json"), report)
    write_text(os.path.join(stage, "report.md"), render_markdown(report))
    return report


def publish(stage, save_dir):
    """Move the finished outputs from the staging dir into save_dir, each by rename."""
    for name in sorted(os.listdir(stage)):
        if name == "retrain":
            continue
        with atomic_path(os.path.join(save_dir, name)) as tmp:
            os.rename(os.path.join(stage, name), tmp)
