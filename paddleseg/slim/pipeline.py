"""The pruning tutorial as one function: baseline -> sensitivity -> allocate -> prune ->
retrain -> evaluate -> save. ``slim/prune/prune.py`` is its command line.

Outputs are built in a staging folder and switched in as one folder at the end (see
:mod:`paddleseg.slim.output.publish`); only the sensitivity file is written during the run, so that a
killed run resumes.

Under ``paddle.distributed.launch`` every rank measures its share of the sensitivity points
(:mod:`paddleseg.slim.sensitivity`), rank 0 allocates the ratios and sends the plan to the
others, all ranks retrain together (data parallel), and rank 0 alone evaluates, saves and
exports.
"""
import dataclasses
import os
import shutil
import time

from ..core.model_loader import build_and_load
from ..core.val import evaluate_metrics
from ..core.train import set_seed
from ..models.layers.layer_libs import plain_batchnorm
from ..utils import distributed, logger
from ..utils.errors import UserError
from ..utils.checkpoint import checkpoint_iteration, load_model_weights
from ..utils.fileio import write_json, write_text
from ..utils.progress import Phase, format_seconds
from . import build_groups
from . import sensitivity
from .budget import BudgetSearch
from .reconstruct import prune_for_retraining
from .distill import retraining_teacher, teacher_of
from .flops import count_flops_params
from .options import check_common, setup_facts
from .output.publish import staged_run
from .output.report import plot_sensitivity, render_markdown
from .output.storage import load_pruned, save_pruned
from .resume import KilledRunState, checkpoint_interval
from .retrain import miou, recipe, retrain
from .steps import StepCheckpoints, prune_in_steps
from .trial import AllocationTrial
from .steps import fingerprint as steps_fingerprint
from .targets import check_target_options, target_class

# --channel_step: wider alignment than this buys no kernel anything (AVX-512 holds 16 floats, GPU
# tensor-core tiles 8 to 32) and would only round small layers' cuts to nothing
MAX_CHANNEL_STEP = 64

# what a pruned checkpoint (and its exports) records about how it was made
PRUNING_FACTS = ("criterion", "pruning_ratio", "target", "target_lowered_to", "channel_step",
                 "input_shape", "flops_before", "flops_after", "flops_reduction", "params_before",
                 "params_after", "layer_ratios")


def check_options(o):
    """Every check of a run's options (a :class:`~paddleseg.slim.options.PruneOptions`) that
    needs no model, before any slow work."""
    check_common(o)
    if not o.sen_ratios or not all(0.0 < r < 1.0 for r in o.sen_ratios):
        raise UserError(f"--sen_ratios must all lie in (0, 1), got {list(o.sen_ratios)}")
    if not 1 <= o.channel_step <= MAX_CHANNEL_STEP:
        raise UserError(f"--channel_step must lie in [1, {MAX_CHANNEL_STEP}] (channels are removed "
                        f"in multiples of it; 8 aligns for CPU and GPU kernels), got "
                        f"{o.channel_step}")
    if not 0.0 <= o.min_coverage <= 1.0:
        raise UserError(f"--min_coverage must lie in [0, 1], got {o.min_coverage}")
    check_target_options(o)
    sensitivity.load(o.sensitivity_path)  # a damaged, unsafe or foreign file fails here


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


def measure_sensitivity(o, cfg, model, analysis, val_dataset):
    """(The sensitivity of every group, the facts of the evaluator that measured it); in a job
    each rank evaluates its share of the points. ``--sen_evaluator`` chooses the evaluator
    (:mod:`paddleseg.slim.sensitivity.evaluators`); a file being resumed keeps its own."""
    eval_num = o.sen_eval_num or len(val_dataset)
    sen_file = o.sensitivity_path
    calibration = bn_calibration_of(o, cfg)
    recorded = sensitivity.recorded_evaluator(sen_file)
    with sensitivity.calibrated_model(model, calibration), \
            sensitivity.open_evaluator(o.sen_evaluator, model, val_dataset, analysis.groups,
                                       eval_num, recorded) as opened:
        evaluator = sensitivity.calibrated(opened, model, calibration)
        sens = sensitivity.analyze(model, analysis.groups, evaluator, o.sen_ratios, sen_file,
                                   o.criterion, sensitivity_progress(),
                                   setup=setup_facts(cfg, o.model_path, eval_num))
    return sens, evaluator.facts


def bn_calibration_of(o, cfg):
    """--sen_bn_batches: the training batches the sensitivity points' batch norms are
    recalibrated on (the config's batch size and training transforms, --seed or 0), or None."""
    if not o.sen_bn_batches:
        return None
    if cfg.train_dataset is None:
        raise UserError(f"--sen_bn_batches recalibrates on training images, but {cfg.path} has "
                        "no train_dataset")
    # the same images on every rank and on a resume, also without --seed: the points of one
    # sensitivity file must be measured alike
    seed = 0 if o.seed is None else o.seed
    calibration = sensitivity.Calibration(cfg.train_dataset, o.sen_bn_batches, cfg.batch_size,
                                          seed)
    logger.info(f"sensitivity: batch norms recalibrated on {o.sen_bn_batches} training batches "
                f"of {cfg.batch_size} for every point (--sen_bn_batches)")
    return calibration


def predictor_groups(facts, num_groups):
    """How many of the first groups the evaluator of ``facts`` evaluated in predictors."""
    return {"dygraph": 0, "predictor": num_groups}.get(facts["name"],
                                                       facts.get("predictor_groups", 0))


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
    # rank 0 alone writes in save_dir; each rank distills from (and refits to) its own teacher
    prune_and_retrain(o, cfg, model, analysis, share_plan(), sample_input_shape(val_dataset),
                      os.path.join(o.save_dir, "retrain"), {}, teacher_of(o, model),
                      evaluate=lambda: None)
    return None


def prune_and_retrain(o, cfg, model, analysis, plan, shape, work_dir, timings, teacher, evaluate,
                      retrained=None, kept=None):
    """Prune ``model`` (traced at ``shape`` into ``analysis``) to ``plan`` and retrain it
    (scratch checkpoints in ``work_dir``, removed after), at once or in --prune_steps steps
    (:mod:`paddleseg.slim.steps`); ``teacher``: :func:`~paddleseg.slim.distill.teacher_of`
    the model before pruning (released once neither the refit nor distillation needs it: pass it
    without keeping a reference); ``evaluate()`` is the mIoU right after pruning (of the last
    step). ``retrained``: the weights file of this very retraining, made earlier (the budget
    search's chosen step, the allocation trial's winner), loaded instead. ``kept``: the
    :class:`~paddleseg.slim.resume.KilledRunState` whose checkpoints a one-step retraining
    keeps and resumes from. Returns (that mIoU, the steps' records or None, the --reconstruct
    refit's record or None)."""
    refit = None
    if o.prune_steps == 1:
        with Phase(timings, "pruning"):
            refit = prune_for_retraining(o, cfg, model, analysis, plan, teacher)
            teacher = retraining_teacher(o, teacher)
            pruned_miou = evaluate()
        with Phase(timings, "retraining"):
            if retrained:
                logger.info(f"retraining: the {search_of(o)} was this retraining (same "
                            f"plan, seed, recipe and iterations): its model is loaded from "
                            f"{retrained}")
                load_pruned(model, retrained)
            else:
                retrain_resumably(o, cfg, model, plan, work_dir, teacher, kept)
        records = None
    else:
        def retrain_step(step_options, step):
            retrain(step_options, step_options.build_config(), model,
                    os.path.join(work_dir, f"step_{step}"), teacher)
        # the weights and config decide the steps' models, not the sensitivity's eval images
        setup = setup_facts(cfg, o.model_path, eval_num=None)
        checkpoints = StepCheckpoints(o.save_dir, steps_fingerprint(o, setup, plan))
        with Phase(timings, f"pruning and retraining in {o.prune_steps} steps"):
            records = prune_in_steps(o, model, analysis, plan, shape,
                                     retrain_step, evaluate, checkpoints)
        pruned_miou = records[-1]["miou_pruned"]
    shutil.rmtree(work_dir, ignore_errors=True)
    return pruned_miou, records, refit


def retrain_resumably(o, cfg, model, plan, work_dir, teacher, kept):
    """The final one-step retraining, checkpointed in ``kept``'s folder where it keeps them
    (one process) and continued from the last checkpoint a killed run left for this plan."""
    folder, checkpoint = kept.retraining(plan) if kept else (None, None)
    if folder is None:
        retrain(o, cfg, model, work_dir, teacher)
        return
    done = checkpoint_iteration(checkpoint) if checkpoint else 0
    if checkpoint and done >= o.retraining_iters:   # killed after it: its model is the last one
        logger.info(f"retraining: finished by the killed run; its model is loaded from "
                    f"{checkpoint}")
        load_model_weights(model, checkpoint)
        return
    if checkpoint:
        logger.info(f"retraining: resumed from the killed run's checkpoint at iteration {done} "
                    f"of {o.retraining_iters} ({checkpoint})")
    retrain(o, cfg, model, folder, teacher, resume_model=checkpoint,
            save_interval=checkpoint_interval(o.retraining_iters))


def search_of(o):
    """The search that judged candidates by retraining them in this run."""
    return ("budget search's chosen step" if o.max_miou_drop is not None else
            "allocation trial's winner")


def choose_allocation(o, cfg, target, shape, val_dataset, stage, sens, aim, timings, kept):
    """(the allocation, the report's ``budget``, its ``allocation_trial``, the weights file of
    the chosen candidate's retraining where it is the final model's, else None): allocated
    once (or restored from ``kept``, a killed run's state), or chosen among retrained
    candidates by the --max_miou_drop search or the --trial_allocations trial (which resume
    from their own state)."""
    setup = setup_facts(cfg, o.model_path, None)
    if o.max_miou_drop is not None:
        with Phase(timings, "budget search"):
            search = BudgetSearch(o, target, shape, val_dataset, os.path.join(stage, "budget"),
                                  setup)
            alloc, budget, retrained = search.run(sens, aim)
        return alloc, budget, None, retrained
    if o.trial_allocations:
        with Phase(timings, "allocation trial"):
            trial = AllocationTrial(o, target, shape, val_dataset, os.path.join(stage, "trial"),
                                    setup)
            alloc, record, retrained = trial.run(sens, aim)
        return alloc, None, record, retrained
    with Phase(timings, "pruning"):
        alloc = kept.restored_allocation(target)
        if alloc is None:
            alloc = target.allocate(sens, aim, o.allow_lower_target)
            kept.keep_allocation(target, alloc)
        return alloc, None, None, None


def run(o):
    """Run the whole pipeline for the options ``o`` (a frozen
    :class:`~paddleseg.slim.options.PruneOptions`); returns the report dict (also written to
    save_dir; None on ranks other than 0 of a job)."""
    cfg = o.build_config()
    check_options(o)
    set_seed(o.seed)
    if not distributed.is_main():
        return _run_other_rank(o, cfg)
    return staged_run(o.save_dir, o.sen_file, lambda stage: _run(o, cfg, {}, stage))


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
    target = target_class(o.target).build(o, cfg, model, analysis,
                                          os.path.join(stage, "latency_work"), t)
    # with --max_miou_drop, --pruning_ratio is the search's ceiling, not a target: one beyond
    # what pruning can reach caps the search there instead of failing the run
    aim, lowered_to = target.reachable(
        o if o.max_miou_drop is None else dataclasses.replace(o, allow_lower_target=True))
    if lowered_to is not None and o.max_miou_drop is not None:
        logger.info(f"budget search: the ceiling {o.pruning_ratio:g} is beyond what pruning can "
                    f"reach; the search goes up to {lowered_to:.3f}")
    eval_num = o.sen_eval_num or len(val_dataset)
    with Phase(t, "sensitivity analysis"):
        sens, evaluator_facts = measure_sensitivity(o, cfg, model, analysis, val_dataset)
    kept = KilledRunState(o, cfg, sens)
    alloc, budget, trial, retrained = choose_allocation(o, cfg, target, shape, val_dataset,
                                                        stage, sens, aim, t, kept)
    # the teacher is copied before pruning changes the model in place (the sensitivity
    # analysis left it as loaded), and handed over: prune_and_retrain drops what it no longer needs
    pruned_miou, steps, refit = prune_and_retrain(
        o, cfg, model, analysis, share_plan(alloc.plan), shape, os.path.join(stage, "retrain"), t,
        teacher_of(o, model), evaluate=lambda: miou(model, val_dataset), retrained=retrained,
        kept=kept)
    flops1, params1 = count_flops_params(model, shape)
    logger.info(f"FLOPs {flops0 / 1e9:.3f}G -> {flops1 / 1e9:.3f}G ({1 - flops1 / flops0:.1%} fewer), "
                f"params {params0 / 1e6:.3f}M -> {params1 / 1e6:.3f}M, mIoU right after pruning "
                f"{pruned_miou:.4f}")
    with Phase(t, "final evaluation"):
        final = evaluate_metrics(model, val_dataset, print_detail=True)
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
        "retraining_iters": o.retraining_iters, "retraining_recipe": recipe(o, cfg),
        "prune_steps": steps or [],
        "reconstruction": refit,
        "sen_eval_num": eval_num,
        "sen_engine": evaluator_facts["name"],
        "sen_predictor_groups": predictor_groups(evaluator_facts, len(analysis.groups)),
        "sen_bn_calibration": evaluator_facts.get("bn_calibration"),
        "sen_ratios": list(o.sen_ratios), "coverage": analysis.coverage,
        "budget": budget,
        "allocation_trial": trial,
        # what this run took over from a killed one (its timings cover this run only)
        "resumed": kept.resumed or None,
        "layer_ratios": {gid: round(r, 4) for gid, r in sorted(alloc.plan.items())},
        "seconds": t,
    }
    # a model trained on several GPUs has SyncBatchNorm layers: saved and exported as plain ones
    plain_batchnorm(model)
    # the pruning facts travel with the checkpoint and, from there, into every export's deploy.yaml
    save_pruned(model, stage, info={key: report[key] for key in PRUNING_FACTS})
    export_dir = None
    if o.export:
        with Phase(t, "export"):
            from ..core.export import export_model
            export_dir = os.path.join(stage, "export")
            export_model(model, export_dir,
                         val_transforms_config=cfg.val_dataset_config.get("transforms"),
                         model_type=report["model_name"])
    final = target.final_report(model, export_dir, t)
    report.update(final)
    # met: neither lowered before the analysis nor missed by a measured target's closing loop
    report["target_met"] = lowered_to is None and final.get("target_met", True)
    plot_sensitivity(sens, alloc.plan, os.path.join(stage, "sensitivity.png"))
    write_json(os.path.join(stage, "report.json"), report)
    write_text(os.path.join(stage, "report.md"), render_markdown(report))
    return report
