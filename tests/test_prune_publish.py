"""Publishing a pruning output (paddleseg.slim.output.publish): one switch, whatever moment a run is
killed at; stale staging cleaned up; a save_dir holding anything else refused untouched."""
import errno
import os
import subprocess
import sys

import pytest

from paddleseg.slim.output import publish as pub
from paddleseg.utils.errors import UserError

OLD = {"model.pdparams": "old weights", "prune_plan.json": "old plan",
       "report.json": "old report", "export/deploy.yaml": "old deploy",
       "sensitivity.json": "measured points"}
NEW = {"model.pdparams": "new weights", "prune_plan.json": "new plan",
       "report.json": "new report", "export/deploy.yaml": "new deploy"}
NEW_PUBLISHED = dict(NEW, **{"sensitivity.json": OLD["sensitivity.json"]})  # carried over
KILLED = 137


def write_tree(root, files):
    for rel, text in files.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def read_tree(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path) as f:
                found[os.path.relpath(path, root)] = f.read()
    return found


def ours_beside(save_dir):
    """Staging / set-aside folders of ``save_dir`` in its parent."""
    parent, name = os.path.split(str(save_dir))
    return sorted(n for n in os.listdir(parent)
                  if n.startswith((f".staging.{name}.", f".old.{name}.")))


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def old_and_stage(tmp_path):
    save_dir = tmp_path / "out"
    write_tree(save_dir, OLD)
    stage = pub.make_stage(str(save_dir))
    write_tree(stage, NEW)
    return str(save_dir), stage


def publish_killed_at(step, save_dir, exchange):
    """Stage NEW and publish it in a forked child that dies (os._exit: no cleanup, as under
    SIGKILL) just before its ``step``-th file-system change; returns the child's exit code."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            stage = pub.make_stage(save_dir)  # named after the child, as a real run's is
            write_tree(stage, NEW)
            done = [0]

            def dying(fn):
                def step_then_call(*args, **kwargs):
                    if done[0] == step:
                        os._exit(KILLED)
                    done[0] += 1
                    return fn(*args, **kwargs)
                return step_then_call

            for name in ("rename", "link", "unlink", "rmdir"):
                setattr(os, name, dying(getattr(os, name)))
            pub.exchange_paths = dying(exchange)
            pub.publish(stage, save_dir)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def no_exchange(a, b):
    raise OSError(errno.ENOSYS, "renameat2 is not available")


@pytest.mark.parametrize("exchange", [pub.exchange_paths, no_exchange],
                         ids=["exchange", "two-renames"])
def test_a_kill_at_any_step_leaves_the_old_or_the_new_output(exchange, tmp_path):
    outcomes = []
    for step in range(100):
        case = tmp_path / f"step{step}"
        case.mkdir()
        save_dir = str(case / "out")
        write_tree(save_dir, OLD)
        code = publish_killed_at(step, save_dir, exchange)
        assert code in (0, KILLED), f"publish failed at step {step} (exit {code})"
        now = read_tree(save_dir) if os.path.isdir(save_dir) else None
        if now is None:  # only between the two renames of the fallback, with the old set aside
            assert exchange is no_exchange, f"step {step}: save_dir missing"
            aside = [n for n in ours_beside(save_dir) if n.startswith(".old.")]
            assert len(aside) == 1 and read_tree(os.path.join(case, aside[0])) == OLD
        else:
            assert now in (OLD, NEW_PUBLISHED), f"step {step}: a mix {now}"
        pub.recover(save_dir)  # what the next run does first
        after = read_tree(save_dir)
        assert after in (OLD, NEW_PUBLISHED), f"step {step}, after recovery: {after}"
        assert ours_beside(save_dir) == [], f"step {step}: left {ours_beside(save_dir)}"
        outcomes.append(after == NEW_PUBLISHED)
        if code == 0:
            break
    else:
        pytest.fail("publish never completed")
    # every kill point was tried: early kills keep the old set, late ones show the new
    assert outcomes[0] is False and outcomes[-1] is True and len(outcomes) >= 4, outcomes


def test_publish_into_a_new_folder(tmp_path):
    save_dir = str(tmp_path / "a" / "out")
    stage = pub.make_stage(save_dir)
    write_tree(stage, NEW)
    pub.publish(stage, save_dir)
    assert read_tree(save_dir) == NEW
    assert ours_beside(save_dir) == []


def test_a_failing_second_rename_puts_the_old_output_back(tmp_path, monkeypatch):
    save_dir, stage = old_and_stage(tmp_path)
    monkeypatch.setattr(pub, "exchange_paths", no_exchange)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # staging -> save_dir, after save_dir was set aside
            raise OSError(errno.EIO, "disk error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="disk error"):
        pub.publish(stage, save_dir)
    monkeypatch.undo()
    assert read_tree(save_dir) == OLD
    assert [n for n in ours_beside(save_dir) if n.startswith(".old.")] == []


def test_an_exchange_error_leaves_the_old_output(tmp_path, monkeypatch):
    save_dir, stage = old_and_stage(tmp_path)

    def broken(a, b):
        raise OSError(errno.EIO, "disk error")

    monkeypatch.setattr(pub, "exchange_paths", broken)
    with pytest.raises(OSError, match="disk error"):
        pub.publish(stage, save_dir)
    assert read_tree(save_dir) == OLD


def test_the_published_files_are_flushed_to_disk_before_the_switch(tmp_path, monkeypatch):
    save_dir, stage = old_and_stage(tmp_path)
    synced = []
    monkeypatch.setattr(pub, "fsync_tree", lambda root: synced.append(("tree", read_tree(root))))
    monkeypatch.setattr(pub, "fsync_path", lambda path: synced.append(("dir", path)))
    pub.publish(stage, save_dir)
    assert synced[0] == ("tree", NEW_PUBLISHED)            # the whole new set, before the switch
    assert synced[-1] == ("dir", os.path.dirname(os.path.realpath(save_dir)))  # the rename itself


def test_a_killed_runs_leftovers_go_and_live_ones_stay(tmp_path):
    save_dir = tmp_path / "out"
    write_tree(save_dir, OLD)
    gone, alive = dead_pid(), os.getppid()
    stale = [tmp_path / f".staging.out.{gone}", save_dir / f".tmp.sensitivity.json.{gone}",
             save_dir / f".staging.{gone}"]   # the last: staging inside save_dir (older versions)
    kept = [tmp_path / f".staging.out.{alive}", tmp_path / f".staging.other.{gone}",
            tmp_path / f".staging.out.x.{gone}"]  # a live run's; another folder's
    for path in stale + kept:
        path.mkdir() if "tmp.sens" not in path.name else path.write_text("half")
    pub.recover(str(save_dir))
    assert [p.name for p in stale if p.exists()] == []
    assert [p.name for p in kept if not p.exists()] == []
    assert read_tree(save_dir) == OLD


def test_a_set_aside_output_is_put_back(tmp_path):
    save_dir = tmp_path / "out"
    aside = tmp_path / f".old.out.{dead_pid()}"
    write_tree(aside, OLD)
    pub.recover(str(save_dir))
    assert read_tree(save_dir) == OLD and not aside.exists()


# -- what save_dir may hold ---------------------------------------------------------------------
def test_an_earlier_output_or_an_empty_folder_is_accepted(tmp_path):
    write_tree(tmp_path / "out", dict(OLD, **{"export/model.pdmodel": "m", "sen.pickle": "x",
                                              "report.md": "r", "sensitivity.png": "p",
                                              ".tmp.report.json.123": "half"}))
    pub.check_save_dir(str(tmp_path / "out"))
    (tmp_path / "empty").mkdir()
    pub.check_save_dir(str(tmp_path / "empty"))
    pub.check_save_dir(str(tmp_path / "new"))
    write_tree(tmp_path / "custom", {"my_sen.json": "{}", "model.pdparams": "w"})
    pub.check_save_dir(str(tmp_path / "custom"), sen_file=str(tmp_path / "custom" / "my_sen.json"))


@pytest.mark.parametrize("extra", [{"notes.txt": "mine"}, {"iter_2/model.pdparams": "w"},
                                   {"export/my_model.onnx": "mine"}, {"my_sen.json": "{}"}])
def test_a_folder_holding_anything_else_is_refused(extra, tmp_path):
    save_dir = tmp_path / "out"
    write_tree(save_dir, dict(OLD, **extra))
    before = read_tree(save_dir)
    with pytest.raises(UserError, match="prune.py did not write") as err:
        pub.check_save_dir(str(save_dir))
    assert extra and next(iter(extra)).split("/")[0] in str(err.value)
    assert read_tree(save_dir) == before


def test_bad_save_dir_and_sen_file_places_are_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        pub.check_save_dir(str(tmp_path / "file"))
    with pytest.raises(UserError, match="subfolder"):
        pub.check_save_dir(str(tmp_path / "out"), sen_file=str(tmp_path / "out" / "s" / "x.json"))
    with pytest.raises(UserError, match="overwritten"):
        pub.check_save_dir(str(tmp_path / "out"), sen_file=str(tmp_path / "out" / "report.json"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="current folder"):
        pub.check_save_dir(".")
