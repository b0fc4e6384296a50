"""The PaddleSeg-shaped Python API that users' scripts rely on."""
import paddle

from paddleseg.cvlibs import Config, manager


def test_config_properties_like_paddleseg(tiny_config):
    cfg = Config(tiny_config)
    model = cfg.model
    assert model is cfg.model  # one model per config, as in PaddleSeg
    assert type(model).__name__ == "BiSeNetV2"
    assert isinstance(cfg.lr_scheduler, paddle.optimizer.lr.PolynomialDecay)
    opt = cfg.optimizer
    assert isinstance(opt, paddle.optimizer.Momentum)
    assert opt is cfg.optimizer
    own = {id(p) for p in model.parameters()}
    assert {id(p) for p in opt._parameter_list} <= own
    assert len(cfg.train_dataset) == 4 and len(cfg.val_dataset) == 2
    assert len(cfg.loss["types"]) == len(cfg.loss["coef"]) == 5


def test_registries_and_entry_points():
    from paddleseg.core import evaluate, train  # noqa: F401
    from paddleseg.models import BiSeNetV2, FCN, FastSCNN, HarDNet, UNet
    from paddleseg.models.backbones import HRNet_W18
    for cls in (BiSeNetV2, FCN, FastSCNN, HarDNet, UNet):
        assert manager.MODELS[cls.__name__] is cls
    assert "HRNet_W18" in manager.BACKBONES
    for name in ("OpticDiscSeg", "Cityscapes", "Dataset"):
        assert name in manager.DATASETS
    for name in ("CrossEntropyLoss", "OhemCrossEntropyLoss", "DiceLoss"):
        assert name in manager.LOSSES
    model = FCN(num_classes=19, backbone=HRNet_W18(), backbone_indices=[-1])
    assert model.backbone.feat_channels == [270]
