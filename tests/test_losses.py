"""Losses: ignored pixels, finite values, lower on a perfect prediction."""
import numpy as np
import paddle
import pytest

from paddleseg.models.losses import CrossEntropyLoss, DiceLoss, OhemCrossEntropyLoss


def make(seed=0, n=2, c=3, h=4, w=5, ignore_frac=0.3):
    rng = np.random.RandomState(seed)
    logit = rng.randn(n, c, h, w).astype(np.float32) * 2
    label = rng.randint(0, c, (n, h, w)).astype(np.int64)
    label[rng.rand(n, h, w) < ignore_frac] = 255
    return logit, label


def numpy_ce(logit, label, ignore=255):
    """Mean softmax cross entropy over the pixels whose label is not ``ignore``."""
    shifted = logit - logit.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n, h, w = np.nonzero(label != ignore)
    return float(-logp[n, label[n, h, w], h, w].mean())


def perfect_logit(label, c, margin=20.0):
    safe = np.where(label == 255, 0, label)
    return (np.eye(c, dtype=np.float32)[safe].transpose(0, 3, 1, 2) * margin)


def test_cross_entropy_equals_the_mean_over_kept_pixels():
    logit, label = make()
    assert (label == 255).sum() > 0 and (label != 255).sum() > 0
    got = float(CrossEntropyLoss()(paddle.to_tensor(logit), paddle.to_tensor(label)))
    assert got == pytest.approx(numpy_ce(logit, label), rel=1e-5)
    # the mean over all pixels, 255 replaced by a class, would be another number
    assert got != pytest.approx(numpy_ce(logit, np.where(label == 255, 0, label)), rel=1e-3)


def test_cross_entropy_does_not_see_ignored_pixels():
    logit, label = make(1)
    loss = CrossEntropyLoss()
    base = float(loss(paddle.to_tensor(logit), paddle.to_tensor(label)))
    changed = logit.copy()
    changed[np.broadcast_to((label == 255)[:, None], changed.shape)] = 1000.0
    assert float(loss(paddle.to_tensor(changed), paddle.to_tensor(label))) == pytest.approx(base, rel=1e-6)
    # and a label of shape [N, 1, H, W] is accepted
    assert float(loss(paddle.to_tensor(logit), paddle.to_tensor(label[:, None]))) == pytest.approx(base, rel=1e-6)


def test_cross_entropy_no_gradient_on_ignored_pixels():
    logit, label = make(2)
    x = paddle.to_tensor(logit, stop_gradient=False)
    CrossEntropyLoss()(x, paddle.to_tensor(label)).backward()
    grad = x.grad.numpy()
    ignored = np.broadcast_to((label == 255)[:, None], grad.shape)
    assert np.all(grad[ignored] == 0)
    assert np.abs(grad[~ignored]).sum() > 0


def test_cross_entropy_all_ignored_is_finite_zero():
    logit, _ = make()
    label = np.full((2, 4, 5), 255, np.int64)
    value = float(CrossEntropyLoss()(paddle.to_tensor(logit), paddle.to_tensor(label)))
    assert np.isfinite(value) and value == 0.0


@pytest.mark.parametrize("loss_fn", [
    CrossEntropyLoss(),
    OhemCrossEntropyLoss(thresh=0.7, min_kept=10),
    OhemCrossEntropyLoss(thresh=0.7, min_kept=10000),  # more than there are pixels
    DiceLoss(),
], ids=["ce", "ohem", "ohem-min_kept-large", "dice"])
def test_finite_and_lower_on_a_perfect_prediction(loss_fn):
    logit, label = make(3)
    random_loss = float(loss_fn(paddle.to_tensor(logit), paddle.to_tensor(label)))
    perfect = float(loss_fn(paddle.to_tensor(perfect_logit(label, 3)), paddle.to_tensor(label)))
    assert np.isfinite(random_loss) and np.isfinite(perfect)
    assert random_loss > 0.1
    assert 0 <= perfect < random_loss
    assert perfect < 0.05 * random_loss


@pytest.mark.parametrize("loss_fn", [OhemCrossEntropyLoss(min_kept=10), DiceLoss()],
                         ids=["ohem", "dice"])
def test_gradient_descent_lowers_the_loss(loss_fn):
    logit, label = make(4)
    x = paddle.create_parameter(logit.shape, "float32",
                                default_initializer=paddle.nn.initializer.Assign(logit))
    opt = paddle.optimizer.SGD(learning_rate=1.0, parameters=[x])
    values = []
    for _ in range(5):
        loss = loss_fn(x, paddle.to_tensor(label))
        values.append(float(loss))
        loss.backward()
        opt.step()
        opt.clear_grad()
    assert all(np.isfinite(values))
    assert values[-1] < values[0]


def test_ohem_keeps_only_hard_pixels():
    # all pixels confidently right except one clearly wrong: OHEM with a low min_kept
    # averages over that hard pixel only, so it is much larger than the plain mean
    label = np.zeros((1, 4, 4), np.int64)
    logit = perfect_logit(label, 2, margin=5.0)
    logit[0, :, 0, 0] = [-5.0, 5.0]
    lg, lb = paddle.to_tensor(logit), paddle.to_tensor(label)
    ce = float(CrossEntropyLoss()(lg, lb))
    ohem = float(OhemCrossEntropyLoss(thresh=0.7, min_kept=1)(lg, lb))
    assert ohem == pytest.approx(numpy_ce(logit[:, :, :1, :1], label[:, :1, :1]), rel=1e-4)
    assert ohem > 10 * ce


def test_ohem_and_dice_ignore_255():
    logit, label = make(5)
    for loss_fn in (OhemCrossEntropyLoss(min_kept=5), DiceLoss()):
        base = float(loss_fn(paddle.to_tensor(logit), paddle.to_tensor(label)))
        changed = logit.copy()
        changed[np.broadcast_to((label == 255)[:, None], changed.shape)] = -50.0
        assert float(loss_fn(paddle.to_tensor(changed), paddle.to_tensor(label))) == pytest.approx(base, rel=1e-5)


def _paddleseg_loss_inputs():
    import numpy as np
    import paddle
    rng = np.random.default_rng(0)
    logit = paddle.to_tensor(rng.normal(0, 2, (2, 5, 16, 24)).astype("float32"))
    label = rng.integers(0, 5, (2, 16, 24))
    label[0, :3] = 255
    return logit, paddle.to_tensor(label.astype("int64"))


# Values computed by PaddleSeg release/2.6's own loss classes on _paddleseg_loss_inputs().
@pytest.mark.parametrize("min_k,loss_th,expected", [(50, 0.3, 3.0564606), (300, 0.3, 2.9950666),
                                                    (10, 5.0, 6.2398996)])
def test_bootstrapped_cross_entropy_matches_paddleseg(min_k, loss_th, expected):
    from paddleseg.models.losses import BootstrappedCrossEntropyLoss
    logit, label = _paddleseg_loss_inputs()
    assert float(BootstrappedCrossEntropyLoss(min_k, loss_th)(logit, label)) == pytest.approx(expected, rel=1e-5)


def test_mixed_ce_dice_matches_paddleseg():
    from paddleseg.models.losses import CrossEntropyLoss, DiceLoss, MixedLoss
    logit, label = _paddleseg_loss_inputs()
    mixed = MixedLoss([CrossEntropyLoss(), DiceLoss()], [0.8, 0.2])
    assert float(mixed(logit, label)) == pytest.approx(2.4417486, rel=1e-5)


# -- SemanticConnectivityLoss (the _SCL configs) ------------------------------------------------

def test_semantic_connectivity_loss_matches_paddleseg():
    from paddleseg.models.losses import SemanticConnectivityLoss
    logit, label = _paddleseg_loss_inputs()
    # computed by PaddleSeg release/2.6's own class on these inputs
    assert float(SemanticConnectivityLoss()(logit, label)) == pytest.approx(0.9469628, rel=1e-5)


def test_semantic_connectivity_loss_by_hand():
    from paddleseg.models.losses import SemanticConnectivityLoss
    label = np.zeros((1, 6, 6), np.int64)
    label[0, 1:3, 1:3] = 1
    perfect = np.zeros((1, 2, 6, 6), np.float32)
    perfect[0, 1][label[0] == 1] = 5
    loss = SemanticConnectivityLoss()(paddle.to_tensor(perfect, stop_gradient=False),
                                      paddle.to_tensor(label))
    # class 1's component matched with IoU 1 (loss 0); class 0's predicted pixels weigh their
    # class id, 0, so they never match (loss 1), as in PaddleSeg: (0 + 1) / 2
    assert float(loss) == pytest.approx(0.5)
    # the loss is of the argmax: no gradient reaches the logits (PaddleSeg's neither)
    assert loss.stop_gradient
    # class 1 missed altogether: its missed share (4 of 36 pixels) + 1; class 0 still 1
    missed = SemanticConnectivityLoss()(paddle.zeros([1, 2, 6, 6]), paddle.to_tensor(label))
    assert float(missed) == pytest.approx((1 + 4 / 36 + 1) / 2)


def test_paddleseg_s_scl_config_builds_its_mixed_loss():
    import os
    from conftest import ROOT
    from paddleseg.cvlibs import Config
    config = os.path.join(ROOT, "tests", "data", "paddleseg_release26_configs", "fastscnn",
                          "fastscnn_cityscapes_1024x1024_40k_SCL.yml")
    losses = Config(config).loss
    mixed = losses["types"][0]
    assert [type(x).__name__ for x in mixed.losses] == ["CrossEntropyLoss",
                                                        "SemanticConnectivityLoss"]
    logit, label = _paddleseg_loss_inputs()
    assert np.isfinite(float(mixed(logit, label)))
