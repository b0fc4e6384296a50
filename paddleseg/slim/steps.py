"""Stepwise pruning (``--prune_steps K``): the run's plan reached in K prune-and-retrain steps.

The target allocates one plan as for a one-step run (so the final model has exactly the widths,
FLOPs and measured latency of the one-step model); step k removes, in every group, the first
``round(n * k / K)`` of the ``n`` channels the plan removes there, choosing them by the
criterion on the weights as the previous step's retraining left them, then retrains. The
sensitivity is measured once, on the unpruned model: re-measuring it per step would cost K
analyses, and the plan, hence the speed, is fixed by the target anyway.

The retraining iterations are shared equally (the last step takes the remainder), each step
with the whole --retrain_schedule over its share (a rewound schedule: warm-up and decay per
step), so a K-step run costs what a one-step run does, plus one small evaluation per step.

After each step rank 0 saves the model in ``save_dir/prune_steps/`` with a fingerprint of
everything that decides the steps; a killed run given the same command resumes after its last
finished step (the folder goes with the old output when the run succeeds).
"""
import dataclasses
import os

from ..utils import distributed, logger
from ..utils.structure import renew_parameters
from ..utils.fileio import write_json
from . import build_groups, prune_model
from .criteria import num_pruned
from .output.publish import STEPS_DIR, STEPS_STATE
from .options import options_fingerprint
from .output.storage import PARAMS_FILE, keep_only_step, load_pruned, read_state, save_pruned


def removal_schedule(channels, plan, steps):
    """[{group id: channels removed in all by the end of step k} for k = 1..steps]: the plan's
    removals ``num_pruned(channels[g], plan[g])`` spread evenly over the steps, the last step
    reaching exactly the plan."""
    total = {gid: num_pruned(channels[gid], ratio) for gid, ratio in plan.items()}
    return [{gid: int(round(n * k / steps)) for gid, n in total.items()}
            for k in range(1, steps + 1)]


def step_plan(channels, removed_before, removed_after):
    """The ratios to prune the model as it is after ``removed_before`` so that
    ``removed_after`` channels are gone in all ({group id: ratio of its current channels})."""
    plan = {}
    for gid, after in removed_after.items():
        current = channels[gid] - removed_before.get(gid, 0)
        if after > removed_before.get(gid, 0):
            plan[gid] = (after - removed_before.get(gid, 0)) / current
    return plan


def iterations_per_step(total, steps):
    """The retraining iterations of each step: equal shares, the remainder to the last."""
    share = total // steps
    return [share] * (steps - 1) + [total - share * (steps - 1)]


def fingerprint(o, setup, plan):
    """What decides the steps' models: a resumed run must agree on all of it."""
    return options_fingerprint(
        o, ("criterion", "prune_steps", "retraining_iters", "batch_size", "learning_rate", "seed",
            "distill", "distill_weight", "distill_temperature", "retrain_schedule",
            "finetune_lr_scale", "opts"),
        setup=setup, plan={gid: round(float(r), 6) for gid, r in sorted(plan.items())})


class StepCheckpoints:
    """``save_dir/prune_steps``: the model after each finished step, and which is the last."""

    def __init__(self, save_dir, key):
        self.folder = os.path.join(save_dir, STEPS_DIR)
        self.key = key

    def finished(self):
        """(last finished step, its records) of a run with this fingerprint; (0, [])."""
        state = read_state(os.path.join(self.folder, STEPS_STATE), self.key,
                           f"{self.folder} holds the steps of a run with other options or "
                           "weights: the steps start over")
        if state is None:
            return 0, []
        done = state.get("done")
        path = os.path.join(self.folder, f"step_{done}", PARAMS_FILE)
        if not isinstance(done, int) or done < 1 or not os.path.isfile(path):
            return 0, []
        return done, list(state.get("records", []))[:done]

    def load(self, model, step):
        load_pruned(model, os.path.join(self.folder, f"step_{step}", PARAMS_FILE))

    def save(self, model, step, records):
        """Rank 0: the model after ``step``, then the state naming it (older steps go)."""
        if not distributed.is_main():
            return
        save_pruned(model, os.path.join(self.folder, f"step_{step}"))
        write_json(os.path.join(self.folder, STEPS_STATE),
                   {"fingerprint": self.key, "done": step, "records": records})
        keep_only_step(self.folder, f"step_{step}")


def prune_in_steps(o, model, analysis, plan, shape, retrain_step, evaluate, checkpoints):
    """Prune ``model`` (unpruned, with ``analysis`` from :func:`build_groups`) to ``plan`` in
    ``o.prune_steps`` steps, each retrained by ``retrain_step(step_options, step)``;
    ``evaluate()`` gives the mIoU after each step's pruning (None on ranks other than 0).
    Returns one record per step."""
    channels = {g.id: g.channels for g in analysis.groups}
    schedule = removal_schedule(channels, plan, o.prune_steps)
    iterations = iterations_per_step(o.retraining_iters, o.prune_steps)
    done, records = checkpoints.finished()
    if done:
        checkpoints.load(model, done)
        logger.info(f"stepwise pruning: resumed after step {done} of {o.prune_steps} "
                    f"({checkpoints.folder})")
    for step in range(done + 1, o.prune_steps + 1):
        before = schedule[step - 2] if step > 1 else {}
        logger.info(f"stepwise pruning: step {step} of {o.prune_steps}: prune "
                    f"{sum(schedule[step - 1].values()) - sum(before.values())} channels, "
                    f"retrain {iterations[step - 1]} iterations")
        current = analysis if step == 1 else build_groups(model, shape)
        model.eval()
        prune_model(model, current, step_plan(channels, before, schedule[step - 1]), o.criterion)
        record = {"step": step, "channels_removed": sum(schedule[step - 1].values()),
                  "retraining_iters": iterations[step - 1], "miou_pruned": evaluate()}
        if step > 1:  # free of the previous step's data-parallel retraining (a job's ranks)
            renew_parameters(model)
        retrain_step(dataclasses.replace(o, retraining_iters=iterations[step - 1]), step)
        records.append(record)
        checkpoints.save(model, step, records)
    model.eval()
    return records
