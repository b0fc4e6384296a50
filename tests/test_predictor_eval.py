"""Sensitivity evaluations in a Paddle Inference predictor per pruned point
(``paddleseg.slim.predictor_eval``): the same metric as dygraph, checked before use, and a
dygraph fall-back that gives the plain metric."""
import os
import types

import numpy as np
import paddle
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components)
import paddleseg.models  # noqa: F401
from conftest import write_optic_config
from paddleseg import slim
from paddleseg.core.val import evaluate_metrics
from paddleseg.slim import pipeline, predictor_eval
from paddleseg.slim.predictor_eval import PredictorEvaluator

pytestmark = [
    pytest.mark.filterwarnings("ignore:When training, we now always track"),
    pytest.mark.skipif(not predictor_eval.onednn_available(), reason="this Paddle has no oneDNN"),
]


@pytest.fixture
def fastscnn(tiny_optic_root, tmp_path):
    from paddleseg.cvlibs import Config
    cfg = Config(write_optic_config(tmp_path / "fastscnn.yml", tiny_optic_root, "FastSCNN",
                                    [1, 0.4]))
    paddle.seed(1)
    model = cfg.model
    model.eval()
    analysis = slim.build_groups(model, (1, 3, 64, 64))
    return model, cfg.val_dataset, analysis.groups


def plain_miou(model, dataset):
    return evaluate_metrics(model, dataset, 2, print_detail=False)["mIoU"]


def snapshot(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def test_every_pruned_model_gets_the_dygraph_metric(fastscnn):
    model, dataset, groups = fastscnn
    by_id = {g.id: g for g in groups}
    before = snapshot(model)
    with PredictorEvaluator(model, dataset, groups, 2) as evaluate:
        assert evaluate.prepare() is None
        folder = evaluate._folder
        assert os.path.isdir(folder)
        assert abs(evaluate() - plain_miou(model, dataset)) < 1e-6
        exact = 0
        for g in groups:
            _, undo = slim.apply.prune(model, by_id, {g.id: 0.5}, "l1")
            try:
                got, want = evaluate(), plain_miou(model, dataset)
            finally:
                undo.restore()
            # oneDNN moves logits in their last digits: an argmax may flip on a near tie
            assert abs(got - want) < 0.02, g.id
            exact += got == want
        assert exact >= 0.9 * len(groups)
        assert evaluate.predictor_points == len(groups) + 1 and evaluate.dygraph_points == 0
    # the export, the probes and the points left the model and the disk as they were
    assert not os.path.exists(folder)
    assert not any("forward" in layer.__dict__ for layer in model.sublayers(include_self=True))
    after = snapshot(model)
    assert after.keys() == before.keys()
    assert all(np.array_equal(after[k], before[k]) for k in before)


def engine_of(model, dataset, groups, engine, recorded_extra=None):
    """The engine ``pipeline.sensitivity_evaluator`` settles on, and its evaluator's metric."""
    options = types.SimpleNamespace(sen_engine=engine)
    with pipeline.sensitivity_evaluator(options, model, dataset, groups, 2,
                                        recorded_extra) as (evaluate, chosen):
        return chosen, evaluate()


def test_a_predictor_that_disagrees_with_dygraph_is_not_used(fastscnn, monkeypatch, capsys):
    model, dataset, groups = fastscnn
    monkeypatch.setattr(predictor_eval, "close_logits", lambda got, want: False)
    with PredictorEvaluator(model, dataset, groups, 2) as evaluate:
        assert evaluate.prepare() == "the predictor's logits differ from dygraph's on the " \
                                     "unpruned model"
        with pytest.raises(RuntimeError, match="predictors cannot evaluate this model"):
            evaluate()
    # asked for by name, still not used: the analysis evaluates in dygraph and says so
    assert engine_of(model, dataset, groups, "predictor") == ("dygraph", plain_miou(model, dataset))
    assert "differ from dygraph's on the unpruned model; evaluating in dygraph" in \
        capsys.readouterr().out


def test_auto_takes_the_engine_measured_faster_or_the_file_s_own(fastscnn, monkeypatch):
    model, dataset, groups = fastscnn

    def estimate(predictor, dygraph):
        monkeypatch.setattr(PredictorEvaluator, "time_engines",
                            lambda self, reuse: {"predictor": predictor, "dygraph": dygraph})
    estimate(predictor=0.1, dygraph=1.0)
    assert engine_of(model, dataset, groups, "auto")[0] == "predictor"
    estimate(predictor=1.0, dygraph=0.1)
    assert engine_of(model, dataset, groups, "auto")[0] == "dygraph"
    # a file begun by the other engine is resumed with it, whatever is faster now
    begun = "config abc; eval images 2; " + predictor_eval.FINGERPRINT_NOTE
    assert engine_of(model, dataset, groups, "auto", recorded_extra=begun)[0] == "predictor"
    estimate(predictor=0.1, dygraph=1.0)
    assert engine_of(model, dataset, groups, "auto", recorded_extra="config abc")[0] == "dygraph"


def test_auto_times_both_engines_on_pruned_probes_and_leaves_the_model_as_it_was(fastscnn):
    from paddleseg.slim.fast_eval import SensitivityEvaluator
    model, dataset, groups = fastscnn
    before = snapshot(model)
    with PredictorEvaluator(model, dataset, groups, 2) as evaluate:
        assert evaluate.prepare() is None
        with SensitivityEvaluator(model, dataset, 2) as reuse:
            seconds = evaluate.time_engines(reuse)
            assert set(seconds) == {"predictor", "dygraph"} and min(seconds.values()) > 0
            assert evaluate.seconds == seconds
            # reuse was prepared before any probe was pruned, checked once and stays on
            assert reuse.checked and reuse.reuse and reuse.hits > 0
            # the probes are not points of the analysis
            assert evaluate.predictor_points == 0 and evaluate.dygraph_points == 0
            assert reuse() == plain_miou(model, dataset)
    after = snapshot(model)
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_a_point_without_a_predictor_is_evaluated_in_dygraph(fastscnn, monkeypatch, capsys):
    model, dataset, groups = fastscnn
    by_id = {g.id: g for g in groups}
    with PredictorEvaluator(model, dataset, groups, 2) as evaluate:
        evaluate.prepare()

        def refuse(*args, **kwargs):
            raise RuntimeError("no primitive")
        monkeypatch.setattr(predictor_eval, "cpu_predictor_from_memory", refuse)
        _, undo = slim.apply.prune(model, by_id, {groups[-1].id: 0.5}, "l1")
        try:
            assert evaluate() == plain_miou(model, dataset)
        finally:
            undo.restore()
        assert evaluate.dygraph_points == 1 and evaluate.predictor_points == 0
    assert "no predictor for this point (RuntimeError)" in capsys.readouterr().out


def test_auto_measures_on_cpu_only(monkeypatch):
    assert predictor_eval.resolve_engine("auto") == "auto"   # tests run on CPU
    assert predictor_eval.resolve_engine("dygraph") == "dygraph"
    assert predictor_eval.resolve_engine("predictor", "config abc") == "predictor"
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:0")
    assert predictor_eval.resolve_engine("auto") == "dygraph"
    with pytest.raises(ValueError, match="one of auto, predictor, dygraph"):
        predictor_eval.resolve_engine("static")


@pytest.mark.parametrize("classes", [1, 2, 11])
def test_label_map_undoes_the_transforms_as_reverse_transform_does(classes):
    from paddleseg.core.infer import reverse_transform
    logits = np.random.RandomState(classes).randn(1, classes, 48, 64).astype("float32")
    # as transforms record them: resized from 90x120 to 50x66, then padded to 48x64 (cropped)
    records = [("resize", (90, 120)), ("padding", (45, 60))]
    got = predictor_eval.label_map(logits, records)
    want = reverse_transform(paddle.to_tensor(logits), records).argmax(axis=1).numpy()[0]
    assert got.shape == want.shape == (90, 120)
    # OpenCV's and Paddle's bilinear agree but for rounding: a near tie may flip
    assert (got != want).mean() < 1e-3
    with pytest.raises(ValueError, match="unknown transform record"):
        predictor_eval.label_map(logits, [("rotate", (1, 1))])
