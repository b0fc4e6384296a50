"""Hardening findings of issue 21: file names that are not UTF-8, checkpoints whose values are not
finite or not float, oversized configs, misleading messages, and errors under
paddle.distributed.launch."""
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT, tiny_model

PY = sys.executable
BAD = os.fsdecode(b"bad\xff")  # a file-name part that is not UTF-8 (surrogate-escaped in Python)


def run_script(script, *args, env=None):
    """Run one of our scripts in a child process (a native crash must not take pytest down)."""
    full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([PY, os.path.join(ROOT, script), *args], capture_output=True,
                          text=True, errors="backslashreplace", env=full_env, timeout=300)


def one_line_error(proc):
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# -- 1. file names that are not UTF-8 ------------------------------------------------------------

@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from paddleseg.core import export as ex
    out = str(tmp_path_factory.mktemp("export") / "fastscnn")
    ex.export_model(tiny_model(0), out, model_type="FastSCNN",
                    val_transforms_config=[{"type": "Resize", "target_size": [64, 64]},
                                           {"type": "Normalize"}])
    return out


@pytest.fixture(scope="module")
def odd_names(tmp_path_factory):
    """A folder with an image and a broken image, both named with bytes that are not UTF-8."""
    folder = str(tmp_path_factory.mktemp("odd"))
    ok, buf = cv2.imencode(".jpg", np.random.RandomState(0).randint(0, 255, (40, 30, 3), np.uint8))
    with open(os.path.join(folder, BAD + ".jpg"), "wb") as f:
        f.write(buf.tobytes())
    images = os.path.join(folder, "images")
    os.mkdir(images)
    with open(os.path.join(images, BAD + ".jpg"), "wb") as f:
        f.write(buf.tobytes())
    with open(os.path.join(folder, "junk" + BAD + ".png"), "wb") as f:
        f.write(b"not an image")
    return folder


def test_shown_makes_any_name_printable():
    from paddleseg.utils.image_io import shown
    assert shown(BAD + ".jpg") == "bad\\xff.jpg"
    assert shown(b"bad\xff.jpg") == "bad\\xff.jpg"
    assert shown("café.png") == "café.png"
    shown("\ud800").encode("utf-8")  # a lone surrogate too


def test_read_image_reads_a_name_that_is_not_utf8(odd_names):
    from paddleseg.utils import UserError
    from paddleseg.utils.image_io import read_image
    assert read_image(os.path.join(odd_names, BAD + ".jpg")).shape == (40, 30, 3)
    assert read_image(os.fsencode(os.path.join(odd_names, BAD + ".jpg"))).shape == (40, 30, 3)
    with pytest.raises(UserError, match=r"cannot read image .*junkbad\\xff\.png: not an image"):
        read_image(os.path.join(odd_names, "junk" + BAD + ".png"))
    with pytest.raises(UserError, match=r"cannot read label .*missing\.png"):
        read_image(os.path.join(odd_names, "missing.png"), what="label")


def test_read_label_reads_a_name_that_is_not_utf8(odd_names):
    from paddleseg.utils import UserError
    from paddleseg.utils.image_io import read_label
    assert read_label(os.path.join(odd_names, BAD + ".jpg")).shape == (40, 30, 3)
    with pytest.raises(UserError, match=r"cannot read label .*junkbad\\xff\.png: not an image"):
        read_label(os.path.join(odd_names, "junk" + BAD + ".png"))
    with pytest.raises(UserError, match=r"cannot read label .*missing\.png: No such file"):
        read_label(os.path.join(odd_names, "missing.png"))


def test_infer_on_a_folder_with_a_name_that_is_not_utf8(export_dir, odd_names, tmp_path):
    out = tmp_path / "result"
    proc = run_script("deploy/python/infer.py", "--config", export_dir,
                      "--image_path", os.path.join(odd_names, "images"), "--save_dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out) == [BAD + ".png"]
    from PIL import Image
    with Image.open(os.path.join(out, BAD + ".png")) as png:
        assert png.mode == "P" and png.size == (30, 40)
    # the file itself, into a folder whose name is not UTF-8 either
    out = tmp_path / ("result" + BAD)
    proc = run_script("deploy/python/infer.py", "--config", export_dir, "--image_path",
                      os.path.join(odd_names, "images", BAD + ".jpg"), "--save_dir", str(out))
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out) == [BAD + ".png"] and "resultbad\\xff" in proc.stdout


def test_infer_on_an_undecodable_file_named_not_utf8(export_dir, odd_names, tmp_path):
    args = ["deploy/python/infer.py", "--config", export_dir, "--image_path",
            os.path.join(odd_names, "junk" + BAD + ".png"), "--save_dir", str(tmp_path / "r")]
    line = one_line_error(run_script(*args))
    assert "junkbad\\xff.png" in line and "not an image" in line
    proc = run_script(*args, "--debug")  # the traceback, not a native crash
    assert proc.returncode == 1 and "UserError" in proc.stderr, proc.stderr
    # and the folder that holds it: one line, no crash
    line = one_line_error(run_script("deploy/python/infer.py", "--config", export_dir,
                                     "--image_path", odd_names, "--save_dir", str(tmp_path / "r")))
    assert "junkbad\\xff.png" in line


def test_dataset_under_a_root_that_is_not_utf8(tmp_path):
    """A dataset_root given through --opts (argv) may hold any bytes: images and labels read."""
    from conftest import make_tiny_optic
    root = str(tmp_path / ("optic" + BAD))
    os.rename(make_tiny_optic(tmp_path / "optic", num_train=2, num_val=1), root)
    code = ("import sys, paddleseg.datasets as d\n"
            "ds = d.OpticDiscSeg(dataset_root=sys.argv[1], transforms=[], mode='val')\n"
            "item = ds[0]\n"
            "print(item['img'].shape, item['label'].shape, item['img_path'])\n")
    proc = subprocess.run([PY, "-c", code, root], capture_output=True, text=True,
                          errors="backslashreplace", env=dict(os.environ, PYTHONPATH=ROOT),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "(3, 64, 64) (64, 64)" in proc.stdout


def test_logger_and_errors_print_names_that_are_not_utf8(capsys):
    from paddleseg.utils import UserError, cli, logger

    def main(argv):
        logger.info(f"reading {BAD}.jpg")
        print(f"a plain print of {BAD}.jpg")  # cli.run makes stdout take any text
        raise UserError(f"cannot read image {BAD}.jpg")
    with pytest.raises(SystemExit) as exc:
        cli.run(main, [])
    captured = capsys.readouterr()
    assert exc.value.code == 2
    assert "reading bad\\xff.jpg" in captured.out
    assert "a plain print of bad\\udcff.jpg" in captured.out
    assert captured.err == "error: cannot read image bad\\xff.jpg\n"


def test_synthetic_data_tool_writes_under_a_folder_that_is_not_utf8(tmp_path):
    proc = run_script("tools/make_synthetic_optic_disc.py", "--save_dir",
                      str(tmp_path / BAD), "--num_train", "1", "--num_val", "1", "--size", "32")
    assert proc.returncode == 0, proc.stderr
    assert "bad\\xff" in proc.stdout
    assert sorted(os.listdir(tmp_path / BAD / "JPEGImages")) == ["syn_0000.jpg", "syn_0001.jpg"]


# -- 2./3. checkpoints whose values are not finite or not float ----------------------------------

def load_script(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_main(script, argv, capsys):
    """A CLI in-process through cli.run: (exit code, stdout, stderr)."""
    from paddleseg.utils import cli
    with pytest.raises(SystemExit) as exc:
        cli.run(load_script(script).main, argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def saved_state(tmp_path, edit, name="model.pdparams"):
    """A FastSCNN state dict as numpy arrays, changed by ``edit(state)``, saved; its path."""
    import paddle
    state = {k: v.numpy() for k, v in tiny_model(0).state_dict().items()}
    edit(state)
    path = str(tmp_path / name)
    paddle.save(state, path)
    return path


def first_param(state):
    return next(iter(state))


def test_val_refuses_nan_weights_naming_file_and_parameter(tmp_path, tiny_optic_root, capsys):
    from conftest import write_tiny_config
    config = write_tiny_config(tmp_path / "tiny.yml", tiny_optic_root, model="FastSCNN")
    names = []

    def nan_everywhere(state):
        names.append(first_param(state))
        for v in state.values():
            if v.dtype == np.float32:
                v[...] = np.nan
    path = saved_state(tmp_path, nan_everywhere)
    code, out, err = run_main("val.py", ["--config", config, "--model_path", path], capsys)
    assert code == 2 and out.count("mIoU") == 0, (out, err)
    assert err.count("\n") == 1
    assert f"{path}: parameter {names[0]} holds" in err and "NaN or infinite" in err


@pytest.mark.parametrize("bad,dtype", [(lambda a: a.astype(object), "object"),
                                       (lambda a: a.astype(str), "<U"),
                                       (lambda a: a.astype(np.int64), "int64")])
def test_checkpoint_of_other_dtypes_names_file_parameter_and_dtype(tmp_path, bad, dtype):
    from paddleseg.utils.checkpoint import CheckpointError, load_checkpoint
    names = []

    def edit(state):
        names.append(first_param(state))
        state[names[0]] = bad(state[names[0]])
    path = saved_state(tmp_path, edit)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tiny_model(1), path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: parameter {names[0]} has dtype {dtype}")
    assert msg.endswith("expected float32")


def test_checkpoint_entry_that_is_not_a_tensor(tmp_path):
    from paddleseg.utils.checkpoint import CheckpointError, load_checkpoint

    def edit(state):
        state[first_param(state)] = "weights"
    path = saved_state(tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"is a str, expected a float32 tensor"):
        load_checkpoint(tiny_model(1), path)


def test_pretrained_weights_with_inf_are_refused(tmp_path):
    from paddleseg.utils.checkpoint import CheckpointError, load_pretrained_model

    def edit(state):
        state[first_param(state)].flat[0] = np.inf
    path = saved_state(tmp_path, edit)
    with pytest.raises(CheckpointError, match=r"holds 1 of \d+ values that are NaN or infinite"):
        load_pretrained_model(tiny_model(1), path)


def test_no_matching_names_gives_the_file_and_model_counts(tmp_path):
    import paddle
    from paddleseg.utils.checkpoint import CheckpointError, load_checkpoint
    path = str(tmp_path / "other.pdparams")
    paddle.save({"a.weight": np.zeros(2, np.float32), "b.weight": np.zeros(2, np.float32)}, path)
    model = tiny_model(0)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(model, path)
    assert f"none of its 2 entries is named like one of the model's " \
           f"{len(model.state_dict())} parameters" in str(e.value)


def test_evaluation_warns_when_the_logits_are_not_finite(tiny_optic_root, capsys):
    import paddle
    from paddleseg import transforms as T
    from paddleseg.core.val import accumulate_areas
    from paddleseg.datasets import OpticDiscSeg

    class NaNModel(paddle.nn.Layer):
        def forward(self, x):
            return [paddle.full([x.shape[0], 2, *x.shape[2:]], float("nan"))]
    ds = OpticDiscSeg(dataset_root=tiny_optic_root, mode="val", transforms=[T.Normalize()])
    accumulate_areas(NaNModel(), ds)
    out = capsys.readouterr().out
    assert "NaN or infinite logits on 2 of 2 images" in out and "MEANINGLESS" in out


# -- 4. oversized configs ------------------------------------------------------------------------

def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def config_error(path, opts=None):
    from paddleseg.cvlibs import Config
    from paddleseg.cvlibs.config import ConfigError
    with pytest.raises(ConfigError) as e:
        Config(str(path), opts=opts).build_model()
    return str(e.value)


def test_config_over_one_mib_is_refused_before_parsing(tmp_path, monkeypatch):
    import yaml
    big = tmp_path / "big.yml"
    with open(big, "w") as f:
        f.write("model: {type: FastSCNN, num_classes: 2}\nnotes:\n")
        f.write("  - 'padding padding padding padding padding padding'\n" * 20000)  # ~1.1 MB

    def no_parsing(*a, **k):
        raise AssertionError("parsed")
    monkeypatch.setattr(yaml, "safe_load", no_parsing)
    assert re.search(r"big\.yml is \d+ bytes; a config must be at most 1048576 bytes \(1 MiB\)",
                     config_error(big))
    # a small file whose _base_ is the big one: the base is refused the same way
    child = write(tmp_path / "child.yml", "_base_: big.yml\nbatch_size: 2\n")
    monkeypatch.undo()
    msg = config_error(child)
    assert re.search(r"^config file \S*big\.yml \(the _base_ of \S*child\.yml\) is \d+ bytes",
                     msg), msg


def test_deploy_yaml_over_one_mib_is_refused(tmp_path):
    from paddleseg.core.export import load_deploy_config
    from paddleseg.utils import UserError
    with open(tmp_path / "deploy.yaml", "w") as f:
        f.write("Deploy: {}\n" + "#" * (1 << 20))
    with pytest.raises(UserError, match=r"deploy config .*deploy.yaml is 1048587 bytes; a config must be at most"):
        load_deploy_config(str(tmp_path))


# -- 5. messages that blamed the wrong thing ----------------------------------------------------

MODEL_CONFIG = "batch_size: 2\niters: 5\noptimizer: {type: sgd, momentum: 0.9}\n" \
               "model: {type: FastSCNN, num_classes: %s}\n"


@pytest.mark.parametrize("num", ["0", "-3", "2.5", "true"])
def test_num_classes_below_one_says_so(tmp_path, num):
    msg = config_error(write(tmp_path / "c.yml", MODEL_CONFIG % num))
    assert "num_classes must be an integer >= 1" in msg and "c.yml" in msg


def test_num_classes_from_opts_names_opts(tmp_path):
    msg = config_error(write(tmp_path / "c.yml", MODEL_CONFIG % 2), ["model.num_classes=0"])
    assert msg.startswith("--opts model.num_classes=0: num_classes must be an integer >= 1")


def test_base_naming_a_folder_says_it_is_a_folder(tmp_path):
    msg = config_error(write(tmp_path / "c.yml", "_base_: .\n" + MODEL_CONFIG % 2))
    assert "_base_ '.' named in" in msg and "is a folder" in msg
    assert "config file " in config_error(tmp_path) and "is a folder" in config_error(tmp_path)


@pytest.mark.parametrize("opt,key", [("batch_size=abc", "batch_size"), ("iters=-1", "iters")])
def test_bad_opts_value_names_opts_not_the_file(tmp_path, opt, key):
    msg = config_error(write(tmp_path / "c.yml", MODEL_CONFIG % 2), [opt])
    assert msg.startswith(f"--opts {opt}: {key} must be a positive integer")


def test_opts_below_a_plain_value_says_it_is_a_value(tmp_path):
    msg = config_error(write(tmp_path / "c.yml", MODEL_CONFIG % 2), ["optimizer.momentum.x=1"])
    assert msg == ("--opts optimizer.momentum.x=1: optimizer.momentum is a value (0.9), not a "
                   "mapping, so it has no 'x'; set it with --opts optimizer.momentum=VALUE")


def list_dataset(tmp_path, lines, mode="train", separator=" "):
    from paddleseg.datasets import Dataset
    from conftest import make_tiny_optic
    root = make_tiny_optic(tmp_path / "optic", num_train=1, num_val=1)
    with open(os.path.join(root, "list.txt"), "wb") as f:
        f.write(lines)
    return lambda: Dataset(mode, root, [], 2, separator=separator,
                           **{f"{mode}_path": os.path.join(root, "list.txt")})


def test_list_file_line_that_is_not_utf8_names_file_and_line(tmp_path):
    from paddleseg.datasets import DatasetError
    make = list_dataset(tmp_path, b"JPEGImages/syn_0000.jpg Annotations/syn_0000.png\n"
                                  b"JPEGImages/syn_\xff.jpg Annotations/syn_0001.png\n")
    with pytest.raises(DatasetError, match=r"list\.txt:2: not UTF-8 text \(byte 0xff at column "
                                           r"16\); list files must be saved as UTF-8"):
        make()


def test_list_file_name_with_a_space_says_fields_split_at_spaces(tmp_path):
    from paddleseg.datasets import DatasetError
    import shutil
    make = list_dataset(tmp_path, b"JPEGImages/syn 0000.jpg Annotations/syn_0000.png\n")
    with pytest.raises(DatasetError) as e:
        make()
    msg = str(e.value)
    assert "list.txt:1: expected 'image label' (fields separated by a space), got 3 fields" in msg
    assert "file names containing a space are not supported" in msg and "separator" in msg
    # with another separator (as in PaddleSeg), names with spaces work
    from paddleseg.datasets import Dataset
    root = str(tmp_path / "optic")
    shutil.copy(os.path.join(root, "JPEGImages", "syn_0000.jpg"),
                os.path.join(root, "JPEGImages", "syn 0000.jpg"))
    write(os.path.join(root, "bar.txt"), "JPEGImages/syn 0000.jpg|Annotations/syn_0000.png\n")
    ds = Dataset("train", root, [], 2, train_path=os.path.join(root, "bar.txt"), separator="|")
    assert ds[0]["img_path"].endswith("syn 0000.jpg")


# -- 6. bad input under paddle.distributed.launch ------------------------------------------------

def test_bad_input_under_the_launcher_exits_2_with_one_line_and_no_environment(tmp_path):
    """Both ranks refuse the missing config before the collective: rank 0 prints the one line,
    rank 1 stays quiet, and the launcher exits 2 (not 241) without its 'Container failed'
    dump of the environment or a second copy of the line."""
    log_dir = tmp_path / "log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    env["SEG_SECRET_PROBE"] = "do-not-print-me"
    proc = subprocess.run([PY, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
                           "--log_dir", str(log_dir), "train.py", "--config", "missing.yml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, env=env)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 2, console
    assert [line for line in console.splitlines() if "error" in line.lower()] == \
        ["error: config file not found: missing.yml"], console
    assert "do-not-print-me" not in console and "Container failed" not in console
    with open(log_dir / "workerlog.1", encoding="utf-8") as f:
        assert "error" not in f.read()


def test_outside_the_launcher_errors_print_at_once(capsys, monkeypatch):
    from paddleseg.utils import UserError, cli
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")  # a rank, but pytest is not its launcher
    assert cli.launcher_pid() is None

    def main(argv):
        raise UserError("bad")
    with pytest.raises(SystemExit) as exc:
        cli.run(main, [])
    assert exc.value.code == 2 and capsys.readouterr().err == "error: bad\n"
