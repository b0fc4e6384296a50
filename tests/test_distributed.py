"""Several processes: ``paddle.distributed.launch`` with 2 CPU ranks (gloo) running train.py and
prune.py, and the pieces underneath (shards, sensitivity part files, layer-output reuse, ranks'
logs, CPU threads, SyncBatchNorm for export)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn as nn
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components)
import paddleseg.models  # noqa: F401
from conftest import ROOT, make_tiny_optic, run_cli, write_optic_config
from paddleseg import slim
from paddleseg.core.train_data import ResumableBatches
from paddleseg.slim import sensitivity
from paddleseg.slim.sensitivity.reuse import SensitivityEvaluator, same_value
from paddleseg.utils import distributed, logger

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")

TRAIN_LINE = re.compile(r"\[TRAIN\] iter (\d+)/\d+, loss ([0-9.]+)")
PRUNE = os.path.join(ROOT, "slim", "prune", "prune.py")


def launch(script, *args, log_dir, nproc=2, timeout=180):
    """``python -m paddle.distributed.launch`` on this machine's CPU; the launcher picks free
    ports, and each rank's output goes to log_dir/workerlog.N."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(nproc),
           "--log_dir", str(log_dir), script, *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def run(script, *args):
    """The single process a 2-rank job is compared with: the script's main(argv) in this
    process, through cli.run (conftest.run_cli)."""
    return run_cli(script, *args)


def worker_logs(log_dir, nproc=2):
    logs = []
    for rank in range(nproc):
        with open(os.path.join(log_dir, f"workerlog.{rank}"), encoding="utf-8") as f:
            logs.append(f.read())
    return logs


def failure(proc, log_dir):
    logs = "".join(f"\n--- workerlog.{i}\n{text[-3000:]}" for i, text in
                   enumerate(worker_logs(log_dir)) if os.path.isdir(log_dir))
    return proc.stdout[-2000:] + proc.stderr[-2000:] + logs


# -- train.py on 2 ranks ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def same_image_root(tmp_path_factory):
    """A synthetic optic-disc set whose 8 training samples are one image with 8 different label
    masks. Batch norm then sees the same statistics however a batch is split between ranks (on
    CPU each rank normalises with its own batch: Paddle has no CPU SyncBatchNorm), while the
    ranks' gradients differ: a 2-rank run matches a 1-process run on the same global batch
    only if the gradients are averaged."""
    root = make_tiny_optic(tmp_path_factory.mktemp("same") / "optic_disc_seg", num_train=8,
                           num_val=2)
    with open(os.path.join(root, "train_list.txt")) as f:
        pairs = [line.split() for line in f if line.strip()]
    with open(os.path.join(root, "train_list.txt"), "w") as f:
        f.writelines(f"{pairs[0][0]} {label}\n" for _, label in pairs)
    return root


TRAIN_ARGS = ["--iters", 2, "--save_interval", 1, "--log_iters", 1, "--seed", 3, "--cpu_threads", 1]


@pytest.fixture(scope="module")
def two_rank_run(same_image_root, tmp_path_factory):
    """train.py on 2 ranks, batch 2 each, 2 iterations, a checkpoint after each (HarDNet: no
    dropout, so nothing random differs between ranks)."""
    work = tmp_path_factory.mktemp("two_ranks")
    config = write_optic_config(work / "hardnet.yml", same_image_root, "HarDNet", [1])
    proc = launch("train.py", "--config", config, *TRAIN_ARGS, "--batch_size", 2, "--do_eval",
                  "--save_dir", work / "out", log_dir=work / "log")
    assert proc.returncode == 0, failure(proc, work / "log")
    return work, config


def test_two_ranks_share_the_evaluation_and_get_one_process_metrics(two_rank_run):
    from paddleseg.core.val import evaluate_metrics
    from paddleseg.cvlibs import Config
    work, config = two_rank_run
    log0, log1 = worker_logs(work / "log")
    assert "evaluating 2 images on 2 ranks" in log0 and "[EVAL]" not in log1
    logged = [tuple(map(float, m)) for m in re.findall(r"mIoU ([0-9.]+)  Acc ([0-9.]+)", log0)]
    assert len(logged) == 2  # after iterations 1 and 2
    cfg = Config(config)
    model = cfg.model
    model.set_state_dict(paddle.load(str(work / "out" / "iter_2" / "model.pdparams")))
    alone = evaluate_metrics(model, cfg.val_dataset, print_detail=False)
    # the same up to a pixel whose two logits are within float noise of a tie
    assert logged[-1] == pytest.approx((alone["mIoU"], alone["Acc"]), abs=1e-3)
    best = json.loads((work / "out" / "best_model" / "model_info.json").read_text())
    assert best["mIoU"] == pytest.approx(max(m for m, _ in logged), abs=1e-4)


def test_two_ranks_train_as_one_process_on_the_same_global_batch(two_rank_run, tmp_path):
    work, config = two_rank_run
    single = run("train.py", "--config", config, *TRAIN_ARGS, "--batch_size", 4,
                 "--save_dir", tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]

    log0, log1 = worker_logs(work / "log")
    # both ranks took part, each with its shard: 8 images / (2 ranks x 2) = 2 batches an epoch
    for rank, log in enumerate((log0, log1)):
        assert re.search(rf"\[rank {rank}\] training on 2 ranks: 2 batches of this rank's", log)
    # only rank 0 logs the loss and writes checkpoints, each once
    assert not TRAIN_LINE.search(log1) and "saved checkpoint" not in log1
    assert re.findall(r"saved checkpoint \S+", log0) == [
        f"saved checkpoint {work / 'out' / f'iter_{i}'}" for i in (1, 2)]
    state = json.loads((work / "out" / "iter_2" / "train_state.json").read_text())
    assert state == {"seed": 3, "epoch": 1, "batches_done": 0, "ranks": 2}

    # the logged loss (the mean over ranks) is the single process's on the same global batch
    ranks = [(int(i), float(v)) for i, v in TRAIN_LINE.findall(log0)]
    ones = [(int(i), float(v)) for i, v in TRAIN_LINE.findall(single.stdout)]
    assert [i for i, _ in ranks] == [i for i, _ in ones] == [1, 2]
    for (_, a), (_, b) in zip(ranks, ones):
        assert a == pytest.approx(b, rel=2e-3, abs=2e-4)
    # and the averaged gradient gave the same update: weights after step 1 agree to float noise
    a = paddle.load(str(work / "out" / "iter_1" / "model.pdparams"))
    b = paddle.load(str(tmp_path / "single" / "iter_1" / "model.pdparams"))
    moved = paddle.load(str(tmp_path / "single" / "iter_2" / "model.pdparams"))
    for key in b:
        if key.endswith(("_mean", "_variance")):  # unbiased variance: n differs per rank
            continue
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=0, atol=1e-5, err_msg=key)
    assert max(float(np.abs(moved[k].numpy() - b[k].numpy()).max()) for k in b) > 1e-3


def test_a_two_rank_run_resumed_repeats_the_uninterrupted_one(two_rank_run, tmp_path):
    work, config = two_rank_run
    log_dir = tmp_path / "log"
    proc = launch("train.py", "--config", config, *TRAIN_ARGS, "--batch_size", 2,
                  "--resume_model", work / "out" / "iter_1", "--save_dir", tmp_path / "resumed",
                  log_dir=log_dir)
    assert proc.returncode == 0, failure(proc, log_dir)
    log0, _ = worker_logs(log_dir)
    assert "resumed from" in log0 and "WARNING" not in log0
    assert [int(i) for i, _ in TRAIN_LINE.findall(log0)] == [2]
    straight = paddle.load(str(work / "out" / "iter_2" / "model.pdparams"))
    resumed = paddle.load(str(tmp_path / "resumed" / "iter_2" / "model.pdparams"))
    for key in straight:
        np.testing.assert_allclose(resumed[key].numpy(), straight[key].numpy(), rtol=0, atol=1e-6,
                                   err_msg=key)
    assert json.loads((tmp_path / "resumed" / "iter_2" / "train_state.json").read_text()) == \
        json.loads((work / "out" / "iter_2" / "train_state.json").read_text())


def test_shards_of_two_ranks_make_up_the_global_batch(tiny_optic_root, tmp_path):
    """Rank 0's batch k then rank 1's is the single process's batch k of twice the size (images
    and their random flips), with and without worker processes: --seed fixes the data of a job
    whatever --num_workers is."""
    from paddleseg.cvlibs import Config
    config = write_optic_config(tmp_path / "flip.yml", tiny_optic_root, "FastSCNN", [1, 0.4], flip=True)
    dataset = Config(config).train_dataset  # 4 images

    def batches(batch_size, workers, ranks=1, rank=0, n=4):
        data = ResumableBatches(dataset, batch_size, workers, seed=11, num_replicas=ranks,
                                rank=rank)
        it = iter(data)
        out = [next(it)[0].numpy() for _ in range(n)]  # 2 epochs
        it.close()
        return out, data.state()

    single, single_state = batches(4, 0)
    for workers in (0, 2):
        rank0, state0 = batches(2, workers, ranks=2, rank=0)
        rank1, state1 = batches(2, workers, ranks=2, rank=1)
        for k in range(4):
            assert np.array_equal(np.concatenate([rank0[k], rank1[k]]), single[k]), (workers, k)
        assert state0 == state1 == {**single_state, "ranks": 2}
    assert not np.array_equal(single[0], single[1])  # epochs are shuffled and flipped anew


# -- prune.py on 2 ranks ---------------------------------------------------------------------------

def test_two_rank_sensitivity_file_equals_the_single_process_one(tiny_optic_root, tmp_path):
    # one engine: the points are shared between ranks by sensitivity.analyze whatever evaluates
    # them (test_a_killed_rank_loses_no_point_and_none_is_counted_twice checks the sharing with
    # a plain evaluator); the predictor engine adds an export and predictors per rank
    engine = "predictor"
    config = write_optic_config(tmp_path / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1, 0.4])
    common = ["--config", config, "--pruning_ratio", 0.2, "--retraining_iters", 1,
              "--sen_ratios", 0.3, 0.6, "--sen_eval_num", 2, "--cpu_threads", 1, "--seed", 0,
              "--batch_size", 1, "--sen_evaluator", engine]
    single = run(PRUNE, *common, "--save_dir", tmp_path / "single")
    assert single.returncode == 0, single.stderr[-3000:]
    log_dir = tmp_path / "log"
    proc = launch(PRUNE, *common, "--save_dir", tmp_path / "ranks", log_dir=log_dir)
    assert proc.returncode == 0, failure(proc, log_dir)

    merged = (tmp_path / "ranks" / "sensitivity.json").read_bytes()
    assert merged == (tmp_path / "single" / "sensitivity.json").read_bytes()
    losses = json.loads(merged)["losses"]
    assert len(losses) > 10 and all(len(v) == 2 for v in losses.values())
    assert sorted(os.listdir(tmp_path / "ranks")) == sorted(os.listdir(tmp_path / "single"))
    assert not sensitivity.part_files(str(tmp_path / "ranks" / "sensitivity.json"))
    log0, log1 = worker_logs(log_dir)
    # both ranks measured half of the points; rank 0 alone ran the phases that write
    points = int(re.search(r"sensitivity: (\d+) points to measure", log0).group(1))
    for rank, log in enumerate((log0, log1)):
        assert f"[rank {rank}] sensitivity: {points} points to measure, {points // 2} of them " \
               "here" in log
    assert "[rank 1] training on 2 ranks" in log1
    assert "[INFO] == export" in log0 and "[INFO] == " not in log1
    with open(tmp_path / "ranks" / "report.json") as f:
        assert json.load(f)["sen_engine"] == engine


def toy_net():
    paddle.seed(0)
    return nn.Sequential(nn.Conv2D(3, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(),
                         nn.Conv2D(16, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(),
                         nn.Conv2D(16, 2, 1))


class CountingEval:
    """A cheap, deterministic metric of the model as it is; can die after ``lives`` calls."""

    def __init__(self, model, lives=None):
        self.model, self.lives, self.calls = model, lives, 0
        self.x = paddle.to_tensor(np.random.RandomState(0).rand(1, 3, 8, 8).astype("float32"))

    def __call__(self):
        self.calls += 1
        if self.lives is not None and self.calls > self.lives:
            raise KeyboardInterrupt("killed")
        with paddle.no_grad():
            return 1.0 + float(self.model(self.x).abs().mean())


def test_a_killed_rank_loses_no_point_and_none_is_counted_twice(tmp_path, monkeypatch):
    ratios = [0.25, 0.5, 0.75]
    model = toy_net()
    model.eval()
    groups = slim.build_groups(model, (1, 3, 8, 8)).groups
    straight = str(tmp_path / "straight.json")
    reference = CountingEval(model)
    sensitivity.analyze(model, groups, reference, ratios, straight)
    points = reference.calls - 1  # the base, then one call per point

    # rank 1 of a 2-rank job measures every other point and dies after 2 of them
    sen_file = str(tmp_path / "sen.json")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setattr(distributed, "barrier", lambda: None)
    with pytest.raises(KeyboardInterrupt):
        sensitivity.analyze(model, groups, CountingEval(model, lives=2), ratios, sen_file)
    part = sensitivity.part_file(sen_file, 1)
    assert sensitivity.part_files(sen_file) == [part]
    assert sum(len(v) for v in json.loads(open(part).read())["metrics"].values()) == 2

    # started again as one process: the 2 points are taken over, the rest measured once each
    monkeypatch.delenv("PADDLE_TRAINERS_NUM")
    monkeypatch.delenv("PADDLE_TRAINER_ID")
    again = CountingEval(model)
    sensitivity.analyze(model, groups, again, ratios, sen_file)
    assert again.calls == 1 + points - 2
    assert open(sen_file).read() == open(straight).read()
    assert sensitivity.part_files(sen_file) == []


def test_part_files_in_save_dir_belong_to_the_prune_output(tmp_path):
    from paddleseg.slim.output.publish import check_save_dir
    save_dir = tmp_path / "out"
    save_dir.mkdir()
    (save_dir / "sensitivity.json.part1.json").write_text("{}")
    check_save_dir(str(save_dir))  # a killed job's part file does not make the folder foreign
    (save_dir / "sensitivity.json.part1.json.bak").write_text("{}")
    with pytest.raises(paddleseg.utils.UserError, match="part1.json.bak"):
        check_save_dir(str(save_dir))


# -- faster sensitivity evaluations ----------------------------------------------------------------

def test_reusing_layer_outputs_gives_the_plain_metric_of_every_pruned_model(tiny_optic_root,
                                                                           tmp_path, monkeypatch):
    from paddleseg.cvlibs import Config
    from paddleseg.core.val import evaluate_metrics
    from paddleseg.slim.sensitivity import reuse as fast_eval
    compared = {"all": 0, "ran": 0}

    def counting_same_value(a, b):   # what reaches an element-wise comparison
        compared["all"] += 1
        compared["ran"] += any(evaluate._ran.get(id(t)) is t for t in fast_eval._tensors(b))
        return same_value(a, b)
    monkeypatch.setattr(fast_eval, "same_value", counting_same_value)
    cfg = Config(write_optic_config(tmp_path / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1, 0.4]))
    paddle.seed(1)
    model = cfg.model
    model.eval()
    dataset = cfg.val_dataset
    analysis = slim.build_groups(model, (1, 3, 64, 64))
    by_id = {g.id: g for g in analysis.groups}
    with SensitivityEvaluator(model, dataset, 2) as evaluate:
        assert evaluate() == evaluate_metrics(model, dataset, 2, print_detail=False)["mIoU"]
        for g in analysis.groups:
            _, undo = slim.apply.prune(model, by_id, {g.id: 0.5}, "l1")
            try:
                fast = evaluate()
                plain = evaluate_metrics(model, dataset, 2, print_detail=False)["mIoU"]
            finally:
                undo.restore()
            assert fast == plain, g.id
        assert evaluate.hits > len(analysis.groups) and evaluate.reuse
    # downstream of a pruned layer, inputs a layer produced by running are not compared
    assert compared["all"] > 0 and compared["ran"] == 0
    # the model has its own forward methods back (paddle.jit.save works on it)
    assert not any("forward" in layer.__dict__ for layer in model.sublayers(include_self=True))


def test_an_evaluation_by_someone_else_inside_the_evaluator_is_plain(tiny_optic_root, tmp_path):
    """The layers stay wrapped while the evaluator is entered; a plain evaluation then (as
    benchmarks/studies/sensitivity_eval_speed.py makes, right after a reuse evaluation of another
    pruned model) must not reuse anything."""
    from paddleseg.cvlibs import Config
    from paddleseg.core.val import evaluate_metrics
    cfg = Config(write_optic_config(tmp_path / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1, 0.4]))
    paddle.seed(1)
    model = cfg.model
    model.eval()
    dataset = cfg.val_dataset
    by_id = {g.id: g for g in slim.build_groups(model, (1, 3, 64, 64)).groups}
    first, last = list(by_id)[0], list(by_id)[-1]

    image = paddle.to_tensor(dataset[0]["img"][None])

    def plain_with(gid):   # logits: the mIoU of a tiny random model hides small changes
        _, undo = slim.apply.prune(model, by_id, {gid: 0.5}, "l1")
        try:
            with paddle.no_grad():
                return (model(image)[0].numpy(),
                        evaluate_metrics(model, dataset, 1, print_detail=False)["mIoU"])
        finally:
            undo.restore()
    alone = plain_with(first)
    with SensitivityEvaluator(model, dataset, 1) as evaluate:
        evaluate.prepare()
        _, undo = slim.apply.prune(model, by_id, {last: 0.5}, "l1")
        evaluate()   # the first pruned evaluation checks itself against a plain one
        evaluate()   # this one reuses: layers under a reused one are not called
        undo.restore()
        inside = plain_with(first)
    assert np.array_equal(inside[0], alone[0]) and inside[1] == alone[1]


def test_reuse_needs_exactly_equal_inputs():
    a = paddle.to_tensor([1e-10, 2.0])
    b = paddle.to_tensor([2e-10, 2.0])
    assert bool(paddle.equal_all(a, b))  # paddle's comparison is not exact: why same_value exists
    assert not same_value(a, b) and same_value(a, a.clone())
    assert same_value([a, 3, None], [a.clone(), 3, None]) and not same_value([a], [b])


@pytest.mark.parametrize("classes", [1, 2, 3, 4, 5, 11])
def test_the_evaluator_s_label_maps_are_paddle_s_to_the_bit(classes):
    from paddleseg.core.infer import predicted_labels
    from paddleseg.slim.sensitivity import reuse as fast_eval
    rng = np.random.RandomState(classes)
    # rounded to one decimal: many exact ties between classes, which must go to the first
    logits = np.round(rng.randn(1, classes, 40, 56), 1).astype("float32")
    logits[0, -1, :5, :5] = logits[0, 0, :5, :5]
    records = [("resize", (90, 120)), ("padding", (45, 60))]
    want = predicted_labels(paddle.to_tensor(logits), records)
    got = fast_eval.predicted_labels(paddle.to_tensor(logits), records)
    assert got.shape == want.shape == (90, 120) and np.array_equal(got, want)
    direct = fast_eval.first_max_labels(paddle.to_tensor(logits))
    assert np.array_equal(direct, paddle.to_tensor(logits).argmax(axis=1).numpy()[0])


# -- ranks' logs, threads, batch norm --------------------------------------------------------

def test_only_rank_0_logs_information(monkeypatch, capsys):
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    logger.info("progress")
    logger.info("hello", every_rank=True)
    logger.warning("careful")
    out = capsys.readouterr().out
    assert "progress" not in out and "[rank 1] hello" in out and "[rank 1] careful" in out
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")
    logger.info("progress")
    assert "] progress" in capsys.readouterr().out


def test_cpu_threads_default_to_the_cores_shared_by_the_ranks(monkeypatch):
    monkeypatch.setattr(distributed, "available_cores", lambda: 8)
    assert distributed.default_cpu_threads() == 8
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "4")
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", "2")  # 2 of the 4 ranks on this machine
    assert distributed.default_cpu_threads() == 4
    monkeypatch.setattr(distributed, "available_cores", lambda: 1)
    assert distributed.default_cpu_threads() == 1


def _openmp_max_threads():
    """Paddle's OpenMP runtime's thread count as its kernels see it (None: not found)."""
    import ctypes
    with open("/proc/self/maps") as f:
        libs = {line.split()[-1] for line in f if "libiomp5" in line}
    for path in libs:
        lib = ctypes.CDLL(path)
        if hasattr(lib, "omp_get_max_threads"):
            return lib.omp_get_max_threads()
    return None


def test_a_predictor_run_leaves_the_process_threads_as_they_were(tmp_path):
    from paddleseg.deploy.predictor import cpu_predictor_from_memory, run_predictor
    net = nn.Sequential(nn.Conv2D(3, 4, 3), nn.ReLU())
    net.eval()
    paddle.jit.save(net, str(tmp_path / "net"),
                    input_spec=[paddle.static.InputSpec([1, 3, 8, 8], "float32")])
    program = (tmp_path / "net.pdmodel").read_bytes()
    params = (tmp_path / "net.pdiparams").read_bytes()
    threads = distributed.cpu_threads()
    try:
        distributed.set_cpu_threads(2)
        if _openmp_max_threads() is None:
            pytest.skip("this Paddle has no libiomp5 to ask for its thread count")
        assert _openmp_max_threads() == 2
        run_predictor(cpu_predictor_from_memory(program, params, 2), np.zeros([1, 3, 8, 8]))
        # Paddle Inference leaves its OpenMP at 1 thread after a run: dygraph after it (the
        # retraining after a latency search) ran on one core and computed differently
        assert _openmp_max_threads() == 2
    finally:
        distributed.set_cpu_threads(threads)


def test_sync_batch_norm_is_exported_as_plain_batch_norm():
    from paddleseg.models.layers.layer_libs import plain_batchnorm
    paddle.seed(0)
    net = nn.Sequential(nn.Conv2D(3, 4, 3), nn.SyncBatchNorm(4))
    net[1]._mean.set_value(paddle.rand([4]))
    net[1]._variance.set_value(paddle.rand([4]) + 0.5)
    before = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    assert plain_batchnorm(net) == 1 and type(net[1]) is nn.BatchNorm2D
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k].numpy()) for k in before)
    net.eval()
    x = paddle.rand([1, 3, 8, 8])
    y, conv = net(x).numpy(), net[0](x).numpy()
    bn = {k: before["1." + k][None, :, None, None]
          for k in ("_mean", "_variance", "weight", "bias")}
    expected = (conv - bn["_mean"]) / np.sqrt(bn["_variance"] + 1e-5) * bn["weight"] + bn["bias"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_every_model_builds_its_batch_norms_through_the_factory(monkeypatch):
    """With several ranks on GPUs the factory gives SyncBatchNorm: no model may build a plain
    BatchNorm2D of its own (it would not be synchronised)."""
    from paddleseg.models.layers import layer_libs
    from test_models import SPECS, build
    made = []

    def factory(num_features, **kwargs):
        made.append(num_features)
        return nn.BatchNorm2D(num_features, **kwargs)
    monkeypatch.setattr(layer_libs, "SyncBatchNorm", factory)
    for module in ("bisenet",):  # the models that import the factory by name
        monkeypatch.setattr(f"paddleseg.models.{module}.SyncBatchNorm", factory)
    for name in SPECS:
        made.clear()
        model = build(name, 2)
        norms = [m for m in model.sublayers() if isinstance(m, nn.layer.norm._BatchNormBase)]
        assert len(norms) == len(made), name
