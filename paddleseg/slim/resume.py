"""What a killed prune.py run leaves for the same command to resume (``save_dir/resume/``): the
allocation it chose and the checkpoints of its final retraining.

Why keep them: under the latency target the allocation follows measured times, so a run that
allocated again could prune another plan and end with another model; and the final retraining,
which recovers most when it is as long as the model's own training (benchmarks/RESULTS.md), is
most of a run's time. A resumed run restores the allocation (with its closing loop's rounds and
verdict) and continues the retraining from its last checkpoint, which repeats the
uninterrupted retraining exactly (:func:`paddleseg.core.train.train` resumes the data order,
the schedule and the optimizer).

The state is keyed by a fingerprint of everything that decides the two: the options, the config
and weights, the sensitivities. Another command's state is discarded with a warning, and the
checkpoints belong to the plan they were made for. The folder goes with the old output when
the run succeeds. Mid-retraining checkpoints are kept by one process only: a job's ranks would
each have to resume from the same one, so under paddle.distributed.launch the retraining
starts over (the allocation is still restored).
"""
import glob
import hashlib
import json
import math
import os
import shutil

from ..utils import logger
from ..utils.checkpoint import checkpoint_iteration
from ..utils.distributed import world_size
from .candidates import RETRAINING_OPTIONS, SearchFolder
from .options import options_fingerprint, setup_facts
from .output.publish import RESUME_DIR, RETRAINING_CHECKPOINTS

# what decides the allocation beside RETRAINING_OPTIONS (the sensitivities are keyed apart)
ALLOCATION_OPTIONS = ("pruning_ratio", "allow_lower_target", "min_coverage", "latency_table",
                      "latency_allocation", "latency_samples", "cpu_threads", "prune_steps")
# checkpoints per retraining: a kill loses at most a tenth of it, for a few seconds of saving;
# but not more often than every MIN_CHECKPOINT_INTERVAL iterations (a short retraining, which a
# kill costs little, keeps its last one only: each save writes the model and the optimizer)
CHECKPOINTS_PER_RETRAINING, MIN_CHECKPOINT_INTERVAL = 10, 10


def checkpoint_interval(iters):
    """Iterations between the final retraining's checkpoints."""
    return max(min(MIN_CHECKPOINT_INTERVAL, iters), math.ceil(iters / CHECKPOINTS_PER_RETRAINING),
               1)


def json_digest(obj):
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_key(plan):
    return {gid: round(float(r), 6) for gid, r in sorted(plan.items())}


def last_checkpoint(folder):
    """The ``iter_N`` checkpoint with the highest N in ``folder`` (train() writes each whole or
    not at all), or None (also where ``folder`` is missing)."""
    found = [p for p in glob.glob(os.path.join(folder, "iter_*"))
             if os.path.basename(p)[len("iter_"):].isdigit() and os.path.isdir(p)]
    return max(found, key=checkpoint_iteration) if found else None


class CheckpointFolder:
    """The checkpoints of one retraining in ``folder``, whose owner keys it by everything that
    decides the retraining (a benchmark unit's step folder): its last one is resumed."""

    def __init__(self, folder):
        self.folder = folder
        self.resumed = {}

    def retraining(self, plan=None):
        """(``folder``, the checkpoint to resume from or None)."""
        checkpoint = last_checkpoint(self.folder)
        if checkpoint:
            self.resumed["retraining_from_iter"] = checkpoint_iteration(checkpoint)
        return self.folder, checkpoint


class KilledRunState(SearchFolder):
    """``save_dir/resume/``: ``state.json`` (the target's snapshot of the allocation, the plan
    retrained) and ``retraining/iter_N``, the final retraining's last checkpoint."""

    def __init__(self, o, cfg, sensitivities):
        # the whole config: its training data, optimizer, schedule and loss decide the
        # retraining, not only the model and val set that the analyses' setup names
        key = options_fingerprint(o, RETRAINING_OPTIONS + ALLOCATION_OPTIONS,
                                  setup=setup_facts(cfg, o.model_path, None),
                                  config=json_digest(cfg.dic),
                                  sensitivities=json_digest(sensitivities))
        super().__init__(o.save_dir, RESUME_DIR, key,
                         f"{os.path.join(o.save_dir, RESUME_DIR)} holds what a killed run with "
                         "other options or weights left: this run starts over")
        self.state = self.read()
        self.checkpoints = os.path.join(self.folder, RETRAINING_CHECKPOINTS)
        self.resumed = {}   # what this run took from a killed one (report.json "resumed")

    def restored_allocation(self, target):
        """The killed run's allocation made the target's again, or None."""
        snapshot = self.state.get("target_state")
        if snapshot is None:
            return None
        alloc = target.restore(snapshot)
        self.resumed["allocation"] = True
        logger.info(f"allocation: restored from the killed run's state ({self.path}), not "
                    "allocated again")
        return alloc

    def keep_allocation(self, target, alloc):
        self.state = {"target_state": target.snapshot(alloc)}
        self._save()

    def retraining(self, plan):
        """(the folder for the final retraining's checkpoints, the one to resume from or None).
        Checkpoints of another plan, or of a job's ranks, are not resumed."""
        if world_size() > 1:
            return None, None
        if self.state.get("plan") != plan_key(plan):
            shutil.rmtree(self.checkpoints, ignore_errors=True)
            self.state = dict(self.state, plan=plan_key(plan))
            self._save()
            return self.checkpoints, None
        folder = CheckpointFolder(self.checkpoints)
        found = folder.retraining()
        self.resumed.update(folder.resumed)
        return found

    def _save(self):
        self.write(self.state, keep_steps=[])
