"""``--trial_allocations A B ...``: the latency cut shared among the groups by each of several
allocations, each candidate retrained and evaluated, and the one with the highest val mIoU
kept.

Why: at one measured speed, which allocation keeps more accuracy depends on the model, and no
score computed before retraining tells which (CamVid, latency target 0.3, 3 seeds each:
BiSeNetV2 keeps 2.2 points more with ``equal_loss``, Fast-SCNN 3.3 more with ``loss_per_ms``;
the sensitivity-based scores of docs/bn_calibration.md prefer the other one on both). So the
trial pays for the retraining.

- **A candidate**: the latency target allocates ``--pruning_ratio`` with that allocation (its
  closing loop measures each one), a fresh copy of the unpruned model is pruned to it,
  fine-tuned ``--trial_iters`` iterations (default: ``--retraining_iters``) with the run's
  recipe and ``--seed``, and evaluated on the val split.
- **The choice**: the highest mIoU (the first named on a tie). One seed each: a difference
  inside one retraining's noise picks either of two allocations that are equally good within
  it, which costs little; the report gives each mIoU, so the margin is there to read. Each
  candidate meets the target within the closing loop's tolerance, not at one speed: the
  report gives each one's measured speedup too (UNet on CamVid at 0.3: 1.51x and 1.43x).
- **The cost**: one closing loop and one retraining per allocation. When ``--trial_iters`` is
  ``--retraining_iters`` and ``--prune_steps`` is 1, the winner's retrained model is the final
  model (the same plan, seed, recipe and iterations a final retraining would use), so the
  trial costs one retraining per allocation beyond the first; otherwise the winner is then
  retrained in full.
- **A candidate the latency target cannot reach** (its closing loop misses the cut) is
  recorded as failed and the others compete; when all fail, the first failure is the run's.
- After each candidate its record is written to ``save_dir/allocation_trial/state.json``, and
  the best model so far beside it; a killed run given the same command resumes after its last
  finished candidate, to the same result.

The trial runs in one process (a ``paddle.distributed.launch`` job is refused).
"""
import dataclasses
import os
import time

from ..utils import logger
from ..utils.errors import UserError
from ..utils.progress import format_seconds
from .candidates import (RETRAINING_OPTIONS, SearchFolder, final_model_text, final_weights,
                         fine_tuned, keeps_final_weights, plan_record, step_facts,
                         without_state)
from .options import options_fingerprint
from .output.publish import TRIAL_DIR


def trial_iters(o):
    return o.trial_iters or o.retraining_iters


def best_candidate(records):
    """The index of the record with the highest mIoU (the first on a tie), or None where every
    candidate failed."""
    scored = [k for k, r in enumerate(records) if r.get("miou") is not None]
    return max(scored, key=lambda k: records[k]["miou"]) if scored else None


def run_trial(names, evaluate_candidate, records, save):
    """(index of the chosen candidate or None, every candidate's record): ``names`` in order,
    the ``records`` of an earlier, killed run reused, ``evaluate_candidate(k, name)`` giving
    the others' {miou, ...} (or {error}); ``save(records)`` after each."""
    start, resumed = time.time(), len(records)
    for k, name in enumerate(names):
        if k < len(records):
            continue
        record = dict(evaluate_candidate(k, name), candidate=k + 1, allocation=name)
        records.append(record)
        save(records)
        left = len(names) - len(records)
        eta = (time.time() - start) / (len(records) - resumed) * left
        logger.info(f"allocation trial: candidate {k + 1} of {len(names)} ({name}): "
                    f"{candidate_text(record)}; {left} left, ETA {format_seconds(eta)}")
    return best_candidate(records), records


def candidate_text(record):
    if record.get("miou") is None:
        return f"failed: {record['error']}"
    return f"mIoU {record['miou']:.4f} ({step_facts(record)})"


def why_chosen(records, chosen):
    best = records[chosen]
    others = [r for r in records if r is not best]
    margins = "; ".join(
        f"{r['allocation']} failed" if r.get("miou") is None else
        f"{r['allocation']} {100 * (best['miou'] - r['miou']):.1f} points lower" for r in others)
    return f"{best['allocation']} chosen: the highest mIoU ({best['miou']:.4f}; {margins})"


def fingerprint(o, setup, aim):
    """What decides the trial's candidates: a resumed run must agree on all of it."""
    return options_fingerprint(
        o, RETRAINING_OPTIONS + ("pruning_ratio", "allow_lower_target", "trial_allocations",
                                 "trial_iters"),
        setup=setup, aim=aim)


class AllocationTrial:
    """The trial of one run: ``o`` its options, ``target`` its latency target (built on the
    unpruned model), ``shape`` the traced input shape."""

    def __init__(self, o, target, shape, val_dataset, work_dir, setup):
        self.o, self.target, self.shape = o, target, shape
        self.val_dataset, self.work_dir, self.setup = val_dataset, work_dir, setup
        self.iters = trial_iters(o)
        self.keeps_weights = keeps_final_weights(o, self.iters)

    def evaluate_candidate(self, sensitivities, aim, folder):
        options = dataclasses.replace(self.o, retraining_iters=self.iters, prune_steps=1)

        def candidate(k, name):
            self.target.use_allocation(name)
            try:
                alloc = self.target.allocate(sensitivities, aim, self.o.allow_lower_target)
            except UserError as error:   # this allocation cannot reach the cut: the others may
                return {"error": str(error)}
            planned = plan_record(self.target, alloc)
            keep_in = folder.step_folder(k + 1) if self.keeps_weights else None
            trial_miou, flops_cut = fine_tuned(options, self.o.model_path, self.shape,
                                               self.val_dataset, self.work_dir, alloc.plan,
                                               keep_in)
            return {"miou": trial_miou, "flops_reduction": flops_cut, **planned}
        return candidate

    def run(self, sensitivities, aim):
        """The chosen Allocation (the target restored to it), the report's
        ``allocation_trial``, and the winner's retrained weights where they are the final
        model's (else None)."""
        o, names = self.o, list(self.o.trial_allocations)
        folder = SearchFolder(o.save_dir, TRIAL_DIR, fingerprint(o, self.setup, aim),
                              f"{os.path.join(o.save_dir, TRIAL_DIR)} holds the allocation trial "
                              "of a run with other options or weights: the trial starts over")
        records = list(folder.read().get("candidates", []))
        logger.info(f"allocation trial: {len(names)} allocations ({', '.join(names)}) of the "
                    f"latency cut {aim:.3f}, each measured, then retrained {self.iters} "
                    "iterations; "
                    + ("the winner's model is the final one" if self.keeps_weights else
                       f"then the winner's final retraining ({o.retraining_iters} iterations)")
                    + (f"; resuming after candidate {len(records)}" if records else ""))

        def save(done):
            folder.write({"candidates": done}, [None if (k := best_candidate(done)) is None
                                                else done[k]["candidate"]])
        chosen, records = run_trial(names, self.evaluate_candidate(sensitivities, aim, folder),
                                    records, save)
        if chosen is None:
            raise UserError(records[0]["error"])
        trial = {"iters": self.iters, "candidates": without_state(records),
                 "chosen": records[chosen]["allocation"], "why": why_chosen(records, chosen)}
        logger.info(f"allocation trial: {trial['why']}")
        self.target.use_allocation(trial["chosen"])
        alloc = self.target.restore(records[chosen]["target_state"])
        weights = final_weights(folder, records[chosen]["candidate"], self.keeps_weights)
        trial["final_model"] = final_model_text(weights, "winner", "winner", o.retraining_iters)
        return alloc, trial, weights
