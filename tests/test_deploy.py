"""deploy/python/infer.py and benchmark.py, and the ONNX Runtime backend, on tiny exports."""
import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import paddle
import pytest
from PIL import Image

import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg.core import export as ex
from paddleseg.deploy import benchmark as bench
from paddleseg.deploy import predictor as pred
from paddleseg.utils import UserError, cli
from paddleseg.utils.structure import mark_pruned
from conftest import tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAL_TRANSFORMS = [{"type": "Resize", "target_size": [64, 64]}, {"type": "Normalize"}]


def load_script(name):
    path = os.path.join(ROOT, "deploy", "python", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


infer = load_script("infer")
benchmark = load_script("benchmark")



@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """An unpruned argmax export, a 'pruned' one (another instance marked pruned, as a pruned
    checkpoint loads: its deploy.yaml carries the pruning facts) and an output_op=none export."""
    root = tmp_path_factory.mktemp("deploy")
    base = str(root / "fastscnn")
    ex.export_model(tiny_model(0), base, val_transforms_config=VAL_TRANSFORMS, model_type="FastSCNN")
    pruned = str(root / "fastscnn_pruned" / "export")
    marked = tiny_model(1)
    mark_pruned(marked, {"pruning_ratio": 0.3, "criterion": "fpgm"})
    ex.export_model(marked, pruned, val_transforms_config=VAL_TRANSFORMS, model_type="FastSCNN")
    logits = str(root / "logits")
    ex.export_model(tiny_model(0), logits, output_op="none", val_transforms_config=VAL_TRANSFORMS)
    return {"root": root, "base": base, "pruned": pruned, "logits": logits}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.RandomState(0)
    sizes = {"a.jpg": (50, 70), "b.png": (64, 64), "c.bmp": (90, 40)}
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(folder / name), rng.randint(0, 255, (h, w, 3)).astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder, sizes


def run_main(mod, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.run(mod.main, argv)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


@pytest.mark.parametrize("which,batch", [("base", 2), ("logits", 1)])
def test_infer_writes_one_png_per_image_at_image_size(exports, images, tmp_path, capsys, which, batch):
    folder, sizes = images
    out_dir = tmp_path / "result"
    code, out, err = run_main(infer, ["--config", os.path.join(exports[which], "deploy.yaml"),
                                      "--image_path", str(folder), "--save_dir", str(out_dir),
                                      "--batch_size", str(batch), "--benchmark"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == ["a.png", "b.png", "c.png"]
    for name, (h, w) in sizes.items():
        png = Image.open(out_dir / (os.path.splitext(name)[0] + ".png"))
        assert png.mode == "P" and png.size == (w, h)
        assert np.asarray(png).max() <= 1  # palette PNG: pixel values are the class ids
    assert "benchmark:" in out and "ms/img" in out


def test_infer_single_image_and_palette(exports, images, tmp_path, capsys):
    folder, _ = images
    code, _, err = run_main(infer, ["--config", exports["base"], "--image_path", str(folder / "b.png"),
                                    "--save_dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert os.listdir(tmp_path) == ["b.png"]
    # PaddleSeg's palette (its deploy infer.py's too): class 0 dark red, 256 distinct colours
    from PIL import Image
    from paddleseg.utils.visualize import color_map
    cmap = color_map()
    assert cmap[0].tolist() == [128, 0, 0] and cmap[1].tolist() == [0, 128, 0]
    assert len({tuple(c) for c in cmap}) == 256
    with Image.open(tmp_path / "b.png") as png:
        assert png.getpalette()[:6] == [128, 0, 0, 0, 128, 0]


def test_benchmark_cli_prints_table_with_speedup_and_writes_reports(exports, tmp_path, capsys):
    code, out, err = run_main(benchmark, [exports["base"], exports["pruned"], "--input_shape", "1", "3", "64", "64",
                                          "--warmup", "1", "--repeats", "3", "--save_dir", str(tmp_path)],
                              capsys)
    assert code == 0, err
    assert "| Model | Pruning ratio | Mean (ms) | Median (ms) | P90 (ms) | Speedup |" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| FastSCNN")]
    assert len(rows) == 2
    assert rows[0].split("|")[2].strip() == "-" and rows[0].rstrip("| ").endswith("1.00x")
    assert rows[1].split("|")[2].strip() == "0.30" and rows[1].split("|")[6].strip().endswith("x")
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert [r["pruning_ratio"] for r in report["results"]] == [None, 0.3]
    for r in report["results"]:
        assert r["mean_ms"] > 0 and r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"]
        assert r["speedup"] > 0 and len(r["times_ms"]) == 3
    assert "| Speedup |" in (tmp_path / "benchmark.md").read_text()


def test_benchmark_skips_unavailable_backends_in_one_line(exports, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(pred, "_have", lambda name: name != "onnxruntime")
    code, out, err = run_main(benchmark, [exports["base"], "--backend", "onnxruntime",
                                          "--save_dir", str(tmp_path)], capsys)
    assert code == 2
    assert "onnxruntime is not installed" in err and "Traceback" not in err
    lines = []
    rows = bench.benchmark_models([exports["base"], str(tmp_path / "absent"), exports["pruned"]],
                                  report_error=lines.append, input_shape=[1, 3, 64, 64], warmup=0,
                                  repeats=1, device="gpu" if not paddle.is_compiled_with_cuda() else "cpu")
    if not paddle.is_compiled_with_cuda():
        assert rows == [] and len(lines) == 1 and "no CUDA" in lines[0]
    lines = []
    rows = bench.benchmark_models([exports["base"], str(tmp_path / "absent"), exports["pruned"]],
                                  report_error=lines.append, input_shape=[1, 3, 64, 64], warmup=0, repeats=1)
    assert [r["pruning_ratio"] for r in rows] == [None, 0.3]
    assert len(lines) == 1 and "absent" in lines[0] and "deploy.yaml not found" in lines[0]


def test_benchmark_predictor_result_fields(exports):
    r = bench.benchmark_predictor(exports["pruned"], input_shape=[1, 3, 64, 64], warmup=0, repeats=2,
                                  cpu_threads=1, enable_mkldnn=False)
    assert r["model_name"] == "FastSCNN" and r["pruning_ratio"] == 0.3
    assert r["input_shape"] == [1, 3, 64, 64] and r["repeats"] == 2 and r["enable_mkldnn"] is False
    assert r["min_ms"] <= r["median_ms"] <= max(r["times_ms"])


def test_speedups_pair_each_model_with_its_unpruned_export():
    rows = [{"model_name": "A", "pruning_ratio": 0.5, "mean_ms": 5.0, "model_dir": "a50"},
            {"model_name": "A", "pruning_ratio": None, "mean_ms": 10.0, "model_dir": "a"},
            {"model_name": "A", "pruning_ratio": 0.0, "mean_ms": 8.0, "model_dir": "a0"},
            {"model_name": "B", "pruning_ratio": 0.3, "mean_ms": 4.0, "model_dir": "b30"}]
    bench.add_speedups(rows)
    assert [r["speedup"] for r in rows] == [1.6, 0.8, 1.0, None]
    table = bench.markdown_table([dict(r, median_ms=1, p90_ms=2) for r in rows])
    assert "| A | 0.50 | 5.00 | 1.00 | 2.00 | 1.60x |" in table
    assert "| B | 0.30 | 4.00 | 1.00 | 2.00 | - |" in table


def test_onnxruntime_matches_paddle_inference(exports, tmp_path):
    # Fast-SCNN's pyramid pooling needs >= 6x6 features at 1/32 scale to become ONNX pools
    shape = [1, 3, 192, 192]
    x = np.random.RandomState(5).standard_normal(shape).astype(np.float32)
    ref = pred.run_predictor(pred.create_predictor(exports["logits"]), x)
    session = pred.create_onnx_session(exports["logits"], shape, cpu_threads=2, cache_dir=str(tmp_path))
    out = pred.run_onnx_session(session, x)
    assert out.shape == ref.shape == (1, 2, 192, 192)
    assert np.abs(out - ref).max() <= 1e-4
    assert paddle.in_dynamic_mode()  # the shape-fixing pass gave the global mode back
    r = bench.benchmark_predictor(exports["logits"], input_shape=shape, warmup=1, repeats=2,
                                  backend="onnxruntime", onnx_cache_dir=str(tmp_path))
    assert r["backend"] == "onnxruntime" and r["mean_ms"] > 0


def test_bad_deploy_inputs_give_one_line_errors(exports, images, tmp_path, capsys):
    folder, _ = images
    (tmp_path / "empty").mkdir()
    cases = [
        (infer, ["--config", str(tmp_path / "nothing"), "--image_path", str(folder)], "deploy.yaml not found"),
        (infer, ["--config", str(tmp_path), "--image_path", str(folder)], "has no deploy.yaml"),
        (infer, ["--config", exports["base"], "--image_path", str(tmp_path / "none.jpg")], "--image_path not found"),
        (infer, ["--config", exports["base"], "--image_path", str(tmp_path / "empty")], "no images"),
        (infer, ["--config", exports["base"], "--image_path", str(folder), "--batch_size", "0"], ">= 1"),
        (benchmark, [exports["base"], "--input_shape", "1", "3", "64"], "four positive integers"),
        (benchmark, [exports["base"], "--repeats", "0"], "--repeats"),
        (benchmark, [str(tmp_path / "nothing"), "--save_dir", str(tmp_path)], "no model could be benchmarked"),
    ]
    for mod, argv, expected in cases:
        code, _, err = run_main(mod, argv, capsys)
        assert code == 2, argv
        assert expected in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2, err  # benchmark: the skipped line + the error
    with pytest.raises(UserError, match="no 'Deploy' section"):
        (tmp_path / "bad").mkdir()
        (tmp_path / "bad" / "deploy.yaml").write_text("foo: 1\n")
        ex.load_deploy_config(str(tmp_path / "bad"))


def test_infer_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "deploy", "python", "infer.py"),
                           "--config", str(tmp_path / "deploy.yaml"), "--image_path", str(tmp_path)],
                          capture_output=True, text=True, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: deploy.yaml not found: {tmp_path / 'deploy.yaml'} (export the model first with export.py)"]


# -- nothing the user had is overwritten; partial or mismatched runs fail (issue 9) ------------

def copy_images(images, folder):
    src, _ = images
    folder.mkdir(parents=True)
    for name in os.listdir(src):
        (folder / name).write_bytes((src / name).read_bytes())
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


@pytest.mark.parametrize("layout", ["same", "inside", "single_file"])
def test_infer_refuses_a_save_dir_holding_input_images(exports, images, tmp_path, capsys, layout):
    inputs = copy_images(images, tmp_path / "data" / "imgs")
    image_path, save_dir = {"same": (tmp_path / "data" / "imgs", tmp_path / "data" / "imgs"),
                            "inside": (tmp_path / "data" / "imgs", tmp_path / "data"),
                            "single_file": (tmp_path / "data" / "imgs" / "b.png",
                                            tmp_path / "data" / "imgs")}[layout]
    code, _, err = run_main(infer, ["--config", exports["base"], "--image_path", str(image_path),
                                    "--save_dir", str(save_dir)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "holds the input image" in err and "would overwrite inputs" in err
    assert {n: (tmp_path / "data" / "imgs" / n).read_bytes()
            for n in os.listdir(tmp_path / "data" / "imgs")} == inputs  # untouched


def test_infer_overwrites_only_its_own_predictions(exports, images, tmp_path, capsys):
    folder, _ = images
    labels = tmp_path / "Annotations"  # ground truth where predictions would go
    labels.mkdir()
    Image.fromarray(np.ones((64, 64), np.uint8)).save(labels / "b.png")
    truth = (labels / "b.png").read_bytes()
    argv = ["--config", exports["base"], "--image_path", str(folder), "--save_dir", str(labels)]
    code, _, err = run_main(infer, argv, capsys)
    assert code == 2 and "b.png" in err and "not a prediction" in err, err
    assert os.listdir(labels) == ["b.png"] and (labels / "b.png").read_bytes() == truth
    out = tmp_path / "pred"
    argv[-1] = str(out)
    for _ in range(2):  # a second run replaces the first one's files
        code, _, err = run_main(infer, argv, capsys)
        assert code == 0, err
        assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png"]
        assert infer.is_prediction(str(out / "b.png"))
    (out / "notes.txt").write_text("mine")  # not where a prediction goes: no obstacle
    assert run_main(infer, argv, capsys)[0] == 0 and (out / "notes.txt").read_text() == "mine"


def test_infer_save_dir_that_is_a_file(exports, images, tmp_path, capsys):
    folder, _ = images
    a_file = tmp_path / "result"
    a_file.write_text("keep")
    code, _, err = run_main(infer, ["--config", exports["base"], "--image_path", str(folder),
                                    "--save_dir", str(a_file)], capsys)
    assert code == 2 and "is an existing file, not a folder" in err, err
    assert a_file.read_text() == "keep"


@pytest.fixture(scope="module")
def fixed_export(tmp_path_factory):
    """An export with a fixed 1x3x64x64 input."""
    path = str(tmp_path_factory.mktemp("fixed") / "fastscnn_64")
    ex.export_model(tiny_model(0), path, input_shape=[1, 3, 64, 64], val_transforms_config=VAL_TRANSFORMS)
    return path


def test_benchmark_refuses_another_shape_than_a_fixed_export_has(fixed_export, exports):
    with pytest.raises(UserError, match="exported for input shape 1 3 64 64"):
        bench.benchmark_predictor(fixed_export, input_shape=[1, 3, 128, 128], warmup=0, repeats=1)
    with pytest.raises(UserError, match="exported for input shape 1 3 64 64"):
        bench.benchmark_predictor(fixed_export, input_shape=[2, 3, 64, 64], warmup=0, repeats=1)
    with pytest.raises(UserError, match="exported for input shape 1 3 64 64"):
        bench.interleaved_latency([exports["base"], fixed_export], [1, 3, 96, 96], 0, 1, 1)
    r = bench.benchmark_predictor(fixed_export, input_shape=[1, 3, 64, 64], warmup=0, repeats=1)
    assert r["mean_ms"] > 0
    r = bench.benchmark_predictor(exports["base"], input_shape=[2, 3, 96, 96], warmup=0, repeats=1)
    assert r["mean_ms"] > 0  # a dynamic export runs at any shape


def test_benchmark_fails_when_it_skipped_a_model(exports, fixed_export, tmp_path, capsys):
    absent = str(tmp_path / "absent")
    code, out, err = run_main(benchmark, [exports["base"], absent, fixed_export,
                                          "--input_shape", "1", "3", "96", "96", "--warmup", "0",
                                          "--repeats", "1", "--save_dir", str(tmp_path)], capsys)
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 3 model(s) not benchmarked") and absent in last
    assert fixed_export in last and exports["base"] not in last
    assert f"skipped {fixed_export}: " in err and "exported for input shape" in err
    assert "| FastSCNN" in out  # the models that ran are still reported
    assert len(json.loads((tmp_path / "benchmark.json").read_text())["results"]) == 1


def test_benchmark_bad_shape_and_report_paths_fail_before_timing(exports, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep")
    cases = [
        ([exports["base"], "--input_shape", "1", "1", "64", "64"], "C = 3"),
        ([exports["base"], "--save_json", str(tmp_path)], "--save_json"),
        ([exports["base"], "--save_md", str(tmp_path)], "--save_md"),
        ([exports["base"], "--save_dir", str(a_file)], "is an existing file, not a folder"),
    ]
    for argv, needle in cases:
        code, out, err = run_main(benchmark, argv + ["--repeats", "1", "--warmup", "0"], capsys)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert "| Model" not in out  # refused before anything was timed
    assert a_file.read_text() == "keep" and sorted(os.listdir(tmp_path)) == ["a_file"]
