"""slim/prune/prune.py end to end on each of the five models (tiny synthetic optic-disc set,
64x64): its outputs, the FLOPs target met, the saved model evaluated by val.py, reloaded in dygraph
and exported with the same outputs. prune.py and val.py run in this process (conftest.run_cli).

A file of its own (helpers in test_prune.py) so that pytest-xdist can run it beside the rest of
test_prune.py: the two are the suite's longest modules."""
import json
import os

import numpy as np
import paddle
import pytest
import yaml

from paddleseg import slim
from test_prune import MODELS, PRUNE, SHAPE, VAL, failure, leftovers, prune_args, run_script

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def predict(model_dir, x):
    from paddleseg.deploy.predictor import create_predictor, run_predictor
    return run_predictor(create_predictor(model_dir), x)


@pytest.fixture
def configs(optic_configs):
    return optic_configs


@pytest.fixture
def checkpoint(trained_checkpoint):
    return trained_checkpoint


# --- 1. the whole pipeline per model and criterion ---------------------------------------------
# fpgm (the default) on every model; l1 on the quickest only, to keep the file within a few
# minutes on two busy cores (the criterion changes which channels go, not the graph handling:
# l1 pruning of every model is test_allocation_hits_flops_targets' and test_slim_function's)
L1_MODELS = ["FastSCNN"]
CASES = [(name, "fpgm") for name in MODELS] + [(name, "l1") for name in L1_MODELS]
# FCN's HRNet has the most groups: the default evaluator's choice (auto times predictor and
# dygraph on pruned probes) is test_predictor_eval's subject; FCN's run measures in dygraph, the
# other models' runs keep the default
EVALUATOR = {"FCN": ["--sen_evaluator", "dygraph"]}


@pytest.mark.parametrize("name,criterion", CASES)
def test_prune_cli_end_to_end(name, criterion, configs, checkpoint, tmp_path):
    config = configs[name]
    save_dir = tmp_path / "out"
    proc = run_script(PRUNE, *prune_args(config, checkpoint(name), save_dir, criterion=criterion,
                                                 extra=EVALUATOR.get(name, ())))
    assert proc.returncode == 0, failure(proc)

    names = set(os.listdir(save_dir))
    for f in ("model.pdparams", "report.json", "report.md", "sensitivity.png",
              "export", "sensitivity.json"):
        assert f in names, f"{f} missing from {sorted(names)}"
    assert "prune_plan.json" not in names  # the pruned structure travels inside model.pdparams
    assert not leftovers(save_dir)
    for f in ("model.pdmodel", "model.pdiparams", "deploy.yaml"):
        assert os.path.isfile(save_dir / "export" / f), f
    with open(save_dir / "sensitivity.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC

    report = json.loads((save_dir / "report.json").read_text())
    assert report["model_name"] == name
    assert report["criterion"] == criterion
    assert report["flops_after"] < report["flops_before"]
    assert abs(report["flops_reduction"] - 0.3) <= 0.03, report["flops_reduction"]
    assert abs(1 - report["flops_after"] / report["flops_before"] - 0.3) <= 0.03
    assert report["coverage"]["flops_coverage"] >= 0.70, report["coverage"]

    # the saved pruned model evaluates with val.py
    proc = run_script(VAL, "--config", config, "--model_path", save_dir / "model.pdparams")
    assert proc.returncode == 0, failure(proc)
    assert "mIoU" in proc.stdout, failure(proc)

    # reloaded in dygraph: the pruned structure and the exported model's outputs
    from paddleseg.core.export import export_model
    from paddleseg.core.model_loader import build_and_load
    from paddleseg.cvlibs import Config
    cfg = Config(config)
    model = build_and_load(cfg, str(save_dir / "model.pdparams"))
    model.eval()
    assert slim.count_flops(model, SHAPE) == report["flops_after"]
    x = np.random.RandomState(0).rand(*SHAPE).astype("float32")
    with paddle.no_grad():
        logits = model(paddle.to_tensor(x))[0].numpy()
    assert logits.shape == (1, 2, 64, 64)

    deploy = yaml.safe_load((save_dir / "export" / "deploy.yaml").read_text())["Deploy"]
    # the export carries the pruning facts itself (the benchmark reads them from there)
    assert deploy["pruned"] is True
    assert deploy["pruning"]["criterion"] == criterion
    assert deploy["pruning"]["flops_after"] == report["flops_after"]
    out = predict(str(save_dir / "export"), x)
    if deploy.get("output_op", "argmax") == "argmax":
        assert out.shape == (1, 64, 64)
        agree = float((out == logits.argmax(axis=1)).mean())
        assert agree >= 0.999, f"exported argmax agrees with dygraph on {agree:.4%} of pixels"
        raw_dir = str(tmp_path / "export_none")
        export_model(model, raw_dir, output_op="none",
                     val_transforms_config=cfg.val_dataset_config.get("transforms"))
        raw = predict(raw_dir, x)
    else:
        raw = out
    assert raw.shape == logits.shape
    diff = float(np.abs(raw - logits).max())
    assert diff <= 1e-4, f"exported logits differ from dygraph by {diff}"
