"""export.py and paddleseg.core.export: the exported files, deploy.yaml, and that the exported
model computes what the dygraph model does."""
import os
import sys

import numpy as np
import paddle
import pytest
import yaml

import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg.core.export import export_model, load_deploy_config, parse_input_shape
from paddleseg.deploy.predictor import create_predictor, run_predictor
from paddleseg.utils import UserError, cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import export as export_cli  # noqa: E402
from conftest import run_cli as run_program, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:.*always track global mean")

VAL_TRANSFORMS = [{"type": "Resize", "target_size": [64, 64]}, {"type": "Normalize"}]
CONFIG = {
    "batch_size": 2,
    "iters": 10,
    "model": {"type": "FastSCNN", "num_classes": 2},
    "val_dataset": {"type": "OpticDiscSeg", "dataset_root": "not_needed_for_export", "mode": "val",
                    "transforms": VAL_TRANSFORMS},
}



@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A config file and a checkpoint of the model it describes."""
    root = tmp_path_factory.mktemp("export")
    cfg = root / "fastscnn.yml"
    cfg.write_text(yaml.safe_dump(CONFIG))
    model = tiny_model(0)
    ckpt = root / "best_model"
    ckpt.mkdir()
    paddle.save(model.state_dict(), str(ckpt / "model.pdparams"))
    return {"root": root, "config": str(cfg), "model_path": str(ckpt / "model.pdparams"), "model": model}


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(export_cli.main, argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_export_cli_writes_model_params_and_deploy_yaml(trained, capsys):
    save_dir = trained["root"] / "out_cli"
    code, out, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                              "--save_dir", str(save_dir)], capsys)
    assert code == 0, err
    for name in ("model.pdmodel", "model.pdiparams", "deploy.yaml"):
        assert (save_dir / name).is_file(), name
    assert not [n for n in os.listdir(trained["root"]) if n.startswith(".tmp")]
    deploy = yaml.safe_load((save_dir / "deploy.yaml").read_text())["Deploy"]
    assert deploy["model"] == "model.pdmodel" and deploy["params"] == "model.pdiparams"
    assert deploy["transforms"] == VAL_TRANSFORMS
    assert deploy["output_op"] == "argmax" and deploy["output_dtype"] == "int32"
    assert deploy["input_shape"] == [-1, 3, -1, -1]
    assert deploy["model_type"] == "FastSCNN"
    loaded = load_deploy_config(str(save_dir))
    assert os.path.isfile(loaded["model_path"]) and os.path.isfile(loaded["params_path"])

    # a second export over the first replaces it (atomic rename), with the new settings
    code, _, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                            "--save_dir", str(save_dir), "--output_op", "softmax",
                            "--input_shape", "1", "3", "64", "64"], capsys)
    assert code == 0, err
    deploy = yaml.safe_load((save_dir / "deploy.yaml").read_text())["Deploy"]
    assert deploy["output_op"] == "softmax" and deploy["input_shape"] == [1, 3, 64, 64]


@pytest.mark.parametrize("flags,expected", [
    ([], "argmax"), (["--output_op", "none"], "none"),
    (["--without_argmax"], "none"), (["--without_argmax", "--with_softmax"], "softmax"),
    (["--with_softmax"], "argmax"),   # PaddleSeg 2.6: argmax of the softmax, the same labels
    (["--without_argmax", "--output_op", "none"], "none")])
def test_paddleseg_2_6_s_export_flags_choose_the_output_op(flags, expected):
    argv = ["--config", "c.yml", "--model_path", "m.pdparams", *flags]
    assert export_cli.parse_args(argv).output_op == expected


def test_contradicting_export_flags_are_one_line(trained, tmp_path, capsys):
    code, _, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                            "--save_dir", str(tmp_path / "e"), "--without_argmax",
                            "--output_op", "argmax"], capsys)
    assert code == 2 and "contradicts --without_argmax/--with_softmax" in err
    assert err.count("\n") == 1 and not (tmp_path / "e").exists()


def test_exported_logits_match_dygraph(trained, tmp_path):
    model = trained["model"]
    export_model(model, str(tmp_path / "none"), output_op="none", val_transforms_config=VAL_TRANSFORMS)
    assert not model.training
    x = np.random.RandomState(1).standard_normal([2, 3, 64, 64]).astype(np.float32)
    with paddle.no_grad():
        ref = model(paddle.to_tensor(x))[0].numpy()
    predictor = create_predictor(str(tmp_path / "none"), cpu_threads=2)
    out = run_predictor(predictor, x)
    assert out.shape == (2, 2, 64, 64)
    assert np.abs(out - ref).max() <= 1e-4
    # the export takes other sizes too (dynamic H and W)
    y = np.random.RandomState(2).standard_normal([1, 3, 96, 128]).astype(np.float32)
    assert run_predictor(predictor, y).shape == (1, 2, 96, 128)


def test_argmax_export_gives_int_labels_n_h_w(trained, tmp_path):
    model = trained["model"]
    model.train()  # export must evaluate in eval mode and give the mode back
    export_model(model, str(tmp_path / "argmax"), output_op="argmax", val_transforms_config=VAL_TRANSFORMS)
    assert model.training
    model.eval()
    x = np.random.RandomState(2).standard_normal([3, 3, 64, 64]).astype(np.float32)
    out = run_predictor(create_predictor(str(tmp_path / "argmax")), x)
    assert out.shape == (3, 64, 64) and out.dtype == np.int32
    with paddle.no_grad():
        ref = model(paddle.to_tensor(x))[0].numpy().argmax(axis=1)
    assert (out == ref).mean() > 0.999


def test_softmax_export_gives_probabilities(trained, tmp_path):
    export_model(trained["model"], str(tmp_path / "sm"), output_op="softmax",
                 input_shape=[1, 3, 64, 64], val_transforms_config=VAL_TRANSFORMS)
    out = run_predictor(create_predictor(str(tmp_path / "sm")),
                        np.random.RandomState(3).standard_normal([1, 3, 64, 64]).astype(np.float32))
    assert out.shape == (1, 2, 64, 64)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_gpu_and_tensorrt_refused_in_one_line_on_a_cpu_build(trained, tmp_path):
    if paddle.is_compiled_with_cuda():
        pytest.skip("this Paddle build has CUDA")
    export_model(trained["model"], str(tmp_path / "m"), val_transforms_config=VAL_TRANSFORMS)
    with pytest.raises(UserError, match="no CUDA"):
        create_predictor(str(tmp_path / "m"), device="gpu", use_trt=True, precision="fp16")
    with pytest.raises(UserError, match="TensorRT needs --device gpu"):
        create_predictor(str(tmp_path / "m"), device="cpu", use_trt=True)
    with pytest.raises(UserError, match="fp16 needs --device gpu"):
        create_predictor(str(tmp_path / "m"), precision="fp16")


@pytest.mark.parametrize("shape", [[1, 3, 64], [1, 3, 0, 64], [1, 3, 64, 64, 1], ["a", 3, 4, 4]])
def test_parse_input_shape_rejects_bad_shapes(shape):
    with pytest.raises(UserError, match="four positive integers"):
        parse_input_shape(shape)


def test_bad_export_inputs_give_one_line_errors(trained, tmp_path, capsys):
    base = ["--config", trained["config"], "--save_dir", str(tmp_path / "x")]
    cases = [
        (base + ["--model_path", str(tmp_path / "missing.pdparams")], "model file not found"),
        (base, "--model_path"),  # the flag itself is missing
        (base + ["--model_path", trained["model_path"], "--input_shape", "1", "3", "64"],
         "four positive integers"),
        (base + ["--model_path", trained["model_path"], "--input_shape", "1", "3", "x", "64"],
         "invalid int value"),
        (["--config", str(tmp_path / "nope.yml"), "--model_path", trained["model_path"]],
         "config file not found"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli(argv, capsys)
        assert code == 2, argv
        assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_export_cli_error_has_no_traceback(trained, tmp_path):
    # export.py's main(argv) in this process, with the program's warnings on its stderr
    # (test_configs_paddleseg.py starts export.py as a program)
    proc = run_program("export.py", "--config", trained["config"],
                       "--model_path", tmp_path / "missing" / "model.pdparams",
                       "--save_dir", tmp_path / "x")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: model file not found: "
                                               f"{tmp_path / 'missing' / 'model.pdparams'}"]


@pytest.fixture(scope="module")
def pruned(trained):
    """The tiny model with 30% of every prunable group's channels removed, saved as a pruned
    checkpoint (model.pdparams carries the pruned layer shapes)."""
    slim = pytest.importorskip("paddleseg.slim")
    model = tiny_model(0)
    analysis = slim.build_groups(model, (1, 3, 64, 64))
    slim.prune_model(model, analysis, {g.id: 0.3 for g in analysis.groups})
    model.eval()
    ckpt = trained["root"] / "pruned_model"
    slim.save_pruned(model, str(ckpt))
    return {"model": model, "model_path": str(ckpt / "model.pdparams")}


def test_pruned_model_exports_and_matches_dygraph(pruned, trained, tmp_path):
    model = pruned["model"]
    export_model(model, str(tmp_path / "p"), output_op="none", val_transforms_config=VAL_TRANSFORMS)
    x = np.random.RandomState(4).standard_normal([1, 3, 64, 64]).astype(np.float32)
    with paddle.no_grad():
        ref = model(paddle.to_tensor(x))[0].numpy()
    out = run_predictor(create_predictor(str(tmp_path / "p")), x)
    assert np.abs(out - ref).max() <= 1e-4
    n_params = lambda m: sum(int(np.prod(p.shape)) for p in m.parameters())  # noqa: E731
    assert n_params(model) < 0.8 * n_params(trained["model"])


def test_export_cli_loads_a_pruned_checkpoint(pruned, trained, tmp_path, capsys):
    code, _, err = run_cli(["--config", trained["config"], "--model_path", pruned["model_path"],
                            "--save_dir", str(tmp_path / "e"), "--output_op", "none"], capsys)
    assert code == 0, err
    x = np.random.RandomState(6).standard_normal([1, 3, 64, 64]).astype(np.float32)
    with paddle.no_grad():
        ref = pruned["model"](paddle.to_tensor(x))[0].numpy()
    out = run_predictor(create_predictor(str(tmp_path / "e")), x)
    assert np.abs(out - ref).max() <= 1e-4
    assert yaml.safe_load((tmp_path / "e" / "deploy.yaml").read_text())["Deploy"]["pruned"] is True


# -- nothing the user had is lost (issue 9) -----------------------------------------------------

def test_export_refuses_a_folder_that_is_not_an_export(trained, tmp_path, capsys):
    run_dir = tmp_path / "train_output"  # what a user may pass by mistake: a training folder
    (run_dir / "iter_1").mkdir(parents=True)
    (run_dir / "iter_1" / "model.pdparams").write_bytes(b"weights")
    (run_dir / "deploy.yaml").write_text("mine")
    code, _, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                            "--save_dir", str(run_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "iter_1" in err and "refusing to replace" in err and str(run_dir) in err
    assert sorted(os.listdir(run_dir)) == ["deploy.yaml", "iter_1"]
    assert (run_dir / "iter_1" / "model.pdparams").read_bytes() == b"weights"
    assert (run_dir / "deploy.yaml").read_text() == "mine"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]
    with pytest.raises(UserError, match="refusing to replace"):  # the library call alike
        export_model(trained["model"], str(run_dir), val_transforms_config=VAL_TRANSFORMS)
    assert sorted(os.listdir(run_dir)) == ["deploy.yaml", "iter_1"]


def test_export_into_an_empty_folder_and_a_file_path(trained, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    export_model(trained["model"], str(empty), val_transforms_config=VAL_TRANSFORMS)
    assert (empty / "deploy.yaml").is_file()
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    code, _, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                            "--save_dir", str(a_file)], capsys)
    assert code == 2 and "is an existing file, not a folder" in err, err
    assert a_file.read_text() == "keep me"


@pytest.mark.parametrize("shape", [[1, 1, 64, 64], [1, 4, 64, 64]])
def test_input_shape_needs_three_channels(trained, tmp_path, capsys, shape):
    with pytest.raises(UserError, match="C = 3"):
        parse_input_shape(shape)
    code, _, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                            "--save_dir", str(tmp_path / "x"), "--input_shape", *map(str, shape)],
                           capsys)
    assert code == 2 and "C = 3" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_failed_export_leaves_no_folder_it_made(trained, tmp_path, capsys, monkeypatch):
    def broken_save(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(paddle.jit, "save", broken_save)
    code, _, err = run_cli(["--config", trained["config"], "--model_path", trained["model_path"],
                            "--save_dir", str(tmp_path / "new" / "deeper" / "export")], capsys)
    assert code == 1 and "disk full" in err, err
    assert os.listdir(tmp_path) == []
