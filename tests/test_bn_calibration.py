"""Batch-norm statistics re-estimated on training batches (paddleseg.slim.bn_calibration):
the estimate against a hand computation, the model given back unchanged, dropout left off, and
the batches reproducible without moving the caller's random sequence."""
import random

import numpy as np
import paddle
import pytest
from paddle import nn

from paddleseg.slim import bn_calibration
from paddleseg.slim.bn_calibration import (batch_norms, calibration_batches,
                                           estimate_statistics, recalibrated_batchnorm)


class TwoBlocks(nn.Layer):
    """conv-BN-ReLU, dropout, conv-BN, and a BN only a training pass reaches."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2D(3, 4, 3, padding=1), nn.BatchNorm2D(4)
        self.drop = nn.Dropout(dropout)
        self.conv2, self.bn2 = nn.Conv2D(4, 5, 3, padding=1), nn.BatchNorm2D(5)
        self.aux_bn = nn.BatchNorm2D(5)

    def forward(self, x):
        y = self.bn2(self.conv2(self.drop(nn.functional.relu(self.bn1(self.conv1(x))))))
        return [y, self.aux_bn(y)] if self.training else [y]


def trained_looking(model, seed=0):
    """Running statistics far from what the batches give (as a pruned model's are)."""
    rng = np.random.default_rng(seed)
    for bn in batch_norms(model):
        n = bn._mean.shape[0]
        bn._mean.set_value(rng.normal(3.0, 1.0, n).astype("float32"))
        bn._variance.set_value(rng.uniform(5.0, 9.0, n).astype("float32"))
    return model


def make_batches(num=3, seed=1):
    rng = np.random.default_rng(seed)
    return [paddle.to_tensor(rng.normal(0, 1, (2, 3, 6, 5)).astype("float32")) for _ in range(num)]


def batch_stats(x):
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))   # biased, as Paddle's running variance


def hand_estimate(model, batches):
    """Each BN's statistics averaged over the batches, with the first BN normalising by its
    batch statistics, computed with numpy after each conv."""
    eps = model.bn1._epsilon
    sums = {"bn1": [0, 0], "bn2": [0, 0]}
    for batch in batches:
        a = model.conv1(batch).numpy()
        m1, v1 = batch_stats(a)
        gamma, beta = model.bn1.weight.numpy(), model.bn1.bias.numpy()
        normed = (a - m1[None, :, None, None]) / np.sqrt(v1[None, :, None, None] + eps)
        h = np.maximum(normed * gamma[None, :, None, None] + beta[None, :, None, None], 0)
        b = model.conv2(paddle.to_tensor(h.astype("float32"))).numpy()
        m2, v2 = batch_stats(b)
        for name, (m, v) in (("bn1", (m1, v1)), ("bn2", (m2, v2))):
            sums[name][0] = sums[name][0] + m
            sums[name][1] = sums[name][1] + v
    return {name: (s[0] / len(batches), s[1] / len(batches)) for name, s in sums.items()}


def state_of(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_the_estimate_is_the_mean_of_each_batch_norms_batch_statistics():
    paddle.seed(0)
    model = trained_looking(TwoBlocks())
    model.eval()
    batches = make_batches()
    estimated = estimate_statistics(model, batches)
    expected = hand_estimate(model, batches)
    for name in ("bn1", "bn2"):
        mean, var = estimated[getattr(model, name)]
        np.testing.assert_allclose(mean, expected[name][0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(var, expected[name][1], rtol=1e-4, atol=1e-5)
    # an eval pass never reaches the training-only BN: nothing to estimate it from
    assert estimated[model.aux_bn] == (None, None)


def test_inside_the_statistics_are_the_estimate_and_outside_the_models_own():
    paddle.seed(0)
    model = trained_looking(TwoBlocks())
    model.train()            # a caller's mode is given back too
    before = state_of(model)
    momenta = [bn._momentum for bn in batch_norms(model)]
    batches = make_batches()
    x = make_batches(1, seed=7)[0]
    model.eval()
    plain = model(x)[0].numpy()
    model.train()
    estimated = estimate_statistics(model, batches)
    assert model.training and all(bn.training for bn in batch_norms(model))
    objects = [(bn._mean, bn._variance) for bn in batch_norms(model)]
    with recalibrated_batchnorm(model, batches) as count:
        assert count == 4    # mean and variance of bn1 and bn2
        np.testing.assert_array_equal(model.bn2._mean.numpy(), estimated[model.bn2][0])
        np.testing.assert_array_equal(model.bn1._variance.numpy(), estimated[model.bn1][1])
        np.testing.assert_array_equal(model.aux_bn._mean.numpy(), before["aux_bn._mean"])
        model.eval()
        recalibrated = model(x)[0].numpy()
    after = state_of(model)
    # the model's own parameter objects are back (the optimizer and the analysis hold them)
    assert [(bn._mean, bn._variance) for bn in batch_norms(model)] == objects
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    assert [bn._momentum for bn in batch_norms(model)] == momenta
    # stale statistics (mean 3, variance 5-9) against ones that fit the data: the outputs differ
    assert not np.allclose(plain, recalibrated, atol=1e-3)
    # with the statistics a batch gives, a batch-normalised output is centred
    assert abs(float(recalibrated.mean())) < abs(float(plain.mean()))


def test_statistics_the_estimate_leaves_unchanged_keep_their_objects():
    """Recalibrated twice: the second estimate equals what the first installed, bit for bit,
    so nothing is replaced (the sensitivity analysis relies on it to reuse layer outputs)."""
    model = trained_looking(TwoBlocks())
    model.eval()
    batches = make_batches()
    with recalibrated_batchnorm(model, batches):
        installed = [(bn._mean, bn._variance) for bn in batch_norms(model)]
        with recalibrated_batchnorm(model, batches) as count:
            assert count == 0
            assert [(bn._mean, bn._variance) for bn in batch_norms(model)] == installed
        # only bn2's input changes when conv2 does: bn1 keeps the installed objects
        conv2 = model.conv2.weight
        model.conv2.weight.set_value(conv2.numpy() * 2.0)
        with recalibrated_batchnorm(model, batches) as count:
            assert count == 2
            assert model.bn1._mean is installed[0][0] and model.bn2._mean is not installed[1][0]


def test_statistics_are_given_back_when_the_body_fails():
    model = trained_looking(TwoBlocks())
    before = state_of(model)
    with pytest.raises(RuntimeError):
        with recalibrated_batchnorm(model, make_batches()):
            raise RuntimeError("stop")
    for key, value in state_of(model).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_dropout_stays_off_while_estimating():
    paddle.seed(0)
    model = trained_looking(TwoBlocks(dropout=0.5))
    batches = make_batches()
    first = estimate_statistics(model, batches)
    second = estimate_statistics(model, batches)
    for bn in (model.bn1, model.bn2):   # a dropout in training mode would draw new masks
        np.testing.assert_array_equal(first[bn][0], second[bn][0])
        np.testing.assert_array_equal(first[bn][1], second[bn][1])


class ImageSet:
    """A dataset of random-crop samples drawn from the global generators, as transforms do."""

    def __init__(self, n, shapes=None):
        self.n, self.shapes = n, shapes

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        h, w = self.shapes[i % len(self.shapes)] if self.shapes else (4, 6)
        # the image's index, plus less than 1 of noise from the global generators
        return {"img": np.full((3, h, w), i, "float32") + np.random.uniform(0, 0.4)
                + 0.4 * random.random()}


def test_batches_are_reproducible_and_leave_the_callers_random_sequence_alone():
    random.seed(5)
    np.random.seed(5)
    expected_next = (random.random(), np.random.uniform())
    random.seed(5)
    np.random.seed(5)
    first = calibration_batches(ImageSet(5), num_batches=3, batch_size=4, seed=3)
    assert (random.random(), np.random.uniform()) == expected_next
    second = calibration_batches(ImageSet(5), num_batches=3, batch_size=4, seed=3)
    other = calibration_batches(ImageSet(5), num_batches=3, batch_size=4, seed=4)
    assert [b.shape for b in first] == [[4, 3, 4, 6]] * 3
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first, other))
    # 12 images from 5: every image is used before any is used again
    drawn = [int(img[0, 0, 0]) for b in first for img in b.numpy()]
    assert sorted(drawn[:5]) == sorted(drawn[5:10]) == [0, 1, 2, 3, 4]


def test_batches_refuse_what_cannot_be_batched():
    with pytest.raises(ValueError, match="several shapes"):
        calibration_batches(ImageSet(4, shapes=[(4, 6), (5, 6)]), num_batches=1, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        calibration_batches(ImageSet(0), num_batches=1, batch_size=2)
    with pytest.raises(ValueError, match="at least one batch"):
        calibration_batches(ImageSet(3), num_batches=0, batch_size=2)


def test_every_paddle_batch_norm_kind_is_found():
    layers = nn.Sequential(nn.BatchNorm1D(3), nn.BatchNorm2D(3), nn.BatchNorm3D(3),
                           nn.SyncBatchNorm(3), nn.LayerNorm(3))
    assert len(batch_norms(layers)) == 4
    assert bn_calibration.BATCH_NORM_BASE is nn.layer.norm._BatchNormBase
