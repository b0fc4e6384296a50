"""slim/prune/prune.py on the five models (tiny synthetic optic-disc set, 64x64): FLOPs targets,
resume after a kill, and bad input (the whole pipeline per model: test_prune_end_to_end.py).

prune.py and val.py run in this process, through ``cli.run(main, argv)`` as their ``__main__``
does (conftest.run_cli); test_sensitivity_resumes_after_kill starts prune.py as a program (and
kills it)."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg import slim
from paddleseg.slim import sensitivity
from paddleseg.slim.criteria import num_pruned
from conftest import run_cli, write_optic_config
from test_models import SPECS, build

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRUNE = os.path.join(ROOT, "slim", "prune", "prune.py")
VAL = os.path.join(ROOT, "val.py")
SHAPE = (1, 3, 64, 64)
MODELS = list(SPECS)
# loss coefs per model, as in configs/*/*_optic_disc_512x512_1k.yml (one per training logit)
COEFS = {"BiSeNetV2": [1, 1, 1, 1, 1], "FCN": [1], "FastSCNN": [1.0, 0.4], "HarDNet": [1],
         "UNet": [1]}


# FCN's prune.py runs use HRNet-W18-Small-V1: the blocks, branches and fuse layers of W18 (whose
# structure test_models pins and whose groups test_allocation_hits_flops_targets covers) at a
# quarter of its modules, so that its end-to-end run, export and predictor take seconds, not a
# minute; the benchmark prunes W18 itself
PRUNED_BACKBONES = {"FCN": {"backbone": {"type": "HRNet_W18_Small_V1"}}}


def model_config(name):
    kwargs, _, n_logits = SPECS[name]
    assert len(COEFS[name]) == n_logits
    return dict(type=name, num_classes=2, **{**kwargs, **PRUNED_BACKBONES.get(name, {})})


@pytest.fixture
def configs(optic_configs):
    """{model name: tiny config path} over the shared 4 train + 2 val 64x64 set (conftest's
    session fixture, shared with test_slim_coverage_cli.py)."""
    return optic_configs


@pytest.fixture
def checkpoint(trained_checkpoint):
    """checkpoint(name): model.pdparams of the model trained 2 iterations (conftest's session
    fixture: once per model in a test session)."""
    return trained_checkpoint


def run_script(script, *args):
    return run_cli(script, *args)


def prune_args(config, model_path, save_dir, ratio=0.3, iters=2, criterion="fpgm",
               sen_ratios=(0.3, 0.6), extra=()):
    args = ["--config", config, "--pruning_ratio", ratio, "--retraining_iters", iters,
            "--save_dir", save_dir, "--criterion", criterion, "--sen_ratios", *sen_ratios,
            "--sen_eval_num", 1, *extra]
    if model_path is not None:
        args += ["--model_path", model_path]
    return args


def failure(proc):
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def leftovers(save_dir):
    """Staging folders and temporary files of a run, in save_dir or beside it."""
    return [n for folder in (save_dir, save_dir.parent) for n in os.listdir(folder)
            if n.startswith((".staging", ".tmp", ".old"))]


# --- 2. realized FLOPs reduction of the allocation, per target --------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_allocation_hits_flops_targets(name):
    paddle.seed(0)
    model = build(name, 2)
    analysis = slim.build_groups(model, SHAPE)
    # every conv but the classifier (and a few tiny 1x1s) prunable, ConvBN's padding='same'
    # (asymmetric on stride-2 convs) included; no op the engine does not understand
    cov = analysis.coverage
    assert cov["flops_coverage"] >= 0.99, cov
    assert not analysis.unknown_ops, analysis.unknown_ops
    assert not cov["frozen_by_ops"], analysis.frozen_by_ops_text()
    flops_model = slim.FlopsModel(analysis)
    rng = np.random.RandomState(0)
    weights = {g.id: float(rng.uniform(0.1, 1.0)) for g in sorted(analysis.groups, key=lambda g: g.id)}
    ratios = [round(0.1 * i, 1) for i in range(1, 10)]
    sens = {gid: {r: r * w for r in ratios} for gid, w in weights.items()}
    for target in (0.1, 0.2, 0.3):
        alloc = slim.allocate_ratios(analysis.groups, sens, flops_model, target)
        paddle.seed(0)
        fresh = build(name, 2)
        fresh.eval()
        before = slim.count_flops(fresh, SHAPE)
        removed = slim.prune_model(fresh, analysis, alloc.plan, "l1")
        after = slim.count_flops(fresh, SHAPE)
        assert after == flops_model.flops(removed)  # the FLOPs model predicts the pruned count
        realized = 1 - after / before
        assert abs(realized - target) <= 0.03, f"{name}: target {target}, realized {realized:.4f}"


# --- 3. a killed sensitivity analysis resumes where it stopped ---------------------------------
def evaluated(groups, ratios):
    """{(group id, ratio key)} of the points the analysis evaluates (those removing a channel)."""
    return {(g.id, sensitivity.ratio_key(r)) for g in groups for r in ratios
            if num_pruned(g.channels, r) > 0}


def test_sensitivity_resumes_after_kill(configs, checkpoint, tmp_path):
    name = "FastSCNN"
    ratios = (0.2, 0.4, 0.6)
    save_dir = tmp_path / "out"
    sen_file = str(save_dir / "sensitivity.json")   # the default
    args = prune_args(configs[name], checkpoint(name), save_dir, iters=0, sen_ratios=ratios)

    paddle.seed(0)
    groups = slim.build_groups(build(name, 2), SHAPE).groups
    points = evaluated(groups, ratios)
    assert len(points) > 3

    def done(data):
        return {(gid, key) for gid, losses in data["losses"].items() for key in losses} & points

    proc = subprocess.Popen([sys.executable, PRUNE, *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            try:
                data = sensitivity.load(sen_file)
            except sensitivity.SensitivityMismatch:
                data = None    # tolerate a read racing a write; the checks below are strict
            if data is not None and 0 < len(done(data)) < len(points):
                break
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()

    data = sensitivity.load(sen_file)   # still a valid file after the kill
    assert data is not None and data["base"] is not None
    assert [g for g, _ in data["fingerprint"]["groups"]] == sorted(g.id for g in groups)
    finished = done(data)
    assert 0 < len(finished) < len(points)

    proc = run_script(PRUNE, *args)
    assert proc.returncode == 0, failure(proc)
    lines = [ln for ln in proc.stdout.splitlines() if "sensitivity: layer" in ln]
    assert len(lines) == len(points) - len(finished)
    assert done(sensitivity.load(sen_file)) == points
    assert os.path.isfile(save_dir / "model.pdparams")
    # the killed run's staging dir (and any temporary file) went with the resumed run
    assert not leftovers(save_dir)


def test_a_sensitivity_file_is_resumed_with_its_own_engine_only(configs, checkpoint, tmp_path):
    """Predictor and dygraph metrics can differ in their last digits: the engine is part of the
    file's fingerprint. auto resumes a file with the engine that began it; naming the other
    engine is refused, so the two never mix in one file."""
    name = "FastSCNN"
    sen_file = tmp_path / "sen.json"

    def prune(save_dir, *engine):
        return run_script(PRUNE, *prune_args(configs[name], checkpoint(name), tmp_path / save_dir,
                                             iters=0, extra=["--sen_file", sen_file, *engine]))

    def engine_of(save_dir):
        with open(tmp_path / save_dir / "report.json") as f:
            return json.load(f)["sen_engine"]

    proc = prune("dygraph", "--sen_engine", "dygraph")
    assert proc.returncode == 0, failure(proc)
    assert engine_of("dygraph") == "dygraph"
    made = sen_file.read_bytes()

    proc = prune("auto")
    assert proc.returncode == 0, failure(proc)
    assert engine_of("auto") == "dygraph" and sen_file.read_bytes() == made

    proc = prune("predictor", "--sen_engine", "predictor")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and \
        "evaluator: file has {'name': 'dygraph'}, now {'name': 'predictor'}" in last, last
    assert "Traceback" not in proc.stderr and sen_file.read_bytes() == made
    assert not (tmp_path / "predictor").exists()


# --- 4. bad input: one error line, nothing written --------------------------------------------
def foreign_sen_file(path):
    """A sensitivity file made for FastSCNN (while the run prunes BiSeNetV2)."""
    paddle.seed(0)
    model = build("FastSCNN", 2)
    groups = slim.build_groups(model, SHAPE).groups
    sensitivity.analyze(model, groups, lambda: 0.5, [0.5], str(path), "fpgm",
                        setup={"config": "another config"})
    return str(path)


BAD = {
    "ratio 0": dict(ratio=0),
    "ratio 1": dict(ratio=1),
    "ratio 1.5": dict(ratio=1.5),
    "retraining -1": dict(iters=-1),
    "model_path missing": dict(model_path="missing"),
    "model_path of another model": dict(model_path="UNet"),
    "foreign sen_file": dict(sen_file=True),
    "unknown model type": dict(model={"type": "NoSuchNet", "num_classes": 2}),
    "bad constructor argument": dict(model={"type": "BiSeNetV2", "num_classes": 2,
                                            "no_such_argument": 3}),
}


def check_failed_cleanly(proc):
    assert proc.returncode != 0, failure(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, failure(proc)
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error:"), failure(proc)


@pytest.mark.parametrize("case", BAD)
def test_bad_input_fails_cleanly(case, configs, checkpoint, tiny_optic_root, tmp_path):
    spec = BAD[case]
    config = configs["BiSeNetV2"]
    if "model" in spec:
        config = write_optic_config(tmp_path / "bad.yml", tiny_optic_root, spec["model"],
                              COEFS["BiSeNetV2"])
    model_path = spec.get("model_path", "BiSeNetV2")
    if model_path == "missing":
        model_path = str(tmp_path / "no_such_model.pdparams")
    else:
        model_path = checkpoint(model_path)
    extra = []
    foreign = None
    if spec.get("sen_file"):
        foreign = foreign_sen_file(tmp_path / "foreign.pickle")
        with open(foreign, "rb") as f:
            foreign_bytes = f.read()
        extra = ["--sen_file", foreign]

    save_dir = tmp_path / "out"
    save_dir.mkdir()
    (save_dir / "report.md").write_text("an earlier run's report\n")
    proc = run_script(PRUNE, *prune_args(config, model_path, save_dir, ratio=spec.get("ratio", 0.3),
                                         iters=spec.get("iters", 2), extra=extra))
    check_failed_cleanly(proc)
    assert sorted(os.listdir(save_dir)) == ["report.md"]
    assert (save_dir / "report.md").read_text() == "an earlier run's report\n"
    assert not leftovers(save_dir)
    if foreign:
        with open(foreign, "rb") as f:
            assert f.read() == foreign_bytes
        assert "different setup" in proc.stderr


def test_bad_input_leaves_no_new_save_dir(configs, checkpoint, tmp_path):
    save_dir = tmp_path / "never"
    proc = run_script(PRUNE, *prune_args(configs["BiSeNetV2"], checkpoint("UNet"), save_dir))
    check_failed_cleanly(proc)
    assert not save_dir.exists(), os.listdir(save_dir)


def test_a_save_dir_holding_the_users_files_is_refused_untouched(configs, checkpoint, tmp_path):
    save_dir = tmp_path / "out"
    (save_dir / "iter_2").mkdir(parents=True)
    (save_dir / "notes.txt").write_text("the user's file\n")
    proc = run_script(PRUNE, *prune_args(configs["FastSCNN"], checkpoint("FastSCNN"), save_dir))
    check_failed_cleanly(proc)
    assert "iter_2, notes.txt" in proc.stderr and "did not write" in proc.stderr, failure(proc)
    assert sorted(os.listdir(save_dir)) == ["iter_2", "notes.txt"]
    assert (save_dir / "notes.txt").read_text() == "the user's file\n"


def test_a_crafted_sen_file_is_refused_and_runs_nothing(configs, checkpoint, tmp_path):
    import pickle
    from test_slim_search import WritesAFile
    marker = tmp_path / "marker"
    evil = tmp_path / "x.pickle"
    evil.write_bytes(pickle.dumps(WritesAFile(str(marker))))
    save_dir = tmp_path / "out"
    proc = run_script(PRUNE, *prune_args(configs["FastSCNN"], checkpoint("FastSCNN"), save_dir,
                                         extra=["--sen_file", evil]))
    check_failed_cleanly(proc)
    assert "refused without running it" in proc.stderr, failure(proc)
    assert "baseline mIoU" not in proc.stdout + proc.stderr  # refused before any slow work
    assert not marker.exists()
    assert not save_dir.exists()


# --- an unreachable target: an error by default, lowered only when asked ----------------------
def test_an_unreachable_target_fails_unless_lowering_is_allowed(configs, checkpoint, tmp_path):
    import re
    save_dir = tmp_path / "out"
    args = prune_args(configs["FastSCNN"], checkpoint("FastSCNN"), save_dir, ratio=0.9, iters=0,
                      sen_ratios=(0.2,))
    proc = run_script(PRUNE, *args)
    check_failed_cleanly(proc)
    line = proc.stderr.strip().splitlines()[-1]
    found = re.search(r"above the ([0-9.]+) reachable", line)
    assert found and "--allow_lower_target" in line, failure(proc)
    most = float(found.group(1))
    assert 0 < most < 0.9
    assert "sensitivity: layer" not in proc.stdout, "it failed only after the slow analysis"
    assert not save_dir.exists()

    proc = run_script(PRUNE, *args, "--allow_lower_target")
    assert proc.returncode == 0, failure(proc)
    final = proc.stdout.strip().splitlines()[-1]
    assert f"target 0.9 lowered to {most:.3f}" in final, final
    report = json.loads((save_dir / "report.json").read_text())
    assert report["target_reachable"] is False and report["target_met"] is False
    assert report["target_lowered_to"] == pytest.approx(most, abs=5e-4)
    assert report["flops_reduction"] == pytest.approx(most, abs=0.01)
    assert f"lowered to {most:.3f}" in (save_dir / "report.md").read_text()


def test_a_corrupt_prune_plan_gives_one_line(configs, checkpoint, tmp_path):
    import shutil
    ckpt = tmp_path / "pruned"
    ckpt.mkdir()
    shutil.copy(checkpoint("FastSCNN"), ckpt / "model.pdparams")
    for text in ('{"format": 1, "layers": {', '{"format": 1, "layers": {"conv": [3]}}'):
        (ckpt / "prune_plan.json").write_text(text)
        proc = run_script(VAL, "--config", configs["FastSCNN"], "--model_path", ckpt / "model.pdparams")
        check_failed_cleanly(proc)
        assert "prune_plan.json" in proc.stderr.strip().splitlines()[-1], failure(proc)
        assert proc.returncode == 2, failure(proc)  # a UserError, not an unexpected failure
