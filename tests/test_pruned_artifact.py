"""A pruned model is one artifact: its model.pdparams carries the pruned layer shapes and the
pruning facts, so train.py (fine-tune and resume), val.py and export.py restore it from that file
alone, every checkpoint a run writes carries them on, and an export's deploy.yaml states them."""
import json
import os
import shutil

import numpy as np
import paddle
import pytest
import yaml

from conftest import run_cli, write_tiny_config
from paddleseg import slim
from paddleseg.cvlibs import Config
from paddleseg.utils import UserError
from paddleseg.utils.checkpoint import (LEGACY_PLAN_FILE, STRUCTURE_KEY, load_model_weights,
                                        read_checkpoint)
from paddleseg.utils.structure import describe, layer_shapes, pruned_info

pytestmark = pytest.mark.filterwarnings("ignore:.*always track global mean")
FASTSCNN_LOSS = ("--opts", "loss.coef=[1, 0.4]")  # the tiny config's coef fit BiSeNetV2's 5 heads


def run(script, *args):
    """The script's main(argv) in this process, through cli.run (conftest.run_cli)."""
    return run_cli(script, *args)


def n_params(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.fixture(scope="module")
def pruned(tiny_optic_root, tmp_path_factory):
    """A FastSCNN from the tiny config with 40% of each group's channels removed, saved."""
    root = tmp_path_factory.mktemp("pruned_artifact")
    config = write_tiny_config(root / "tiny.yml", tiny_optic_root, model="FastSCNN")
    model = Config(config).build_model()
    analysis = slim.build_groups(model, (1, 3, 64, 64))
    slim.prune_model(model, analysis, {g.id: 0.4 for g in analysis.groups}, "fpgm")
    slim.save_pruned(model, str(root / "pruned"), info={"pruning_ratio": 0.4})
    return {"root": root, "config": config, "model": model,
            "weights": str(root / "pruned" / "model.pdparams")}


def test_the_weights_file_alone_restores_the_pruned_model(pruned, tmp_path):
    copied = tmp_path / "elsewhere.pdparams"
    shutil.copy(pruned["weights"], copied)
    model = load_model_weights(Config(pruned["config"]).build_model(), str(copied))
    assert layer_shapes(model) == layer_shapes(pruned["model"])
    assert pruned_info(model) == {"pruning_ratio": 0.4, "criterion": "fpgm"}
    assert n_params(model) < 0.7 * n_params(Config(pruned["config"]).build_model())


def test_train_fine_tunes_and_resumes_a_pruned_checkpoint(pruned, tmp_path):
    save_dir = tmp_path / "ft"
    proc = run("train.py", "--config", pruned["config"], "--model_path", pruned["weights"],
               "--iters", 2, "--save_interval", 2, "--save_dir", save_dir, *FASTSCNN_LOSS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(save_dir / "iter_2")) == ["model.pdopt", "model.pdparams",
                                                       "train_state.json"]
    state, record = read_checkpoint(str(save_dir / "iter_2"))
    assert record is not None and record["layers"] == layer_shapes(pruned["model"])
    assert record["info"]["pruning_ratio"] == 0.4  # the facts ride along through fine-tuning
    proc = run("train.py", "--config", pruned["config"], "--resume_model", save_dir / "iter_2",
               "--iters", 3, "--save_interval", 1, "--save_dir", save_dir, *FASTSCNN_LOSS)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert read_checkpoint(str(save_dir / "iter_3"))[1]["layers"] == layer_shapes(pruned["model"])


def test_export_states_the_pruning_facts(pruned, tmp_path):
    proc = run("export.py", "--config", pruned["config"], "--model_path", pruned["weights"],
               "--save_dir", tmp_path / "export")
    assert proc.returncode == 0, proc.stderr[-2000:]
    deploy = yaml.safe_load((tmp_path / "export" / "deploy.yaml").read_text())["Deploy"]
    assert deploy["pruned"] is True
    assert deploy["pruning"] == {"pruning_ratio": 0.4, "criterion": "fpgm"}
    from paddleseg.core.export import read_model_info
    assert read_model_info(str(tmp_path / "export"))["pruning_ratio"] == 0.4


def test_a_damaged_structure_record_gives_one_line(pruned, tmp_path):
    state = paddle.load(pruned["weights"])
    state[STRUCTURE_KEY] = paddle.to_tensor(np.frombuffer(b'{"format": 1, "lay', np.uint8).copy())
    bad = tmp_path / "bad.pdparams"
    paddle.save(state, str(bad))
    proc = run("val.py", "--config", pruned["config"], "--model_path", bad)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "pruned-structure record is damaged" in last
    assert "Traceback" not in proc.stderr


def test_an_older_checkpoint_with_prune_plan_json_still_loads(pruned, tmp_path):
    """Before 0.2 the shapes lived in prune_plan.json beside the weights."""
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    state = {k: v for k, v in paddle.load(pruned["weights"]).items() if k != STRUCTURE_KEY}
    paddle.save(state, str(legacy / "model.pdparams"))
    plan = describe(pruned["model"])
    del plan["info"]
    (legacy / LEGACY_PLAN_FILE).write_text(json.dumps(plan))
    model = load_model_weights(Config(pruned["config"]).build_model(), str(legacy))
    assert layer_shapes(model) == layer_shapes(pruned["model"])


def test_an_unpruned_checkpoint_carries_no_record(pruned, tmp_path):
    model = Config(pruned["config"]).build_model()
    path = tmp_path / "plain.pdparams"
    from paddleseg.utils.checkpoint import save_model_state
    save_model_state(model, str(path))
    assert STRUCTURE_KEY not in paddle.load(str(path))
    assert pruned_info(load_model_weights(Config(pruned["config"]).build_model(), str(path))) is None
    with pytest.raises(UserError, match="other shapes"):  # pruned weights need their record
        state = {k: v for k, v in paddle.load(pruned["weights"]).items() if k != STRUCTURE_KEY}
        paddle.save(state, str(path))
        load_model_weights(Config(pruned["config"]).build_model(), str(path))
