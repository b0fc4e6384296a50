"""``--max_miou_drop D``: the largest cut that keeps the mIoU within D points of the unpruned
model's, found by pruning in steps of the target (measured latency, or FLOPs).

- **Candidates**: cuts of ``--budget_step``, twice that, ... up to ``--pruning_ratio`` (the
  ceiling, always a candidate), each allocated by the run's target from the unpruned model (the
  latency target's closing loop included: each candidate's speed is measured).
- **Reference**: the unpruned model fine-tuned ``--budget_iters`` iterations with the recipe's
  schedule, twice (seeds S and S+1), evaluated on the val split. The drop of a step is measured
  against their mean; their difference is the *noise* of a retraining.
- **Iterations**: ``--budget_iters`` defaults to ``--retraining_iters``, so a step is judged by
  the accuracy its model reaches after the run's own retraining. A shorter one is faster but
  pessimistic: a pruned model recovers more slowly than the reference, so the early drop
  overstates the final one (Fast-SCNN on CamVid, latency cut 0.1: 5.0 points below the
  reference after 37 iterations, one seed; 1.5 below the control after 150, 3 seeds).
- **Step k**: the unpruned model pruned at candidate k, fine-tuned ``--budget_iters`` iterations
  with the run's recipe (seed S), evaluated on the val split. It is accepted when its drop plus
  the noise stays within D: a step that meets the budget only within noise is refused.
- **A second seed** decides every step whose first cannot: one accepted, or one refused by its
  noise alone, its drop within the budget (it may have lost by bad luck). The same plan is
  fine-tuned again with seed S+1 and the mean of the two decides. A step whose one seed lost
  more than the budget is refused at once: no second seed could make the two seeds' mean plus
  their margin smaller than that drop. A pruned model's retraining varies more between seeds
  than the unpruned model's fine-tuning (BiSeNetV2 on CamVid, 3 seeds: sd 0.05 points for the
  control, 0.3 to 3.2 for its pruned rows), so the reference's noise alone would let a lucky
  first seed through: the two-seed margin takes the larger of the two noises, the step's own
  (its seeds' difference) and the reference's, and shrinks as the standard error of (step
  mean - reference mean) does, sqrt((1/2 + 1/2) / (1 + 1/2)) of the one-seed margin.
- The search stops at the first refused step; the last accepted one is the answer, which the
  run then prunes and retrains in full (``--retraining_iters``).
  When that retraining would repeat the chosen step's exactly (``--budget_iters`` equal to
  ``--retraining_iters``, the default, and one prune step: same plan, seed, recipe and
  iterations), the step's retrained weights (seed S's) are kept and become the final model
  instead.
- A budget no step meets is one error line; the unpruned model stays the answer.
- After each step its record (plan, measured cut, mIoU, verdict) is written to
  ``save_dir/budget_search/state.json``, and the last accepted step's weights beside it
  (``step_N/``); a killed run given the same command resumes after its last finished step, to
  the same result.

The search runs in one process (a ``paddle.distributed.launch`` job is refused).
"""
import dataclasses
import math
import os
import time

from ..utils import logger
from ..utils.errors import UserError
from ..utils.progress import format_seconds
from .candidates import (RETRAINING_OPTIONS, SearchFolder, final_model_text, final_weights,
                         fine_tuned, keeps_final_weights, plan_record, step_facts,
                         without_state)
from .options import options_fingerprint
from .output.publish import BUDGET_DIR


class NoCutWithinBudget(UserError):
    """Even the smallest candidate cut loses more mIoU than the budget allows."""


def candidate_cuts(ceiling, step):
    """step, 2*step, ... below ``ceiling``, then ``ceiling`` itself (to 4 decimals, rounded
    down: a ceiling that is the most the target reaches must not be rounded beyond it)."""
    cuts, k = [], 1
    while step * k < ceiling - 1e-9:
        cuts.append(round(step * k, 6))
        k += 1
    return cuts + [math.floor(ceiling * 1e4 + 1e-6) / 1e4]


def budget_iters(o):
    return o.budget_iters or o.retraining_iters


def accepted(drop_points, noise_points, max_drop):
    """A step's verdict: its drop, plus the noise of a retraining, within the budget."""
    return drop_points + noise_points <= max_drop + 1e-9


def margin(reference_noise, seeds, step_noise=None):
    """The noise a step's drop is judged with when it is the mean of ``seeds`` retrainings.
    Noises are in points, as two seeds' difference: the reference's, and the step's own
    (``step_noise``, known from two seeds on; never taken below the reference's). One seed:
    the reference's noise; more: shrunk as the standard error of (step mean - reference mean)
    does, sqrt(1/seeds + 1/2) against sqrt(1 + 1/2) for one seed."""
    step = max(reference_noise, step_noise or 0.0)
    return math.sqrt((step ** 2 / seeds + reference_noise ** 2 / 2) / (1 + 1 / 2))


def seeds_noise(mious):
    """A step's own noise in points, as two seeds' difference (sd x sqrt(2)); None for one."""
    if len(mious) < 2:
        return None
    mean = sum(mious) / len(mious)
    sd = math.sqrt(sum((m - mean) ** 2 for m in mious) / (len(mious) - 1))
    return 100 * sd * math.sqrt(2)


def judge(record, reference, max_drop):
    """Set the record's drop (its seeds' mean against the reference), noise and verdict."""
    mious = record.setdefault("mious", [record["miou"]])
    record["miou"] = sum(mious) / len(mious)
    drop = round(100 * (reference["mean"] - record["miou"]), 4)
    noise = round(margin(reference["noise_points"], len(mious), seeds_noise(mious)), 4)
    record.update(drop_points=drop, noise_points=noise, accepted=accepted(drop, noise, max_drop))


def second_seed_due(record, max_drop):
    """A one-seed step its seed cannot decide: accepted (by luck, perhaps: a pruned model's
    seeds vary more than the reference's), or refused by its noise alone (its drop within the
    budget). One whose drop is over the budget stays refused whatever a second seed scores:
    the two seeds' mean plus their margin is never below the first seed's drop (see
    :func:`margin`: it is at least half the seeds' difference)."""
    return (len(record.get("mious", [record["miou"]])) == 1
            and record["drop_points"] <= max_drop + 1e-9)


def search(cuts, reference, evaluate_step, max_drop, records, save, second_seed=None):
    """(index of the chosen step or None, every step's record): the steps of ``cuts`` in order,
    ``records`` (of an earlier, killed run) reused, ``evaluate_step(k, cut)`` giving the others'
    {miou, ...}; ``save(records)`` after each. A step refused for its noise alone is retrained
    once more with ``second_seed(record)`` (its mIoU) where given. Stops after the first
    refused step."""
    chosen, start, resumed = None, time.time(), len(records)
    for k, cut in enumerate(cuts):
        if k < len(records):
            record = records[k]
        else:
            record = dict(evaluate_step(k, cut), step=k + 1, cut=cut)
            judge(record, reference, max_drop)
            records.append(record)
            save(records)
            done = len(records)   # the steps evaluated here took the time since the start
            eta = (time.time() - start) / (done - resumed) * (len(cuts) - done)
            log_step(record, len(cuts), max_drop,
                     f"at most {len(cuts) - done} steps left, ETA {format_seconds(eta)}")
        if second_seed and second_seed_due(record, max_drop):
            why = "accepted by one seed" if record["accepted"] else "refused for its noise alone"
            logger.info(f"budget search: step {k + 1} was {why}: the same plan is retrained "
                        "with the next seed and the mean of the two decides")
            record.setdefault("mious", [record["miou"]]).append(second_seed(record))
            judge(record, reference, max_drop)
            save(records)
            log_step(record, len(cuts), max_drop, "2 seeds")
        if not record["accepted"]:
            break
        chosen = k
    return chosen, records


def log_step(record, total, max_drop, tail):
    drop = record["drop_points"]
    logger.info(f"budget search: step {record['step']} of {total}: cut {record['cut']:g} "
                f"({step_facts(record)}), mIoU {record['miou']:.4f}, {abs(drop):.1f} points "
                f"{'below' if drop >= 0 else 'above'} the reference "
                f"(noise {record['noise_points']:.1f}, budget {max_drop:g}): "
                f"{'accepted' if record['accepted'] else 'refused'}; {tail}")


def fingerprint(o, setup, cuts):
    """What decides the search's steps: a resumed run must agree on all of it."""
    return options_fingerprint(
        o, RETRAINING_OPTIONS + ("max_miou_drop", "budget_iters", "latency_allocation"),
        setup=setup, cuts=cuts)


def last_accepted(records):
    """The step number of the last accepted record, or None."""
    steps = [r["step"] for r in records if r["accepted"]]
    return steps[-1] if steps else None


class BudgetState(SearchFolder):
    """``save_dir/budget_search/``: the reference and the finished steps, and the retrained
    model of the last accepted step N where kept; ``max_drop``: the budget, which says whether
    the last step is still due its second seed."""

    def __init__(self, save_dir, key, max_drop):
        super().__init__(save_dir, BUDGET_DIR, key,
                         f"{os.path.join(save_dir, BUDGET_DIR)} holds the budget search of a run "
                         "with other options or weights: the search starts over")
        self.max_drop = max_drop

    def load(self):
        state = self.read()
        return state.get("reference"), list(state.get("steps", []))

    def save(self, reference, steps):
        """The state, then only the weights of the last step accepted for good, and of a last
        step still due its second seed (which may accept or refuse it), stay: a refused step's
        model is never the answer. The step before a pending one is kept: its first seed alone
        does not replace the answer (its second may refuse it)."""
        pending = bool(steps) and second_seed_due(steps[-1], self.max_drop)
        decided = steps[:-1] if pending else steps
        kept = [last_accepted(decided)] + ([steps[-1]["step"]] if pending else [])
        self.write({"reference": reference, "steps": steps}, kept)


class BudgetSearch:
    """The search of one run: ``o`` its options (each fine-tuning builds its config from them),
    ``target`` its target (built on the unpruned model), ``shape`` the traced input shape."""

    def __init__(self, o, target, shape, val_dataset, work_dir, setup):
        self.o, self.target, self.shape = o, target, shape
        self.val_dataset, self.work_dir = val_dataset, work_dir
        self.iters = budget_iters(o)
        self.setup = setup
        # a step retrained exactly as the final model would be: its weights are the final ones
        # (without --model_path each fresh model has its own random initial weights)
        self.keeps_weights = keeps_final_weights(o, self.iters)

    def _step_options(self, **changes):
        return dataclasses.replace(self.o, retraining_iters=self.iters, prune_steps=1, **changes)

    def _fine_tuned(self, options, plan=None, keep_in=None):
        """(mIoU, FLOPs cut) of a fresh unpruned model (pruned to ``plan``) after the step's
        fine-tuning; the retrained model is saved in the folder ``keep_in`` if given."""
        return fine_tuned(options, self.o.model_path, self.shape, self.val_dataset,
                          self.work_dir, plan, keep_in)

    def reference(self):
        seed = self.o.seed or 0
        control = dict(distill="none", distill_weight=1.0, distill_temperature=1.0)
        mious = [self._fine_tuned(self._step_options(seed=s, **control))[0]
                 for s in (seed, seed + 1)]
        mean = sum(mious) / 2
        return {"mious": mious, "mean": mean,
                "noise_points": round(100 * abs(mious[0] - mious[1]), 4),
                "iters": self.iters}

    def evaluate_step(self, sensitivities, state):
        def step(k, cut):
            alloc = self.target.allocate(sensitivities, cut, allow_lower=True)
            planned = plan_record(self.target, alloc)
            keep_in = state.step_folder(k + 1) if self.keeps_weights else None
            step_miou, flops_cut = self._fine_tuned(self._step_options(), alloc.plan, keep_in)
            return {"miou": step_miou, "flops_reduction": flops_cut, **planned}
        return step

    def second_seed(self, record):
        """The mIoU of the step's own plan fine-tuned again with the next seed (its weights
        are not kept: the first seed's are the ones a final retraining repeats)."""
        options = self._step_options(seed=(self.o.seed or 0) + 1)
        return self._fine_tuned(options, record["plan"])[0]

    def run(self, sensitivities, ceiling):
        """The chosen Allocation (the target restored to it), the report's ``budget``, and the
        chosen step's retrained weights where they are the final model's (else None)."""
        o = self.o
        cuts = candidate_cuts(ceiling, o.budget_step)
        state = BudgetState(o.save_dir, fingerprint(o, self.setup, cuts), o.max_miou_drop)
        reference, records = state.load()
        logger.info(f"budget search: at most {len(cuts)} steps ({', '.join(map(str, cuts))}) of "
                    f"{o.target} cut, each one retraining of {self.iters} iterations (two where "
                    f"the first is accepted or refused for its noise alone), after 2 reference "
                    f"fine-tunings; "
                    + ("the chosen step's model is the final one" if self.keeps_weights else
                       f"then the final retraining ({o.retraining_iters} iterations)")
                    + f"; budget {o.max_miou_drop:g} mIoU points"
                    + (f"; resuming after step {len(records)}" if records else ""))
        if reference is None:
            reference = self.reference()
            state.save(reference, [])
        logger.info(f"budget search: reference mIoU {reference['mean']:.4f} (seeds: "
                    f"{', '.join(f'{m:.4f}' for m in reference['mious'])}; noise "
                    f"{reference['noise_points']:.1f} points)")
        chosen, records = search(cuts, reference, self.evaluate_step(sensitivities, state),
                                 o.max_miou_drop, records, lambda r: state.save(reference, r),
                                 self.second_seed)
        budget = {"max_miou_drop": o.max_miou_drop, "reference": reference,
                  "steps": without_state(records),
                  "chosen_cut": None if chosen is None else cuts[chosen],
                  "why": why_stopped(records, chosen, reference, o.max_miou_drop, len(cuts))}
        logger.info(f"budget search: {budget['why']}")
        if chosen is None:
            raise NoCutWithinBudget(f"--max_miou_drop {o.max_miou_drop:g}: {budget['why']}; the "
                                    "unpruned model stays the answer")
        alloc = self.target.restore(records[chosen]["target_state"])
        weights = final_weights(state, records[chosen]["step"], self.keeps_weights)
        budget["final_model"] = final_model_text(weights, "chosen step", "chosen cut",
                                                 o.retraining_iters)
        return alloc, budget, weights


def why_stopped(records, chosen, reference, max_drop, total):
    last = records[-1]
    seeds = len(last.get("mious", [None]))
    verdict = (f"{last['drop_points']:.1f} points lost + "
               f"{last.get('noise_points', reference['noise_points']):.1f} noise > {max_drop:g}"
               + (f"; mean of {seeds} seeds" if seeds > 1 else ""))
    if chosen is None:
        return f"the smallest cut, {last['cut']:g}, is refused ({verdict})"
    if chosen == len(records) - 1:
        return (f"cut {records[chosen]['cut']:g} chosen: every step up to the ceiling "
                f"({total} steps) kept the budget")
    return (f"cut {records[chosen]['cut']:g} chosen: the next, {last['cut']:g}, was refused "
            f"({verdict})")
