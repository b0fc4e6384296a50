"""A pruning run's output folder, switched in as a whole.

Everything a run publishes (``model.pdparams``, ``prune_plan.json``, ``export/``, the reports
and the plot) is built in a staging folder beside ``save_dir`` (``.staging.NAME.PID`` in its
parent, so on the same file system), flushed to disk, and switched in with one rename: on Linux
an exchange of the two folders (renameat2), so ``save_dir`` holds the complete old set or the
complete new set at every moment, even across a power cut. Where the exchange is not available
the old folder is first renamed aside (``.old.NAME.PID``) and the next run puts it back if the
switch was cut between its two renames.

``save_dir`` is ours as a whole, so it must be new, empty, or an earlier run's output: the names
above, sensitivity files and our temporaries. Anything else is refused before any work and never
deleted. The sensitivity file this run used (written there during the run, resumable), and the
part files beside it, are carried into the new folder; any other file of an earlier run is not.
It must not hold the checkpoint the run reads (``--model_path``): that would be replaced too.
"""
import errno
import os
import shutil

from ...core.export import EXPORT_FILES
from ...utils.fileio import (OutputPathError, check_folder_target, check_parent_folder,
                            exchange_paths, foreign_entries,
                            fsync_path, fsync_tree, left_by_dead_process,
                            remove_stale_temporaries, removed_if_left_empty)
from ..sensitivity import part_file_names

PUBLISHED_FILES = ("model.pdparams", "prune_plan.json", "report.json", "report.md",
                   "sensitivity.png")
EXPORT_DIR = "export"
STEPS_DIR = "prune_steps"  # --prune_steps: the finished steps' models, for a killed run to resume
STEPS_STATE = "state.json"  # in STEPS_DIR, beside step_N/ folders
BUDGET_DIR = "budget_search"  # --max_miou_drop: the finished steps' records (its STEPS_STATE)
TRIAL_DIR = "allocation_trial"  # --trial_allocations: the finished candidates' records
RESUME_DIR = "resume"  # the allocation and the final retraining's checkpoints of a killed run
RETRAINING_CHECKPOINTS = "retraining"  # in RESUME_DIR: its iter_N checkpoint
DEFAULT_SEN_FILE = "sensitivity.json"
LEGACY_SEN_FILE = "sen.pickle"  # the default before sensitivity.json
STAGING, ASIDE = ".staging", ".old"
# exchange_paths errors that mean "not here" (no renameat2, or a file system without it)
NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def sensitivity_names(save_dir, sen_file=None):
    """Names of the sensitivity files save_dir may hold (carried over, never deleted), with
    the part files a killed multi-rank analysis left beside them."""
    names = {DEFAULT_SEN_FILE, LEGACY_SEN_FILE}
    if sen_file and _same_path(os.path.dirname(os.path.abspath(sen_file)), save_dir):
        names.add(os.path.basename(sen_file))
    return names | {part for name in names for part in part_file_names(save_dir, name)}


def carried_names(save_dir, sen_file=None):
    """Names of the files publish() carries from the old save_dir into the new one: this run's
    sensitivity file (``sen_file``, default save_dir/sensitivity.json) when it lies in save_dir,
    with its part files. Another run's sensitivity file there was not used by this run: the new
    output does not keep it."""
    if sen_file and not _same_path(os.path.dirname(os.path.abspath(sen_file)), save_dir):
        return set()
    name = os.path.basename(sen_file) if sen_file else DEFAULT_SEN_FILE
    return {name, *part_file_names(save_dir, name)}


def check_input_outside(model_path, save_dir):
    """OutputPathError when ``save_dir`` (replaced as a whole) holds the checkpoint the run
    reads: ``model_path``, a file or a folder (compared by real paths)."""
    if model_path and (_same_path(model_path, save_dir) or _inside(model_path, save_dir)):
        raise OutputPathError(
            f"--save_dir {save_dir} holds the input checkpoint --model_path {model_path}, which "
            "the pruned output would replace; choose another --save_dir")


def _same_path(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(path, folder):
    return os.path.realpath(path).startswith(os.path.realpath(folder).rstrip(os.sep) + os.sep)


def _is_temporary(name):
    # ours: atomic writes' ".tmp.NAME.PID" and the staging folder of older versions
    return name.startswith((".tmp.", STAGING + ".")) and name.rsplit(".", 1)[-1].isdigit()


def _is_previous_export(folder):
    return os.path.isdir(folder) and not foreign_entries(folder, set(EXPORT_FILES))


def _is_previous_steps(folder):
    """A killed run's resumable state (--prune_steps, --max_miou_drop, --trial_allocations, or
    the allocation and retraining of any run): its state file, step_N/ folders and retraining
    checkpoints only."""
    if not os.path.isdir(folder) or os.path.islink(folder):
        return False
    return all(name in (STEPS_STATE, RETRAINING_CHECKPOINTS) or _is_temporary(name)
               or (name.startswith("step_") and name[len("step_"):].isdigit())
               for name in os.listdir(folder))


def check_save_dir(save_dir, sen_file=None):
    """OutputPathError unless ``save_dir`` is absent, empty or an earlier pruning output."""
    check_folder_target(save_dir)
    check_parent_folder(save_dir, "--save_dir")
    if sen_file:
        check_parent_folder(sen_file, "--sen_file")
    if _same_path(save_dir, os.getcwd()) or _inside(os.getcwd(), save_dir):
        raise OutputPathError(f"--save_dir {save_dir} is the current folder or holds it; "
                              "choose a folder inside it")
    check_sen_file_place(save_dir, sen_file)
    if not os.path.isdir(save_dir):
        return
    own = set(PUBLISHED_FILES) | sensitivity_names(save_dir, sen_file)
    foreign = [name for name in foreign_entries(save_dir, own) if not _is_temporary(name)
               and not (name == EXPORT_DIR and _is_previous_export(os.path.join(save_dir, name)))
               and not (name in (STEPS_DIR, BUDGET_DIR, TRIAL_DIR, RESUME_DIR)
                        and _is_previous_steps(os.path.join(save_dir, name)))]
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputPathError(
            f"--save_dir {save_dir} already holds {listed}, which prune.py did not write; choose "
            "a new or empty folder (an earlier pruning output there is replaced as a whole)")


def check_sen_file_place(save_dir, sen_file):
    """A sensitivity file inside save_dir must sit directly in it, under a name of its own:
    the folder is replaced as a whole, and only its top-level sensitivity files are carried."""
    if not sen_file or not _inside(sen_file, save_dir):
        return
    name = os.path.basename(sen_file)
    if not _same_path(os.path.dirname(os.path.abspath(sen_file)), save_dir):
        raise OutputPathError(f"--sen_file {sen_file} is in a subfolder of --save_dir; put it "
                              "directly in --save_dir or outside it")
    if name in PUBLISHED_FILES or name == EXPORT_DIR:
        raise OutputPathError(f"--sen_file {sen_file} would be overwritten by the pruned "
                              f"model's {name}; choose another name")


def _sibling(save_dir, kind, pid=None):
    path = os.path.realpath(save_dir)
    return os.path.join(os.path.dirname(path), f"{kind}.{os.path.basename(path)}.{pid or os.getpid()}")


def recover(save_dir):
    """Undo what a killed run left: put back an output folder set aside by a switch that was cut
    short, and remove stale staging folders and temporary files (of dead processes only)."""
    path = os.path.realpath(save_dir)
    parent, name = os.path.split(path)
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        for kind in (ASIDE, STAGING):
            if left_by_dead_process(entry, f"{kind}.{name}"):
                stale = os.path.join(parent, entry)
                if kind == ASIDE and not os.path.lexists(path):
                    os.rename(stale, path)  # the switch was cut between its two renames
                else:
                    shutil.rmtree(stale)
    if os.path.isdir(path):
        remove_stale_temporaries(path)


def make_stage(save_dir):
    """A new, empty staging folder beside ``save_dir`` (its parent is made if needed)."""
    stage = _sibling(save_dir, STAGING)
    os.makedirs(os.path.dirname(stage), exist_ok=True)
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    return stage


def discard(stage):
    shutil.rmtree(stage, ignore_errors=True)


def _carry(src, dst):
    # a hard link is instant and shares the data; copy where links are not allowed
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish(stage, save_dir, sen_file=None):
    """Switch the complete ``stage`` in as ``save_dir`` in one step; the old output goes."""
    path = os.path.realpath(save_dir)
    for name in sorted(carried_names(save_dir, sen_file)):
        src = os.path.join(path, name)
        if os.path.isfile(src) and not os.path.lexists(os.path.join(stage, name)):
            _carry(src, os.path.join(stage, name))
    fsync_tree(stage)  # the content is on disk before any name points at it
    if not os.path.lexists(path):
        os.rename(stage, path)
    else:
        try:
            exchange_paths(stage, path)
        except OSError as e:
            if e.errno not in NO_EXCHANGE:
                raise
            _switch_by_two_renames(stage, path)
        else:
            shutil.rmtree(stage)  # the old output, now under the staging name
    fsync_path(os.path.dirname(path))


def staged_run(save_dir, sen_file, build):
    """``build(stage)`` writes a run's outputs into a fresh staging folder, which then replaces
    ``save_dir`` in one step; returns what ``build`` returns. A failed run discards the stage
    and leaves no ``save_dir`` it made (a resumable sensitivity file in it stays)."""
    with removed_if_left_empty(save_dir):
        recover(save_dir)
        stage = make_stage(save_dir)
        try:
            result = build(stage)
            publish(stage, save_dir, sen_file)
        except BaseException:
            discard(stage)
            raise
    return result


def _switch_by_two_renames(stage, path):
    aside = _sibling(path, ASIDE)
    os.rename(path, aside)
    try:
        os.rename(stage, path)
    except BaseException:
        os.rename(aside, path)
        raise
    shutil.rmtree(aside)
