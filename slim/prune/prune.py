"""Prune a segmentation model's conv channels: sensitivity analysis, per-layer ratios that hit a
FLOPs or measured-latency target (FPGM or L1 criterion), retraining, evaluation, saving and
export."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402


LATENCY_ONLY = " (--target latency only)"
NATIVE_ONLY_NOTE = " (not with --method paddleslim)"


def build_parser():
    from paddleseg.slim.criteria import CRITERIA
    from paddleseg.slim.latency.allocate import ALLOCATORS, DEFAULT_ALLOCATION
    from paddleseg.slim.options import METHODS
    from paddleseg.slim.sensitivity.evaluators import EVALUATORS
    from paddleseg.slim.targets import TARGETS

    p = cli.ArgumentParser(description=__doc__)
    required = p.add_argument_group("required")
    required.add_argument("--config", required=True, help="configuration file")
    required.add_argument("--pruning_ratio", type=float, required=True,
                          help="the pruning ratio: target reduction of FLOPs (or of measured "
                               "latency, with --target latency), in (0, 1)")
    required.add_argument("--retraining_iters", type=int, required=True,
                          help="retraining iterations after pruning, >= 0")
    model = p.add_argument_group("model and output")
    model.add_argument("--model_path", default=None, help="trained parameters to prune")
    model.add_argument("--save_dir", default="output",
                       help="where the pruned model goes: a new or empty folder, or an earlier "
                            "prune output (replaced as a whole when the run succeeds)")
    sens = p.add_argument_group("sensitivity analysis")
    sens.add_argument("--criterion", choices=list(CRITERIA), default=None,
                      help="channel importance: fpgm (geometric median, default) or l1 (filter "
                           "norm; the default with --method paddleslim, as in PaddleSeg 2.6)")
    sens.add_argument("--sen_file", default=None,
                      help="sensitivity file (JSON), resumed when it exists (default: "
                           "save_dir/sensitivity.json); a .pickle name is pickled, read back "
                           "safely")
    sens.add_argument("--sen_eval_num", type=int, default=None,
                      help="evaluate sensitivity on the first N val images (default: all)")
    sens.add_argument("--sen_ratios", type=float, nargs="+", default=None,
                      help="the ratio grid of the sensitivity analysis (default: 0.1 ... 0.9)"
                           + NATIVE_ONLY_NOTE)
    sens.add_argument("--sen_evaluator", "--sen_engine", dest="sen_evaluator",
                      choices=list(EVALUATORS), default="auto",
                      help="what evaluates the sensitivity points: predictor (a Paddle Inference "
                           "predictor per point, oneDNN: several times faster forwards on CPU), "
                           "dygraph, or auto (both timed on pruned probes; the first groups in "
                           "predictors and the rest in dygraph where that is faster; dygraph on "
                           "GPU); --sen_engine is the old name" + NATIVE_ONLY_NOTE)
    sens.add_argument("--sen_bn_batches", type=int, default=0,
                      help="score every sensitivity point (and the unpruned model it is compared "
                           "with) with its batch-norm statistics re-estimated on this many "
                           "training batches (config batch size and transforms, --seed): the "
                           "stale statistics of a just-pruned model, which retraining repairs "
                           "first, then count for less; 0 (default): scored as it is"
                           + NATIVE_ONLY_NOTE)
    target = p.add_argument_group("target")
    target.add_argument("--target", choices=list(TARGETS), default="flops",
                        help="what --pruning_ratio cuts: flops (analytic FLOPs) or latency (the "
                             "exported model's latency measured on --device)" + NATIVE_ONLY_NOTE)
    target.add_argument("--allow_lower_target", action="store_true",
                        help="when --pruning_ratio is above what the sensitivity grid can reach, "
                             "prune at that maximum instead of failing" + NATIVE_ONLY_NOTE)
    target.add_argument("--min_coverage", type=float, default=0.5,
                        help="fail when less than this share of the model's conv FLOPs can be "
                             "pruned (ops the engine does not understand freeze channels)"
                             + NATIVE_ONLY_NOTE)
    target.add_argument("--channel_step", type=int, default=8,
                        help="remove channels in multiples of this where a layer's width allows, "
                             "so pruned widths stay aligned for fast CPU/GPU kernels (1: any "
                             "count; at most 64)" + NATIVE_ONLY_NOTE)
    budget = p.add_argument_group("accuracy budget")
    budget.add_argument("--max_miou_drop", type=float, default=None,
                        help="prune as far as the mIoU stays within this many points of the "
                             "unpruned model's (fine-tuned as long): the target is cut in steps "
                             "of --budget_step up to --pruning_ratio, each pruned, retrained "
                             "--budget_iters and evaluated; the last step within the budget "
                             "(noise included) is the answer, retrained in full unless its "
                             "step already was (--budget_iters as --retraining_iters)"
                        + NATIVE_ONLY_NOTE)
    budget.add_argument("--budget_step", type=float, default=0.1,
                        help="the budget search's step of target cut" + NATIVE_ONLY_NOTE)
    budget.add_argument("--budget_iters", type=int, default=None,
                        help="retraining iterations of each budget step (default: "
                             "--retraining_iters; fewer is faster but overstates the loss)"
                        + NATIVE_ONLY_NOTE)
    latency = p.add_argument_group("latency target", "flags that apply only with --target latency")
    latency.add_argument("--latency_shape", type=int, nargs=4, default=None,
                         metavar=("N", "C", "H", "W"),
                         help="input shape latency is measured at (default: the val transforms' "
                              "Resize, else 1 3 512 1024); C = 3, 32 <= H, W <= 8192, N <= 64 and "
                              "N*H*W <= 4096*4096 (the table runs the model at it many times)"
                              + LATENCY_ONLY)
    latency.add_argument("--latency_table", default=None,
                         help="latency table file: reused when made for this machine, threads, "
                              "shape and model, else measured and written (default: a cache "
                              "under SEG_HOME)" + LATENCY_ONLY)
    latency.add_argument("--latency_allocation", choices=list(ALLOCATORS), default=None,
                         help=f"how the latency cut is shared among groups: {DEFAULT_ALLOCATION} "
                              "(least accuracy lost per millisecond saved; the default), "
                              "balanced (least squared loss per millisecond: no group cut deep "
                              "alone) or equal_loss (the --target flops allocation, every group "
                              "pruned to one sensitivity loss, scaled to the latency target: a "
                              "control for comparisons)" + LATENCY_ONLY)
    latency.add_argument("--trial_allocations", nargs="+", choices=list(ALLOCATORS),
                         default=None, metavar="ALLOCATION",
                         help="allocate the latency cut with each of these (for instance "
                              "loss_per_ms equal_loss: which keeps more accuracy depends on the "
                              "model), retrain each --trial_iters with --seed and keep the one "
                              "with the highest val mIoU; each costs a closing loop and a "
                              "retraining, and the winner's is the final model when "
                              "--trial_iters is --retraining_iters" + LATENCY_ONLY)
    latency.add_argument("--trial_iters", type=int, default=None,
                         help="retraining iterations of each --trial_allocations candidate "
                              "(default: --retraining_iters; fewer is faster, then the winner "
                              "is retrained in full)" + LATENCY_ONLY)
    latency.add_argument("--latency_samples", type=int, default=8,
                         help="sample plans a new latency table measures (more: slower, closer "
                              "fit)" + LATENCY_ONLY)
    retraining = p.add_argument_group("retraining")
    retraining.add_argument("--batch_size", type=int, default=None,
                            help="batch size when retraining (default: from the config)")
    retraining.add_argument("--learning_rate", type=float, default=None,
                            help="learning rate when retraining (default: from the config)")
    retraining.add_argument("--retrain_schedule", choices=["config", "finetune"], default="config",
                            help="the retraining's learning-rate schedule: config (its "
                                 "lr_scheduler over --retraining_iters) or finetune (linear "
                                 "warm-up from 0 over the first 5%% of the iterations, then cosine "
                                 "decay to 0; optimizer as the config's)" + NATIVE_ONLY_NOTE)
    retraining.add_argument("--finetune_lr_scale", type=float, default=None,
                            help="the finetune schedule peaks at the config's learning rate times "
                                 "this (default: 0.1), or at --learning_rate when given"
                                 + NATIVE_ONLY_NOTE)
    retraining.add_argument("--distill", choices=["none", "pixel", "channel"], default="none",
                            help="distill from the unpruned model while retraining: pixel "
                                 "(KL of the class softmaxes per pixel) or channel (KL of each "
                                 "channel's softmax over the positions, Shu et al. 2021); costs "
                                 "one teacher forward per batch" + NATIVE_ONLY_NOTE)
    retraining.add_argument("--distill_weight", type=float, default=1.0,
                            help="weight of the distillation loss, > 0" + NATIVE_ONLY_NOTE)
    retraining.add_argument("--distill_temperature", type=float, default=1.0,
                            help="softmax temperature T of the distillation (the loss is "
                                 "scaled by T^2), > 0" + NATIVE_ONLY_NOTE)
    retraining.add_argument("--prune_steps", type=int, default=1,
                            help="reach the pruning plan in this many prune-and-retrain steps, "
                                 "the retraining iterations shared equally (each step with the "
                                 "whole schedule); a killed run resumes after its last finished "
                                 "step" + NATIVE_ONLY_NOTE)
    retraining.add_argument("--reconstruct", type=int, default=0, metavar="N",
                            help="after pruning, refit every conv that lost input channels by "
                                 "least squares, so that on N training batches it outputs what "
                                 "the unpruned model's did (0: off; 8 is a good start); costs "
                                 "about 2N forward passes in all plus one least-squares solve "
                                 "per refitted conv (docs/refit_speed.md)" + NATIVE_ONLY_NOTE)
    retraining.add_argument("--num_workers", type=int, default=0, help="data-loading workers")
    retraining.add_argument("--seed", type=int, default=None, help="random seed")
    runtime = p.add_argument_group("runtime")
    runtime.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                         help="run on cpu or gpu")
    runtime.add_argument("--cpu_threads", type=int, default=None,
                         help="CPU threads per process for evaluation, sensitivity analysis, "
                              "retraining and latency measurement (default: all cores, divided "
                              "between the ranks of a paddle.distributed.launch job)")
    cli.add_common_args(runtime)
    method = p.add_argument_group("method")
    method.add_argument("--method", "--engine", dest="method", choices=list(METHODS),
                        default="native",
                        help="native: this project's engine; paddleslim: PaddleSeg 2.6's "
                             "original method (PaddleSlim's sensitivity + sensitive_prune), for "
                             "comparison; --engine is the old name")
    return p


def main(argv):
    from paddleseg.slim.options import PruneOptions
    options = PruneOptions.from_args(build_parser().parse_args(argv))
    if options.method == "paddleslim":
        return run_paddleslim(options)
    from paddleseg.slim.pipeline import check_options, run

    check_options(options)  # before any slow work (save_dir, sensitivity file)
    cli.set_device(options.device, options.cpu_threads)
    report = run(options)  # a failed run leaves no save_dir (or parent) it made
    if report is None:  # a rank other than 0 of a paddle.distributed.launch job: rank 0 reports
        return 0
    cut = 1 - report["flops_after"] / report["flops_before"]
    lowered = "" if report["target_reachable"] else (
        f" (target {options.pruning_ratio} lowered to {report['target_lowered_to']:.3f}, the "
        "most the sensitivity grid reaches)")
    if "latency" in report:
        lat = report["latency"]
        cut = (f"latency -{lat['measured_reduction']:.1%} measured ({lat['measured_ms_before']:.1f}"
               f" -> {lat['measured_ms_after']:.1f} ms), FLOPs -{cut:.1%}")
        if not lat.get("target_met", True):
            lowered += (f" (TARGET NOT MET: latency cut {lat['target_reduction']:.3f} asked, "
                        f"{lat['search_measured_reduction']:.3f} measured at best; kept by "
                        "--allow_lower_target)")
    else:
        cut = f"FLOPs -{cut:.1%}"
    print(f"pruned {report['model_name']}: {cut}{lowered}, "
          f"mIoU {report['miou_baseline']:.4f} -> {report['miou_pruned']:.4f} (pruned) -> "
          f"{report['miou_retrained']:.4f} (retrained); saved to {options.save_dir}")
    return 0


def run_paddleslim(options):
    from dataclasses import fields

    from paddleseg.slim import paddleslim_engine as engine
    from paddleseg.utils.distributed import world_size
    if world_size() > 1:  # every rank would run the whole method and write the same output
        raise paddleseg.utils.UserError(
            "--method paddleslim runs in one process; start it without paddle.distributed.launch")
    defaults = {f.name: f.default for f in fields(options)}
    given = [option for option in NATIVE_ONLY if getattr(options, option) != defaults[option]]
    if given:
        raise paddleseg.utils.UserError(
            f"--method paddleslim runs PaddleSeg 2.6's method, which has no --{given[0]} "
            "(PaddleSlim's own ratio grid, FLOPs target and channel rounding apply)")
    engine.check_options(options)
    cli.set_device(options.device, options.cpu_threads)
    r = engine.run(options)
    print(f"pruned {r['model_name']} with PaddleSlim: FLOPs -{r['flops_reduction']:.1%} "
          f"({r['pruning_ratio']:.1%} asked), mIoU {r['miou_baseline']:.4f} -> "
          f"{r['miou_pruned']:.4f} (pruned) -> {r['miou_retrained']:.4f} (retrained); saved to "
          f"{options.save_dir}")
    return 0


# options of the native method that PaddleSeg 2.6's method has no equivalent for
NATIVE_ONLY = ("sen_ratios", "sen_evaluator", "sen_bn_batches", "allow_lower_target",
               "min_coverage", "channel_step", "target", "latency_shape", "latency_table",
               "latency_samples", "latency_allocation",
               "distill", "distill_weight", "distill_temperature", "retrain_schedule",
               "finetune_lr_scale", "prune_steps", "reconstruct", "max_miou_drop", "budget_step", "budget_iters",
               "trial_allocations", "trial_iters")


if __name__ == "__main__":
    cli.run(main)
