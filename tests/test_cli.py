"""train.py / val.py on bad input: exit non-zero with one 'error:' line and no traceback.

The scripts run in this process, through ``cli.run(main, argv)`` as their ``__main__`` does
(conftest.run_cli); test_train.py::test_acceptance_run_and_val runs them as programs."""
import os
import shutil

import cv2
import paddle
import pytest

from conftest import run_cli, write_tiny_config


def run(script, *args, timeout=None):
    return run_cli(script, *args, timeout=timeout)


def assert_user_error(proc, *needles):
    err = proc.stderr
    assert proc.returncode != 0, (proc.stdout, err)
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("error:"), err
    for needle in needles:
        assert needle in last, (needle, last)
    return last


def test_missing_config(tmp_path):
    missing = tmp_path / "nope.yml"
    proc = run("train.py", "--config", missing, "--save_dir", tmp_path / "out")
    assert_user_error(proc, "config file not found", str(missing))
    assert proc.returncode == 2
    assert not (tmp_path / "out").exists()


def test_malformed_yaml(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text("batch_size: 2\nmodel:\n  type: [BiSeNetV2\n  num_classes: 2\n")
    proc = run("train.py", "--config", path, "--save_dir", tmp_path / "out")
    assert_user_error(proc, "malformed YAML", str(path), "line ")


def test_unknown_model_type(tmp_path, tiny_optic_root):
    cfg = write_tiny_config(tmp_path / "c.yml", tiny_optic_root, model="NoSuchNet")
    proc = run("train.py", "--config", cfg, "--iters", 1, "--save_dir", tmp_path / "out")
    assert_user_error(proc, "unknown models type 'NoSuchNet'", "BiSeNetV2", "UNet")


def test_debug_shows_the_traceback(tmp_path, tiny_optic_root):
    cfg = write_tiny_config(tmp_path / "c.yml", tiny_optic_root, model="NoSuchNet")
    proc = run("train.py", "--config", cfg, "--iters", 1, "--save_dir", tmp_path / "out", "--debug")
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "ConfigError: unknown models type 'NoSuchNet'" in proc.stderr


def generic_config(tmp_path, tiny_optic_root, dataset_root, train_list):
    """The tiny config with a generic ``Dataset`` train set."""
    cfg = write_tiny_config(tmp_path / "generic.yml", tiny_optic_root)
    text = open(cfg).read().replace(
        f"""train_dataset:
  type: OpticDiscSeg
  dataset_root: {tiny_optic_root}
""", f"""train_dataset:
  type: Dataset
  dataset_root: {dataset_root}
  train_path: {train_list}
  num_classes: 2
""")
    assert "type: Dataset" in text
    with open(cfg, "w") as f:
        f.write(text)
    return cfg


def test_missing_dataset_root(tmp_path, tiny_optic_root):
    missing = tmp_path / "no_such_data"
    cfg = generic_config(tmp_path, tiny_optic_root, missing, "train_list.txt")
    proc = run("train.py", "--config", cfg, "--iters", 1, "--save_dir", tmp_path / "out")
    assert_user_error(proc, "dataset_root not found", str(missing))


def test_missing_dataset_root_given_by_opts(tmp_path, tiny_optic_root):
    missing = tmp_path / "elsewhere"
    cfg = generic_config(tmp_path, tiny_optic_root, tiny_optic_root, "train_list.txt")
    proc = run("train.py", "--config", cfg, "--iters", 1, "--save_dir", tmp_path / "out",
               "--opts", f"train_dataset.dataset_root={missing}")
    assert_user_error(proc, "dataset_root not found", str(missing))


def test_list_file_naming_a_missing_image(tmp_path, tiny_optic_root):
    lst = tmp_path / "train_list.txt"
    lines = open(os.path.join(tiny_optic_root, "train_list.txt")).read()
    lst.write_text(lines + "JPEGImages/gone.jpg Annotations/syn_0000.png\n")
    cfg = generic_config(tmp_path, tiny_optic_root, tiny_optic_root, lst)
    proc = run("train.py", "--config", cfg, "--iters", 1, "--save_dir", tmp_path / "out")
    assert_user_error(proc, "missing file", os.path.join(tiny_optic_root, "JPEGImages/gone.jpg"))


def test_label_value_not_below_num_classes(tmp_path, tiny_optic_root):
    root = tmp_path / "optic"
    shutil.copytree(tiny_optic_root, root)
    bad = root / "Annotations" / "syn_0001.png"
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    label[3, 3] = 7
    cv2.imwrite(str(bad), label)
    cfg = write_tiny_config(tmp_path / "c.yml", root)
    # batch 4 = the whole set, so the bad label is read in the first batch
    proc = run("train.py", "--config", cfg, "--iters", 2, "--batch_size", 4,
               "--save_dir", tmp_path / "out", timeout=60)  # it used to hang
    assert_user_error(proc, str(bad), "value 7", "num_classes is 2")
    assert proc.returncode == 2


def test_bad_flag_value(tmp_path, tiny_config):
    proc = run("train.py", "--config", tiny_config, "--iters", 0, "--save_dir", tmp_path / "out")
    assert_user_error(proc, "--iters must be >= 1")
    proc = run("train.py", "--config", tiny_config, "--device", "tpu")
    assert_user_error(proc, "--device")


def test_val_model_path_missing(tmp_path, tiny_config):
    missing = tmp_path / "nothing" / "model.pdparams"
    proc = run("val.py", "--config", tiny_config, "--model_path", missing)
    assert_user_error(proc, "model file not found", str(missing))


def test_val_checkpoint_of_another_model(tmp_path, tiny_config):
    other = paddle.nn.Sequential(paddle.nn.Conv2D(3, 4, 3), paddle.nn.ReLU(),
                                 paddle.nn.Conv2D(4, 2, 1))
    path = tmp_path / "other.pdparams"
    paddle.save(other.state_dict(), str(path))
    proc = run("val.py", "--config", tiny_config, "--model_path", path)
    assert_user_error(proc, str(path), "does not belong to this model")


def test_val_corrupt_checkpoint(tmp_path, tiny_config):
    path = tmp_path / "model.pdparams"
    path.write_bytes(b"this is not a pickle")
    proc = run("val.py", "--config", tiny_config, "--model_path", path)
    assert_user_error(proc, "cannot read", str(path))


# -- issue 9: more bad input, and a failed run leaves no empty folder it made -----------------

@pytest.mark.parametrize("lr", ["-0.01", "0"])
def test_learning_rate_must_be_positive(tmp_path, tiny_config, lr):
    proc = run("train.py", "--config", tiny_config, "--iters", 1, "--learning_rate", lr,
               "--save_dir", tmp_path / "out")
    assert_user_error(proc, "--learning_rate must be > 0", lr)
    assert not (tmp_path / "out").exists()


def test_save_dir_that_is_a_file(tmp_path, tiny_config):
    a_file = tmp_path / "out"
    a_file.write_text("keep")
    proc = run("train.py", "--config", tiny_config, "--iters", 1, "--save_dir", a_file)
    assert_user_error(proc, str(a_file), "is an existing file, not a folder")
    assert a_file.read_text() == "keep"


def test_unknown_opts_key_and_base_cycle(tmp_path, tiny_config):
    proc = run("train.py", "--config", tiny_config, "--opts", "iter=1", "--save_dir", tmp_path / "o")
    assert_user_error(proc, "unknown top-level key 'iter'")
    (tmp_path / "a.yml").write_text("_base_: b.yml\n")
    (tmp_path / "b.yml").write_text("_base_: a.yml\n")
    proc = run("train.py", "--config", tmp_path / "a.yml", "--save_dir", tmp_path / "o")
    assert_user_error(proc, "_base_ cycle", "a.yml -> ", "b.yml -> ")
    assert not (tmp_path / "o").exists()


def test_label_of_another_size_is_named_and_no_empty_save_dir_is_left(tmp_path, tiny_optic_root):
    root = tmp_path / "optic"
    shutil.copytree(tiny_optic_root, root)
    bad = root / "Annotations" / "syn_0002.png"
    label = cv2.imread(str(bad), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(bad), label[:-5])
    cfg = write_tiny_config(tmp_path / "c.yml", root)
    save_dir = tmp_path / "runs" / "first"
    # batch 4 = the whole set, so the bad label is read in the first batch
    proc = run("train.py", "--config", cfg, "--iters", 1, "--batch_size", 4, "--save_dir", save_dir)
    assert_user_error(proc, str(bad), str(root / "JPEGImages" / "syn_0002.jpg"))
    assert not (tmp_path / "runs").exists()  # train made runs/first, then failed in the first batch


def test_import_leaves_deprecation_warnings_alone():
    """`import paddleseg` must not change the caller's warning filters process-wide."""
    import subprocess
    import sys
    code = ("import warnings; before = list(warnings.filters); import paddleseg, paddleseg.models; "
            "added = [f for f in warnings.filters if f not in before]; "
            "print(any(f[2] is DeprecationWarning and f[0] == 'ignore' for f in added))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1000:]
    assert out.stdout.strip() == "False"
