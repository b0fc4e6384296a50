"""Every model: output shapes and that it can learn (that its state dict is PaddleSeg's, every
key and shape, is test_parity.py's check)."""
import numpy as np
import paddle
import pytest

from paddleseg.cvlibs import manager
import paddleseg.models  # noqa: F401  (registers the models)
from paddleseg.models.losses import CrossEntropyLoss

# name -> (builder kwargs, PaddleSeg's parameter count at num_classes=19, logits in training)
SPECS = {
    "BiSeNetV2": ({}, 2532215, 5),
    "FCN": ({"backbone": {"type": "HRNet_W18"}, "backbone_indices": [-1]}, 9675595, 1),
    "FastSCNN": ({"enable_auxiliary_loss": True}, 1444086, 2),
    "HarDNet": ({}, 4126701, 1),
    "UNet": ({}, 13414163, 1),
}


def build(name, num_classes):
    kwargs = dict(SPECS[name][0])
    if "backbone" in kwargs:
        spec = dict(kwargs["backbone"])
        kwargs["backbone"] = manager.BACKBONES[spec.pop("type")](**spec)
    return manager.MODELS[name](num_classes=num_classes, **kwargs)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (50, 70)])
def test_eval_output_is_logit_maps_at_input_size(name, hw):
    """Eval mode returns the main logit first; FastSCNN with its auxiliary head returns that
    one too, as PaddleSeg's does (inference and export read logits[0])."""
    paddle.seed(0)
    model = build(name, 3)
    model.eval()
    with paddle.no_grad():
        out = model(paddle.rand([2, 3, *hw]))
    expected = 2 if name == "FastSCNN" and model.enable_auxiliary_loss else 1
    assert isinstance(out, (list, tuple)) and len(out) == expected
    assert all(o.shape == [2, 3, *hw] for o in out)


@pytest.mark.parametrize("name", SPECS)
def test_training_returns_one_logit_per_loss_coef(name):
    paddle.seed(0)
    model = build(name, 2)
    model.train()
    out = model(paddle.rand([2, 3, 64, 64]))
    assert len(out) == SPECS[name][2]
    for logit in out:
        assert logit.shape == [2, 2, 64, 64]


@pytest.mark.parametrize("name", SPECS)
def test_loss_falls_on_a_fixed_batch(name):
    paddle.seed(0)
    np.random.seed(0)
    model = build(name, 2)
    model.train()
    x = paddle.rand([2, 3, 64, 64])
    yy, xx = np.mgrid[:64, :64]
    label = paddle.to_tensor(np.stack([((yy - 32) ** 2 + (xx - c) ** 2 < 200) for c in (20, 44)]).astype("int64"))
    x = x + label.unsqueeze(1).astype("float32")  # make the target visible in the input
    loss_fn = CrossEntropyLoss()
    opt = paddle.optimizer.Momentum(0.01, momentum=0.9, parameters=model.parameters())
    losses = []
    for _ in range(10):   # every model more than halves its loss within 10 steps here
        loss = sum(loss_fn(logit, label) for logit in model(x))
        loss.backward()
        opt.step()
        opt.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.75 * losses[0], losses


# the repository's optic-disc config of each model, run through the command lines
OPTIC_CONFIGS = {
    "BiSeNetV2": "configs/bisenetv2/bisenet_optic_disc_512x512_1k.yml",
    "FCN": "configs/fcn/fcn_hrnetw18_optic_disc_512x512_1k.yml",
    "FastSCNN": "configs/fastscnn/fastscnn_optic_disc_512x512_1k.yml",
    "HarDNet": "configs/hardnet/hardnet_optic_disc_512x512_1k.yml",
    "UNet": "configs/unet/unet_optic_disc_512x512_1k.yml",
}


@pytest.mark.parametrize("name", SPECS)
def test_train_5_iterations_then_val_from_the_command_line(name, tiny_optic_root, tmp_path):
    from conftest import run_cli  # main(argv) in this process, through cli.run
    resize = "{type: Resize, target_size: [64, 64]}"
    opts = ["--opts", f"train_dataset.dataset_root={tiny_optic_root}",
            f"val_dataset.dataset_root={tiny_optic_root}",
            f"train_dataset.transforms=[{resize}, {{type: Normalize}}]",
            f"val_dataset.transforms=[{resize}, {{type: Normalize}}]"]
    config = OPTIC_CONFIGS[name]
    out = tmp_path / "out"
    train = run_cli("train.py", "--config", config, "--iters", "5", "--batch_size", "2",
                    "--save_interval", "5", "--save_dir", str(out), "--seed", "0", *opts)
    assert train.returncode == 0, train.stderr[-2000:]
    ckpt = out / "iter_5" / "model.pdparams"
    assert ckpt.is_file() and (out / "iter_5" / "model.pdopt").is_file()
    val = run_cli("val.py", "--config", config, "--model_path", str(ckpt), *opts)
    assert val.returncode == 0, val.stderr[-2000:]
    assert '"mIoU"' in val.stdout.strip().splitlines()[-1]
