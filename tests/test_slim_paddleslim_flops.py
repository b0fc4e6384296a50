"""Our FLOPs counter against PaddleSlim's dygraph_flops, before and after pruning.

PaddleSlim also counts batch norm, activations and biases, so totals differ by about 1%; what
pruning reports (the reduction) must agree within 1.5 points.
"""
import paddle
import pytest
from paddleslim.analysis import dygraph_flops

from paddleseg import slim
from paddleseg.models import FastSCNN, UNet

SHAPE = [1, 3, 64, 64]


@pytest.mark.parametrize("cls", [FastSCNN, UNet])
def test_flops_and_reduction_agree_with_paddleslim(cls):
    paddle.seed(0)
    model = cls(num_classes=2)
    model.eval()
    ours0, theirs0 = slim.count_flops(model, SHAPE), dygraph_flops(model, SHAPE)
    assert abs(ours0 - theirs0) / theirs0 < 0.02
    analysis = slim.build_groups(model, SHAPE)
    slim.prune_model(model, analysis, {g.id: 0.25 for g in analysis.groups}, "l1")
    ours1, theirs1 = slim.count_flops(model, SHAPE), dygraph_flops(model, SHAPE)
    assert ours1 < 0.8 * ours0
    assert abs((1 - ours1 / ours0) - (1 - theirs1 / theirs0)) < 0.015
