"""Output paths that must never cost the user a file (issue 9): the atomic writers of
paddleseg.utils.fileio refuse to replace what is not a previous output of theirs, and a failed
run leaves no empty folder it made (prune.py here; train.py in test_cli, export.py in
test_export)."""
import os

import paddle
import pytest
import yaml

from conftest import run_cli
from paddleseg.utils import UserError
from paddleseg.utils.checkpoint import save_checkpoint
from paddleseg.utils.fileio import (OutputPathError, atomic_dir, atomic_path, removed_if_left_empty,
                                    write_text)


def make_folder(path, files, subfolders=()):
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    for name in subfolders:
        (path / name).mkdir()
    return path


def listing(path):
    return sorted(os.listdir(path))


def no_temporaries(folder):
    return not [n for n in os.listdir(folder) if n.startswith(".tmp")]


def test_output_path_error_is_a_user_error():
    assert issubclass(OutputPathError, UserError)


@pytest.mark.parametrize("files,subfolders", [({"a.txt": "mine"}, ()), ({}, ("iter_1",)),
                                              ({"out.txt": "old", "keep.txt": "mine"}, ())])
def test_a_folder_is_not_replaced_when_it_holds_more_than_the_new_one(tmp_path, files, subfolders):
    target = make_folder(tmp_path / "out", files, subfolders)
    with pytest.raises(OutputPathError, match="refusing to replace"):
        with atomic_dir(str(target)) as tmp:
            with open(os.path.join(tmp, "out.txt"), "w") as f:
                f.write("new")
    assert listing(target) == sorted([*files, *subfolders])
    for name, text in files.items():
        assert (target / name).read_text() == text
    assert no_temporaries(tmp_path)


def test_a_previous_output_of_the_same_kind_is_replaced(tmp_path):
    target = make_folder(tmp_path / "out", {"out.txt": "old", "extra.txt": "old"})
    with atomic_dir(str(target), own_names=("out.txt", "extra.txt")) as tmp:
        with open(os.path.join(tmp, "out.txt"), "w") as f:
            f.write("new")
    assert listing(target) == ["out.txt"] and (target / "out.txt").read_text() == "new"
    with atomic_dir(str(target)) as tmp:  # same names: no list needed
        with open(os.path.join(tmp, "out.txt"), "w") as f:
            f.write("newer")
    assert (target / "out.txt").read_text() == "newer" and no_temporaries(tmp_path)


def test_own_names_are_checked_before_the_work(tmp_path):
    target = make_folder(tmp_path / "out", {"notes.txt": "mine"})
    with pytest.raises(OutputPathError, match="notes.txt"):
        with atomic_dir(str(target), own_names=("out.txt",)):
            pytest.fail("the body must not run")
    assert listing(target) == ["notes.txt"]


def test_a_file_never_replaces_a_folder_nor_a_folder_a_file(tmp_path):
    folder = make_folder(tmp_path / "report.json", {"x": "mine"})
    with pytest.raises(OutputPathError, match="is an existing folder, not a file path"):
        write_text(str(folder), "{}")
    assert listing(folder) == ["x"]
    a_file = tmp_path / "out"
    a_file.write_text("mine")
    with pytest.raises(OutputPathError, match="is an existing file, not a folder"):
        with atomic_dir(str(a_file)) as tmp:
            pytest.fail(f"the body must not run ({tmp})")
    with pytest.raises(OutputPathError, match="is an existing file, not a folder"):
        with atomic_path(str(a_file)) as tmp:  # the kind is known only at the end here
            os.makedirs(tmp)
    assert a_file.read_text() == "mine" and no_temporaries(tmp_path)


def test_a_link_to_a_previous_output_is_replaced_not_followed(tmp_path):
    real = make_folder(tmp_path / "real", {"out.txt": "old"})
    link = tmp_path / "link"
    os.symlink(real, link)
    with atomic_dir(str(link)) as tmp:
        with open(os.path.join(tmp, "out.txt"), "w") as f:
            f.write("new")
    assert not os.path.islink(link) and (link / "out.txt").read_text() == "new"
    assert (real / "out.txt").read_text() == "old"  # what the link pointed to is untouched


def test_a_checkpoint_folder_holding_other_files_is_not_replaced(tmp_path):
    model = paddle.nn.Linear(2, 2)
    ckpt = tmp_path / "iter_5"
    save_checkpoint(str(ckpt), model)
    save_checkpoint(str(ckpt), model, extra_files={"model_info.json": lambda p: write_text(p, "{}")})
    save_checkpoint(str(ckpt), model)  # an older checkpoint's model_info.json may go
    assert listing(ckpt) == ["model.pdparams"]
    (ckpt / "notes.txt").write_text("mine")
    with pytest.raises(OutputPathError, match="notes.txt"):
        save_checkpoint(str(ckpt), model)
    assert listing(ckpt) == ["model.pdparams", "notes.txt"]


def test_removed_if_left_empty_removes_only_empty_folders_it_made(tmp_path):
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(RuntimeError):
        with removed_if_left_empty(str(existing)):
            raise RuntimeError("failed")
    assert existing.is_dir()  # it was there before

    deep = tmp_path / "a" / "b" / "c"
    with pytest.raises(RuntimeError):
        with removed_if_left_empty(str(deep)):
            os.makedirs(deep)
            raise RuntimeError("failed")
    assert listing(tmp_path) == ["existing"]

    with pytest.raises(RuntimeError):
        with removed_if_left_empty(str(deep)):
            os.makedirs(deep.parent)  # the run failed before making c itself
            raise RuntimeError("failed")
    assert listing(tmp_path) == ["existing"]

    with pytest.raises(KeyboardInterrupt):
        with removed_if_left_empty(str(deep)):
            os.makedirs(deep)
            (deep.parent / "log.txt").write_text("written before the failure")
            raise KeyboardInterrupt
    assert listing(tmp_path / "a" / "b") == ["log.txt"]  # c went, what was written stays

    with removed_if_left_empty(str(tmp_path / "ok")):
        os.makedirs(tmp_path / "ok")
    assert (tmp_path / "ok").is_dir()  # success keeps even an empty folder


def test_failed_prune_leaves_no_empty_folders_it_made(tmp_path, tiny_config):
    pytest.importorskip("paddleseg.slim")
    cfg = yaml.safe_load(open(tiny_config))
    del cfg["val_dataset"]  # pruning fails once it has made save_dir: it needs a val set
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    save_dir = tmp_path / "runs" / "pruned"
    proc = run_cli(os.path.join("slim", "prune", "prune.py"),
                   "--config", tmp_path / "c.yml", "--pruning_ratio", "0.3",
                   "--retraining_iters", "0", "--save_dir", save_dir)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "val_dataset" in proc.stderr
    assert listing(tmp_path) == ["c.yml"]
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    proc = run_cli(os.path.join("slim", "prune", "prune.py"),
                   "--config", tmp_path / "c.yml", "--pruning_ratio", "0.3",
                   "--retraining_iters", "0", "--save_dir", a_file)
    assert proc.returncode == 2 and "is an existing file, not a folder" in proc.stderr, proc.stderr
    assert a_file.read_text() == "keep"
