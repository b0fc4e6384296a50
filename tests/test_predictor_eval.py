"""Sensitivity evaluations in a Paddle Inference predictor per pruned point
(``paddleseg.slim.predictor_eval``): the same metric as dygraph, checked before use, and a
dygraph fall-back that gives the plain metric."""
import os

import numpy as np
import paddle
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components)
import paddleseg.models  # noqa: F401
from conftest import write_optic_config
from paddleseg import slim
from paddleseg.core.val import evaluate_metrics
from paddleseg.slim.sensitivity import evaluators
from paddleseg.slim.sensitivity import predictor as predictor_eval
from paddleseg.slim.sensitivity.predictor import PredictorEvaluator

pytestmark = [
    pytest.mark.filterwarnings("ignore:When training, we now always track"),
    pytest.mark.skipif(not predictor_eval.onednn_available(), reason="this Paddle has no oneDNN"),
]


@pytest.fixture(scope="module")
def fastscnn(tiny_optic_root, tmp_path_factory):
    """The model, its val set and its groups, built and traced once for the file: every test
    leaves the model as it found it (the ones that prune undo it; the first checks that)."""
    from paddleseg.cvlibs import Config
    cfg = Config(write_optic_config(tmp_path_factory.mktemp("predictor_eval") / "fastscnn.yml",
                                    tiny_optic_root, "FastSCNN", [1, 0.4]))
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


def engine_of(model, dataset, groups, engine, recorded=None):
    """The evaluator ``evaluators.open_evaluator`` settles on, and its metric."""
    return engine_and_split(model, dataset, groups, engine, recorded)[::2]


def engine_and_split(model, dataset, groups, engine, recorded=None):
    """(evaluator name, predictor groups, metric of the unpruned model, evaluator class)."""
    with evaluators.open_evaluator(engine, model, dataset, groups, 2, recorded) as evaluator:
        split = {"dygraph": 0, "predictor": len(groups)}.get(
            evaluator.facts["name"], evaluator.facts.get("predictor_groups"))
        return evaluator.facts["name"], split, evaluator.evaluate(None), type(evaluator).__name__


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


def pretend_measured(monkeypatch, per_probe):
    """time_engines gives ``per_probe(position 0..1)`` = (predictor s, dygraph s) per probe."""
    def time_engines(self, reuse):
        probes = predictor_eval.probe_groups(self.groups)
        index = {g.id: k for k, g in enumerate(self.groups)}
        self.probe_seconds = [(index[p.id], *per_probe(index[p.id] / (len(self.groups) - 1)))
                              for p in probes]
        return {"predictor": 1.0, "dygraph": 1.0}
    monkeypatch.setattr(PredictorEvaluator, "time_engines", time_engines)


def test_auto_takes_the_engine_measured_faster_or_the_file_s_own(fastscnn, monkeypatch):
    model, dataset, groups = fastscnn

    def estimate(predictor, dygraph):
        pretend_measured(monkeypatch, lambda at: (predictor, dygraph))
    estimate(predictor=0.1, dygraph=1.0)
    assert engine_of(model, dataset, groups, "auto")[0] == "predictor"
    estimate(predictor=1.0, dygraph=0.1)
    assert engine_of(model, dataset, groups, "auto")[0] == "dygraph"
    # a file begun by the other engine is resumed with it, whatever is faster now
    assert engine_of(model, dataset, groups, "auto", {"name": "predictor"})[0] == "predictor"
    estimate(predictor=0.1, dygraph=1.0)
    assert engine_of(model, dataset, groups, "auto", {"name": "dygraph"})[0] == "dygraph"


def test_the_predictor_takes_the_first_groups_where_reuse_would_rerun_more():
    prefix = predictor_eval.predictor_prefix
    # reuse falls from 4 s (first group) to 0.5 s (last), a predictor costs 2 s anywhere
    probes = [(0, 2.0, 4.0), (3, 2.1, 3.0), (6, 1.9, 1.5), (9, 2.0, 0.5)]
    # interpolated reuse: 4, 3.67, 3.33, 3, 2.5, 2, 1.5, ...: above 2 for groups 0-4, a tie at 5
    assert prefix(10, probes) == 5
    assert prefix(10, [(0, 1.0, 4.0), (9, 1.0, 2.0)]) == 10      # the predictor is always faster
    assert prefix(10, [(0, 5.0, 4.0), (9, 5.0, 0.5)]) == 0       # reuse is always faster
    assert prefix(10, [(0, 1.0, 1.0), (9, 1.0, 1.0)]) == 0       # a tie goes to dygraph
    assert prefix(10, []) == 0 and prefix(0, probes) == 0
    assert [evaluators.kind_of_split(k, 10) for k in (0, 5, 10)] == \
        ["dygraph", "mixed", "predictor"]


def test_auto_evaluates_the_first_groups_in_predictors_where_that_is_faster(fastscnn,
                                                                            monkeypatch):
    model, dataset, groups = fastscnn
    # the predictor wins on the first third of the groups only
    pretend_measured(monkeypatch, lambda at: (1.0, 3.0 - 3.0 * at))
    engine, split, metric, kind = engine_and_split(model, dataset, groups, "auto")
    assert engine == "mixed" and 0 < split < len(groups) and kind == "SplitEvaluator"
    assert metric == plain_miou(model, dataset)   # the loss's base is dygraph's
    # a file begun that way is resumed with the same split, without timing anything
    monkeypatch.setattr(PredictorEvaluator, "time_engines", None)
    recorded = {"name": "mixed", "predictor_groups": split}
    assert engine_and_split(model, dataset, groups, "auto", recorded)[:2] == ("mixed", split)


def test_a_mixed_analysis_gives_each_group_its_engine_s_metric(fastscnn, tmp_path):
    from paddleseg.slim import sensitivity
    from paddleseg.slim.criteria import num_pruned
    from paddleseg.slim.sensitivity.reuse import SensitivityEvaluator
    model, dataset, groups = fastscnn
    split = len(groups) // 2
    with PredictorEvaluator(model, dataset, groups, 2) as fast:
        assert fast.prepare() is None
        with SensitivityEvaluator(model, dataset, 2) as reuse:
            mixed = evaluators.SplitEvaluator(fast, reuse, split)
            got = sensitivity.analyze(model, groups, mixed, [0.5], str(tmp_path / "mixed.json"))
            assert fast.predictor_points == sum(num_pruned(g.channels, 0.5) > 0
                                                for g in groups[:split])
            assert sensitivity.load(str(tmp_path / "mixed.json"))["fingerprint"]["evaluator"] == \
                {"name": "mixed", "predictor_groups": split}
    with SensitivityEvaluator(model, dataset, 2) as plain:
        want = sensitivity.analyze(model, groups, plain, [0.5], str(tmp_path / "plain.json"))
    for k, g in enumerate(groups):
        if k >= split:   # dygraph with reuse: the plain metric to the bit
            assert got[g.id] == want[g.id], g.id
        else:            # a predictor's: oneDNN may move a near tie
            assert abs(got[g.id][0.5] - want[g.id][0.5]) < 0.1, g.id


def test_auto_times_both_engines_on_pruned_probes_and_leaves_the_model_as_it_was(fastscnn):
    from paddleseg.slim.sensitivity.reuse import SensitivityEvaluator
    model, dataset, groups = fastscnn
    before = snapshot(model)
    with PredictorEvaluator(model, dataset, groups, 2) as evaluate:
        assert evaluate.prepare() is None
        with SensitivityEvaluator(model, dataset, 2) as reuse:
            seconds = evaluate.time_engines(reuse)
            assert set(seconds) == {"predictor", "dygraph"} and min(seconds.values()) > 0
            assert evaluate.seconds == seconds
            # per probe: its group's place in the analysis and both engines' times there
            probes = predictor_eval.probe_groups(groups)
            assert [i for i, _, _ in evaluate.probe_seconds] == \
                [groups.index(p) for p in probes]
            assert np.isclose(np.mean([p for _, p, _ in evaluate.probe_seconds]),
                              seconds["predictor"])
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
    assert evaluators.settled_choice("auto") == "auto"   # tests run on CPU
    assert evaluators.settled_choice("dygraph") == "dygraph"
    assert evaluators.settled_choice("predictor", {"name": "dygraph"}) == "predictor"
    monkeypatch.setattr(paddle, "get_device", lambda: "gpu:0")
    assert evaluators.settled_choice("auto") == "dygraph"
    with pytest.raises(ValueError, match="one of auto, predictor, dygraph"):
        evaluators.settled_choice("static")


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
