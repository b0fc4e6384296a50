"""A candidate plan judged by retraining it: a fresh copy of the unpruned model pruned to the
plan, fine-tuned with the run's recipe, evaluated on the val split; and the folder where a
search over such candidates keeps its state, so that a killed run resumes after its last
finished candidate.

Two searches judge candidates so: ``--max_miou_drop`` (:mod:`paddleseg.slim.budget`: cuts of
one allocation) and ``--trial_allocations`` (:mod:`paddleseg.slim.trial`: allocations of one
cut). No score computed before retraining ranks such candidates reliably (see
docs/bn_calibration.md), so both pay for the retraining.
"""
import os
import shutil

from ..core.model_loader import build_and_load
from ..utils.fileio import write_json
from . import build_groups
from .distill import retraining_teacher, teacher_of
from .reconstruct import prune_for_retraining
from .flops import count_flops_params
from .output.publish import STEPS_STATE
from .output.storage import PARAMS_FILE, keep_only_step, read_state, save_pruned
from .retrain import miou, retrain

# the options that decide how a candidate is pruned and fine-tuned: a resumed search must agree
# on all of them with the run that saved its state (each search adds its own)
RETRAINING_OPTIONS = ("target", "criterion", "retraining_iters", "batch_size", "learning_rate",
                      "seed", "distill", "distill_weight", "distill_temperature", "reconstruct",
                      "retrain_schedule", "finetune_lr_scale", "channel_step", "latency_shape",
                      "sen_ratios", "opts")


def keeps_final_weights(o, iters):
    """Whether a candidate fine-tuned ``iters`` iterations is retrained exactly as the run's
    final model would be (same plan, seed, recipe and iterations, one prune step), so that its
    weights can be the final model's. Without --model_path every fresh model has its own random
    initial weights, so none can."""
    return iters == o.retraining_iters and o.prune_steps == 1 and o.model_path is not None


def final_weights(folder, step, keeps_weights):
    """The weights file a search kept of its chosen candidate ``step`` (in ``folder``, a
    :class:`SearchFolder`) where it is the final model's, else None."""
    weights = folder.weights(step)
    return weights if keeps_weights and os.path.isfile(weights) else None


def final_model_text(weights, kept, retrained, retraining_iters):
    """report.json's words for the final model: the ``kept`` candidate's own retrained model
    where ``weights`` holds it, else the ``retrained`` one retrained in full."""
    if weights:
        return (f"the {kept}'s retrained model (the same plan, seed, recipe and iterations as a "
                "final retraining)")
    return f"the {retrained} retrained {retraining_iters} iterations"


def fine_tuned(options, model_path, shape, val_dataset, work_dir, plan=None, keep_in=None):
    """(mIoU, FLOPs cut) of a fresh copy of the model at ``model_path`` (pruned to ``plan``,
    traced at ``shape``) after fine-tuning it with ``options`` (its config built from them);
    scratch checkpoints go to ``work_dir`` and are removed after; the fine-tuned model is saved
    in the folder ``keep_in`` if given."""
    cfg = options.build_config()
    model = build_and_load(cfg, model_path)
    model.eval()
    teacher = teacher_of(options, model)
    flops_cut = 0.0
    if plan:
        flops_before = count_flops_params(model, shape)[0]
        prune_for_retraining(options, cfg, model, build_groups(model, shape), plan, teacher)
        flops_cut = 1 - count_flops_params(model, shape)[0] / flops_before
    teacher = retraining_teacher(options, teacher)   # the refit's reference is freed here
    retrain(options, cfg, model, work_dir, teacher)
    shutil.rmtree(work_dir, ignore_errors=True)
    if keep_in:
        save_pruned(model, keep_in)
    return miou(model, val_dataset), round(flops_cut, 4)


def plan_record(target, alloc):
    """What a search records of an allocation before retraining it: its plan, the target's
    snapshot (to make it the run's allocation again) and, under the latency target, the
    closing loop's measured cut and speedup."""
    snapshot = target.snapshot(alloc)
    record = {"plan": {gid: float(r) for gid, r in alloc.plan.items()},
              "target_state": snapshot}
    measured = snapshot.get("verdict", {}).get("search_measured_reduction")
    if measured is not None:
        record.update(measured_latency_reduction=measured,
                      speedup=round(1 / max(1e-9, 1 - measured), 3))
    return record


def step_facts(record):
    """A candidate's model in words: its FLOPs cut and, under the latency target, the closing
    loop's measured latency cut and speedup (records of an older run may lack them)."""
    facts = [f"FLOPs -{record['flops_reduction']:.1%}"] if "flops_reduction" in record else []
    if record.get("measured_latency_reduction") is not None:
        facts.append(f"latency measured -{record['measured_latency_reduction']:.1%}, "
                     f"{record['speedup']:.2f}x")
    return "; ".join(facts) or "no facts recorded"


def without_state(records):
    """The records as report.json gives them: without the targets' snapshots."""
    return [{k: v for k, v in r.items() if k != "target_state"} for r in records]


class SearchFolder:
    """``save_dir/<name>/``: a search's ``state.json`` (with the fingerprint ``key`` of the
    options it was made with) and ``step_N/model.pdparams``, the fine-tuned models it keeps."""

    def __init__(self, save_dir, name, key, stale):
        self.folder = os.path.join(save_dir, name)
        self.path = os.path.join(self.folder, STEPS_STATE)
        self.key, self.stale = key, stale

    def step_folder(self, step):
        return os.path.join(self.folder, f"step_{step}")

    def weights(self, step):
        return os.path.join(self.step_folder(step), PARAMS_FILE)

    def read(self):
        """The saved state (a dict, without its fingerprint), or {} (none, or another run's)."""
        return read_state(self.path, self.key, self.stale) or {}

    def write(self, state, keep_steps):
        """Save ``state``; then only the ``step_N`` folders of ``keep_steps`` stay."""
        write_json(self.path, dict(state, fingerprint=self.key))
        keep_only_step(self.folder, *(f"step_{s}" for s in keep_steps if s is not None))
