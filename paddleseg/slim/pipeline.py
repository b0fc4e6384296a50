"""The pruning tutorial as one function: baseline -> sensitivity -> allocate -> prune ->
retrain -> evaluate -> save. ``slim/prune/prune.py`` is its command line.

Outputs are built in a staging folder and switched in as one folder at the end (see
:mod:`paddleseg.slim.publish`); only the sensitivity file is written during the run, so that a
killed run resumes.

Under ``paddle.distributed.launch`` every rank measures its share of the sensitivity points
(:mod:`paddleseg.slim.sensitivity`), rank 0 allocates the ratios and sends the plan to the
others, all ranks retrain together (data parallel), and rank 0 alone evaluates, saves and
exports.
"""
import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field


from ..core.model_loader import build_and_load
from ..core.train import set_seed, train
from ..core.val import evaluate_metrics
from ..models.layers.layer_libs import plain_batchnorm
from ..utils import distributed, logger
from ..utils.errors import UserError
from ..utils.fileio import write_json, write_text
from ..utils.progress import format_seconds
from . import sensitivity as sens_mod
from . import predictor_eval
from .fast_eval import SensitivityEvaluator
from .latency import target as latency_mod
from .allocate import TargetUnreachable, allocate_ratios, reachable_reduction
from .flops import FlopsModel, count_flops_params
from .publish import DEFAULT_SEN_FILE, check_save_dir, staged_run
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
    sen_engine: str = "auto"           # what evaluates sensitivity: predictor, dygraph or auto
    num_workers: int = 0
    channel_step: int = 8
    seed: int = None
    allow_lower_target: bool = False   # prune at the most the grid reaches instead of failing
    min_coverage: float = 0.5          # least share of conv FLOPs that must be prunable
    target: str = "flops"              # what pruning_ratio cuts: "flops" or measured "latency"
    latency_shape: tuple = None        # N C H W of the latency target (None: the deploy shape)
    latency_table: str = None          # latency table file (None: cached under SEG_HOME)
    latency_samples: int = 8           # sample plans a new latency table measures
    latency_allocation: str = None     # loss_per_ms (None) or equal_loss (see latency.allocate)
    cpu_threads: int = None            # threads latency is measured with (None: every core)
    device: str = "cpu"                # where latency is measured
    export: bool = True
    timings: dict = field(default_factory=dict)


# what a pruned checkpoint (and its exports) records about how it was made
PRUNING_FACTS = ("criterion", "pruning_ratio", "target", "target_lowered_to", "channel_step",
                 "input_shape", "flops_before", "flops_after", "flops_reduction", "params_before",
                 "params_after", "layer_ratios")


def check_common_options(o):
    """The checks both engines (ours and PaddleSlim's) make before any slow work."""
    if not 0.0 < o.pruning_ratio < 1.0:
        raise UserError(f"--pruning_ratio must lie in (0, 1), got {o.pruning_ratio}")
    if o.retraining_iters < 0:
        raise UserError(f"--retraining_iters must be >= 0, got {o.retraining_iters}")
    if o.criterion not in ("l1", "fpgm"):
        raise UserError(f"--criterion must be l1 or fpgm, got {o.criterion}")
    if o.sen_eval_num is not None and o.sen_eval_num < 1:
        raise UserError(f"--sen_eval_num must be >= 1, got {o.sen_eval_num}")
    if o.model_path and not os.path.exists(o.model_path):
        raise UserError(f"--model_path not found: {o.model_path}")
    check_save_dir(o.save_dir, o.sen_file)


def check_options(o):
    check_common_options(o)
    if not o.sen_ratios or not all(0.0 < r < 1.0 for r in o.sen_ratios):
        raise UserError(f"--sen_ratios must all lie in (0, 1), got {list(o.sen_ratios)}")
    if o.channel_step < 1:
        raise UserError(f"--channel_step must be >= 1, got {o.channel_step}")
    if not 0.0 <= o.min_coverage <= 1.0:
        raise UserError(f"--min_coverage must lie in [0, 1], got {o.min_coverage}")
    latency_mod.check_options(o)
    sens_mod.load(sensitivity_file(o))  # a damaged, unsafe or foreign file fails here, not later


def sensitivity_file(o):
    return o.sen_file or os.path.join(o.save_dir, DEFAULT_SEN_FILE)


def retrain_and_evaluate(o, cfg, model, stage, val_dataset, t):
    """Retrain the pruned ``model`` (checkpoints in a scratch folder of the stage, removed
    after), then its final metrics on the whole val split; both phases timed into ``t``."""
    with Phase(t, "retraining"):
        retrain(o, cfg, model, os.path.join(stage, "retrain"))
        shutil.rmtree(os.path.join(stage, "retrain"), ignore_errors=True)
    with Phase(t, "final evaluation"):
        return evaluate_metrics(model, val_dataset, print_detail=True)


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


def aimed_reduction(o, analysis, flops_model):
    """(FLOPs reduction to allocate, the lowered target or None): --pruning_ratio when the grid
    can reach it; else TargetUnreachable, or with allow_lower_target the most it can reach.
    Decided before the sensitivity analysis, which cannot change the maximum."""
    most = reachable_reduction(analysis.groups, o.sen_ratios, flops_model, o.channel_step)
    if o.pruning_ratio <= most + 1e-12:
        return o.pruning_ratio, None
    if not o.allow_lower_target or most < 1e-6:
        remedy = "" if most < 1e-6 else f", or pass --allow_lower_target to prune {most:.3f}"
        raise TargetUnreachable(o.pruning_ratio, most, max(o.sen_ratios), remedy)
    logger.warning(f"target FLOPs reduction {o.pruning_ratio:.3f} is above the {most:.3f} the "
                   f"sensitivity grid can reach; lowered to {most:.3f} (--allow_lower_target)")
    return most - 1e-9, most


def retrain(o, cfg, model, work_dir):
    """Fine-tune with the config's optimizer, loss and schedule; the CLI has already put
    --retraining_iters, --batch_size and --learning_rate into the config."""
    if o.retraining_iters == 0:
        return
    train(model, cfg.train_dataset, optimizer=cfg.build_optimizer(model), save_dir=work_dir,
          iters=o.retraining_iters, batch_size=cfg.batch_size, save_interval=o.retraining_iters,
          log_iters=max(1, min(10, o.retraining_iters)), num_workers=o.num_workers,
          losses=cfg.loss, keep_checkpoint_max=1, seed=o.seed)


def measure_sensitivity(o, cfg, model, analysis, val_dataset):
    """(The sensitivity of every group, the engine that evaluated it, how many of the first
    groups it evaluated in predictors); in a job each rank evaluates its share of the points.
    Evaluated in a Paddle Inference predictor per point (see predictor_eval), in dygraph with
    decoded images kept and unchanged layer outputs reused (see fast_eval), or the first groups
    one way and the rest the other."""
    eval_num = o.sen_eval_num or len(val_dataset)
    sen_file = sensitivity_file(o)
    extra = config_fingerprint(cfg, o.model_path, eval_num)
    with sensitivity_evaluator(o, model, val_dataset, analysis.groups, eval_num,
                               sens_mod.recorded_extra(sen_file)) as (evaluate, engine, split):
        note = predictor_eval.engine_note(engine, split)
        if note:   # a predictor's metrics differ from dygraph's in the last digits
            extra += "; " + note
        sens = sens_mod.analyze(model, analysis.groups, evaluate, o.sen_ratios, sen_file,
                                o.criterion, sensitivity_progress(), extra=extra)
    return sens, engine, split


@contextlib.contextmanager
def sensitivity_evaluator(o, model, val_dataset, groups, eval_num, recorded_extra):
    """(evaluator, engine name, how many of the first groups it evaluates in predictors) for
    ``--sen_engine``: ``auto`` resumes a file with the engines it was begun with, else times
    both on pruned probes and evaluates each group with the one expected faster there."""
    engine = predictor_eval.resolve_engine(o.sen_engine, recorded_extra)
    if engine != "dygraph":
        with predictor_eval.PredictorEvaluator(model, val_dataset, groups, eval_num) as fast:
            problem = fast.prepare()
            if problem:
                logger.warning(f"sensitivity: {problem}; evaluating in dygraph")
            elif engine == "predictor":
                yield fast, "predictor", len(groups)
                return
            else:
                with SensitivityEvaluator(model, val_dataset, eval_num) as reuse:
                    if engine == "mixed":   # a file begun with both: the same split
                        split = predictor_eval.recorded_split(recorded_extra)
                        engine = predictor_eval.engine_for_split(split, len(groups))
                    else:
                        engine, split, seconds = fast.choose_engines(reuse)
                        how = describe_engines(engine, split, len(groups))
                        logger.info(f"sensitivity: evaluating {how} "
                                    f"(measured per evaluation on pruned probes: predictor "
                                    f"{seconds['predictor']:.2f} s, dygraph with reuse "
                                    f"{seconds['dygraph']:.2f} s)")
                    if engine == "mixed":
                        yield predictor_eval.MixedEvaluator(fast, reuse, split), "mixed", split
                        return
                    if engine == "dygraph":   # prepared and checked already: used as it is
                        yield reuse, "dygraph", 0
                        return
                # predictors alone: reuse's recorded outputs are freed first
                yield fast, "predictor", split
                return
    with SensitivityEvaluator(model, val_dataset, eval_num) as evaluate:
        yield evaluate, "dygraph", 0


def describe_engines(engine, predictor_groups, num_groups):
    if engine == "mixed":
        return (f"the first {predictor_groups} of {num_groups} groups in predictors and the "
                f"rest in dygraph")
    return f"in {engine}"


def share_plan(plan=None):
    """Rank 0's pruning plan, on every rank of a job (``plan`` is only read on rank 0)."""
    mine = {gid: float(r) for gid, r in plan.items()} if distributed.is_main() else None
    return distributed.all_gather(mine)[0]  # JSON: plain floats


def _run_other_rank(o, cfg):
    """Ranks 1..N-1 of a job: their share of the sensitivity points, rank 0's plan, then
    retraining together with rank 0. Nothing is written but their sensitivity part files."""
    model = build_and_load(cfg, o.model_path)
    model.eval()
    val_dataset = cfg.val_dataset
    if val_dataset is None:
        raise UserError(f"{cfg.path} has no val_dataset; pruning needs one to measure mIoU")
    analysis = build_groups(model, sample_input_shape(val_dataset))
    analysis.require_coverage(o.min_coverage)
    measure_sensitivity(o, cfg, model, analysis, val_dataset)
    prune_model(model, analysis, share_plan(), o.criterion)
    retrain(o, cfg, model, os.path.join(o.save_dir, "retrain"))  # rank 0 alone writes there
    return None


def run(o):
    """Run the whole pipeline; returns the report dict (also written to save_dir; None on
    ranks other than 0 of a job)."""
    check_options(o)
    set_seed(o.seed)
    if not distributed.is_main():
        return _run_other_rank(o, o.config)
    return staged_run(o.save_dir, o.sen_file, lambda stage: _run(o, o.config, o.timings, stage))


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
        if cov["frozen_by_ops"]:
            logger.warning(analysis.frozen_by_ops_text())
        analysis.require_coverage(o.min_coverage)
    flops0, params0 = count_flops_params(model, shape)
    flops_model = FlopsModel(analysis)
    latency = None
    if o.target == "latency":
        with Phase(t, "latency table"):
            latency = latency_mod.for_pipeline(o, cfg, model, analysis,
                                               os.path.join(stage, "latency_work"))
        target, lowered_to = latency.aimed_reduction(o.pruning_ratio, o.sen_ratios,
                                                     o.allow_lower_target)
    else:
        target, lowered_to = aimed_reduction(o, analysis, flops_model)
    eval_num = o.sen_eval_num or len(val_dataset)
    with Phase(t, "sensitivity analysis"):
        sens, sen_engine, sen_predictor_groups = measure_sensitivity(o, cfg, model, analysis,
                                                                     val_dataset)
    with Phase(t, "pruning"):
        alloc = latency.search(model, sens, target, o.allow_lower_target) if latency else \
            allocate_ratios(analysis.groups, sens, flops_model, target, channel_step=o.channel_step)
        prune_model(model, analysis, share_plan(alloc.plan), o.criterion)
        flops1, params1 = count_flops_params(model, shape)
        pruned_miou = miou(model, val_dataset)
        logger.info(f"FLOPs {flops0 / 1e9:.3f}G -> {flops1 / 1e9:.3f}G ({1 - flops1 / flops0:.1%} fewer), "
                    f"params {params0 / 1e6:.3f}M -> {params1 / 1e6:.3f}M, mIoU right after pruning {pruned_miou:.4f}")
    final = retrain_and_evaluate(o, cfg, model, stage, val_dataset, t)
    report = {
        "model_name": type(model).__name__, "config": cfg.path, "model_path": o.model_path,
        "criterion": o.criterion, "pruning_ratio": o.pruning_ratio, "channel_step": o.channel_step,
        "target": o.target,
        "target_reachable": lowered_to is None, "max_reachable_ratio": round(alloc.max_reduction, 4),
        "target_lowered_to": None if lowered_to is None else round(lowered_to, 4),
        "input_shape": shape,
        "flops_before": flops0, "flops_after": flops1, "flops_reduction": round(1 - flops1 / flops0, 4),
        "params_before": params0, "params_after": params1,
        "miou_baseline": base_miou, "miou_pruned": pruned_miou, "miou_retrained": final["mIoU"],
        "retraining_iters": o.retraining_iters, "sen_eval_num": eval_num,
        "sen_engine": sen_engine, "sen_predictor_groups": sen_predictor_groups,
        "sen_ratios": list(o.sen_ratios), "coverage": analysis.coverage,
        "layer_ratios": {gid: round(r, 4) for gid, r in sorted(alloc.plan.items())},
        "seconds": t,
    }
    # a model trained on several GPUs has SyncBatchNorm layers: saved and exported as plain ones
    plain_batchnorm(model)
    # the pruning facts travel with the checkpoint and, from there, into every export's deploy.yaml
    save_pruned(model, stage, info={key: report[key] for key in PRUNING_FACTS})
    if o.export:
        with Phase(t, "export"):
            from ..core.export import export_model
            export_model(model, os.path.join(stage, "export"),
                         val_transforms_config=cfg.val_dataset_config.get("transforms"),
                         model_type=report["model_name"])
    if latency:
        with Phase(t, "latency measurement"):
            report["latency"] = latency.final_report(
                model, os.path.join(stage, "export") if o.export else None)
    plot_sensitivity(sens, alloc.plan, os.path.join(stage, "sensitivity.png"))
    write_json(os.path.join(stage, "report.json"), report)
    write_text(os.path.join(stage, "report.md"), render_markdown(report))
    return report
