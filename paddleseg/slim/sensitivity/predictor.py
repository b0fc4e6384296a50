"""Sensitivity evaluations in a Paddle Inference predictor (CPU, oneDNN), one per pruned point.

Why: on CPU, Paddle's dygraph runs convolutions without oneDNN. Measured on this project's
2-core machine (membrane configs at 256x256, one thread), one forward takes 140 ms (BiSeNetV2),
440-600 ms (HarDNet) and 2.2-2.3 s (UNet) in dygraph, against 30, 84-108 and 300 ms in a
predictor. Exporting every pruned variant to build its predictor cost 1.0-1.5 s per point,
which ate the gain at a few eval images.

How: the unpruned model is exported once (:class:`ProgramTemplate`). oneDNN kernels take every
shape from the weights they are given, not from the shapes recorded in the program, so a pruned
variant runs on the unpruned model's program with its own, smaller weights. Those weights are
serialized in memory in the order the export wrote them (by parameter name), so a point costs
one predictor creation and no file. The predictor is created without IR passes (they took up
to 17 s for FCN-HRNetW18, against 0.1-0.6 s without); the program asks for oneDNN kernels
itself. This is checked, not assumed: ``prepare()`` requires the serialized unpruned weights to
equal the exported file byte for byte, and the predictor's logits to match dygraph's on the
unpruned model and on pruned probes (four groups from the first to the last, each at half its
channels); it says what failed, and the caller evaluates in dygraph instead. A point whose
predictor cannot be built is evaluated in dygraph alone.

Which is faster than dygraph with reuse depends on the model, the images and where a group
sits: :meth:`PredictorEvaluator.time_engines` measures both on pruned probes, and
:func:`predictor_prefix` turns those times into a split (``--sen_evaluator auto``, see
:mod:`.evaluators`).

The metric is the predictor's: oneDNN's kernels move the logits in their last digits, and
the logits are resized back to the label's size by OpenCV (:func:`label_map`), so a point's
metric may differ from dygraph's in its last digits (that is why the sensitivity
fingerprint names the evaluator). Every rank of a job builds its predictors the same way, so the
merged file of a job still equals a single process's.
"""
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
import paddle

from ...core import metrics as M
from ...core.export import MODEL_FILE, PARAMS_FILE, export_model
from ...core.infer import predicted_labels
from ...core.val import areas_of
from ...deploy.predictor import cpu_predictor_from_memory, run_predictor
from ...utils import distributed, logger
from .. import apply as _apply
from .. import graph as _graph
from .protocol import Evaluator
from .reuse import KeptSamples

PROBE_RATIO = 0.5
CV2_MAX_CHANNELS = 512   # OpenCV's limit on the channels of one image
PROBES = 4
# oneDNN's kernels move logits by about 1e-6 of their scale (measured on our five models); a
# program that ran with wrong shapes or weights misses by far more
LOGIT_TOLERANCE = 1e-3


def predictor_prefix(num_groups, probes):
    """How many of the analysis's first groups to evaluate in predictors, the rest in dygraph
    with reuse: the split with the least expected total time. ``probes``: (group index,
    predictor s, dygraph s) measured on pruned probes. A predictor costs about the same on any
    group; reuse reruns what follows the pruned layer, so its cost at a group is interpolated
    between the probes around it (in analysis order, which follows the forward pass). Ties go
    to dygraph, whose metric is the plain evaluation's to the bit."""
    if not probes or num_groups == 0:
        return 0
    probes = sorted(probes)
    at = np.arange(num_groups)
    predictor = np.full(num_groups, float(np.mean([p for _, p, _ in probes])))
    reuse = np.interp(at, [i for i, _, _ in probes], [d for _, _, d in probes])
    # total(k) = predictor on groups [0, k) + reuse on [k, n)
    totals = np.concatenate([[0.0], np.cumsum(predictor)]) + \
        np.concatenate([np.cumsum(reuse[::-1])[::-1], [0.0]])
    return int(np.argmin(totals))


def probe_groups(groups, count=PROBES):
    """Up to ``count`` groups spread evenly from the first to the last (of those with a channel
    to spare)."""
    candidates = [g for g in groups if g.channels >= 2]
    if len(candidates) <= count:
        return candidates
    step = (len(candidates) - 1) / (count - 1)
    return [candidates[round(k * step)] for k in range(count)]


class Stopwatch:
    def __init__(self):
        self.last = time.perf_counter()

    def lap(self):
        """Seconds since the last lap (or the start)."""
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def onednn_available():
    return paddle.base.core.is_compiled_with_mkldnn()


class ProgramTemplate:
    """The unpruned model's exported program, made to run any pruned variant's weights on
    oneDNN kernels (every op that has the choice asks for them: no IR pass will).

    A program bakes two things from weight shapes that pruning changes: the reshape of a conv
    bias to ``[1, C, 1, 1]`` (made ``[1, -1, 1, 1]`` here, once) and the ``groups`` of a
    depthwise conv (set per variant from its filter's shape, keeping the channel multiplier).
    Anything else a model bakes is caught by the evaluator's check against dygraph."""

    def __init__(self, program_bytes):
        self.desc = paddle.base.core.ProgramDesc(program_bytes)
        self.weights = saved_weight_names(self.desc)
        self.depthwise = []   # (op, filter name, output channels per group)
        for op in self._ops():
            if op.has_attr("use_mkldnn"):
                op._set_attr("use_mkldnn", True)
            if op.type() == "reshape2" and set(op.input("X")) <= self.weights:
                shape = list(op.attr("shape"))
                if sum(d > 1 for d in shape) == 1 and -1 not in shape:
                    op._set_attr("shape", [-1 if d > 1 else d for d in shape])
            elif op.type() in ("conv2d", "depthwise_conv2d") and op.attr("groups") > 1:
                name = op.input("Filter")[0]
                out_channels = self.desc.block(0).find_var_recursive(name.encode()).shape()[0]
                self.depthwise.append((op, name, out_channels // op.attr("groups")))

    def _ops(self):
        for b in range(self.desc.num_blocks()):
            block = self.desc.block(b)
            for i in range(block.op_size()):
                yield block.op(i)

    def for_shapes(self, shapes):
        """The program's bytes for weights of ``shapes`` ({weight name: shape})."""
        for op, name, per_group in self.depthwise:
            op._set_attr("groups", int(shapes[name][0]) // per_group)
        return self.desc.serialize_to_string()


def saved_weight_names(desc):
    """Names of the persistable variables an exported program (a ProgramDesc: the static
    Program.parse_from_string refuses to run in dygraph) loads from its params file."""
    return {v.name() for i in range(desc.num_blocks()) for v in desc.block(i).all_vars()
            if v.persistable() and v.name() not in ("feed", "fetch")}


def close_logits(got, want):
    scale = max(1.0, float(np.abs(want).max()))
    return got.shape == want.shape and bool(np.abs(got - want).max() <= LOGIT_TOLERANCE * scale)


class PredictorEvaluator(Evaluator):
    """``evaluator()`` is the mIoU of ``model`` as it is now on the first ``max_images`` of
    ``dataset``, evaluated in a Paddle Inference predictor. A context manager like
    :class:`~paddleseg.slim.fast_eval.SensitivityEvaluator`, entered with the model unpruned;
    call ``prepare()`` first: it returns what makes predictors unusable for this model (then
    evaluate in dygraph), or None. ``groups``: the analysis's prunable groups (for the probes)."""

    def __init__(self, model, dataset, groups, max_images=None, cpu_threads=None):
        self.model, self.dataset, self.groups = model, dataset, list(groups)
        self.n = len(dataset) if max_images is None else min(max_images, len(dataset))
        self.cpu_threads = cpu_threads or distributed.cpu_threads()
        self.samples = None
        self.program = None      # a ProgramTemplate once exported
        self.names = None        # state-dict key -> the name the export gave its tensor
        self.param_order = None  # state-dict keys in the order of the exported params file
        self.seconds = {}        # seconds per evaluation by engine, once time_engines() ran
        self.probe_seconds = []  # (group index, predictor s, dygraph s) per probe, likewise
        self.problem = None
        self.predictor_points = 0
        self.dygraph_points = 0
        self._folder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
        self.samples = None
        return False

    # -- set-up ------------------------------------------------------------------------------
    def prepare(self):
        """Keep the eval images, export the unpruned model once, check the predictor against
        dygraph and time both. Returns the problem that rules predictors out, or None."""
        if self.program is None and self.problem is None:
            self.samples = KeptSamples(self.dataset, self.n, on_read=lambda i: None)
            self.problem = self._export() or self._check_against_dygraph()
        return self.problem

    def _export(self):
        self._folder = tempfile.mkdtemp(prefix="paddleseg-sen-")
        # one key per tensor: a layer kept under two names (UNet's cls and conv) repeats its own
        names, seen = {}, set()
        for key, tensor in self.model.state_dict().items():
            if tensor.name not in seen:
                names[key] = tensor.name
                seen.add(tensor.name)
        # jit.save leaves the layers' forwards converted by dy2static; keep the plain ones
        with _graph.forwards_kept(self.model):
            export_model(self.model, self._folder, output_op="none", val_transforms_config=[],
                         model_type=type(self.model).__name__)
        with open(os.path.join(self._folder, MODEL_FILE), "rb") as f:
            self.program = ProgramTemplate(f.read())
        with open(os.path.join(self._folder, PARAMS_FILE), "rb") as f:
            exported = f.read()
        # the export keeps only what the eval forward uses (no auxiliary heads)
        missing = self.program.weights - seen
        if missing:
            return f"the export holds weights the model has not ({sorted(missing)[0]})"
        self.names = names
        self.param_order = sorted((key for key in names if names[key] in self.program.weights),
                                  key=names.get)
        if self._params(self.model.state_dict()) != exported:
            return "the exported parameters are not the model's state dict in name order"
        return None

    def _check_against_dygraph(self):
        by_id = {g.id: g for g in self.groups}
        for probe in [None] + probe_groups(self.groups):
            undo = None
            if probe is not None:
                _, undo = _apply.prune(self.model, by_id, {probe.id: PROBE_RATIO}, "l1")
            try:
                got, want = self._both_logits()
            except Exception as e:  # noqa: BLE001  (any failure means: do not use predictors)
                text = str(e).strip()
                return (f"a predictor failed on {probe.id if probe else 'the unpruned model'}: "
                        f"{text.splitlines()[-1] if text else type(e).__name__}")
            finally:
                if undo is not None:
                    undo.restore()
            if not close_logits(got, want):
                where = f"group {probe.id} pruned" if probe else "the unpruned model"
                return f"the predictor's logits differ from dygraph's on {where}"
        return None

    def _both_logits(self):
        """The predictor's and dygraph's logits for the first eval image."""
        image = self.samples[0]["img"][None]
        got = run_predictor(self._predictor(), image)
        with paddle.no_grad():
            want = self.model(paddle.to_tensor(image))[0].numpy()
        return got, want

    def time_engines(self, reuse):
        """Seconds per evaluation of this engine and of dygraph with reuse (``reuse``: a
        SensitivityEvaluator entered on the same, unpruned model), measured on real points: the
        probe groups at half their channels, both engines in turn on each, as the analysis
        will evaluate them (creation, forwards, metric). A first, untimed round on the first
        probe takes out what an analysis pays once: reuse's reference pass and its check
        against a plain evaluation, the process's first oneDNN kernels. Measured rather than
        estimated from one forward: how much of a forward reuse skips depends on where the
        group sits (12-70% on our models). ``{"predictor": s, "dygraph": s}``, means over the probes; ``self.probe_seconds``:
        (group index, predictor s, dygraph s) per probe."""
        reuse.prepare()
        by_id = {g.id: g for g in self.groups}
        index = {g.id: k for k, g in enumerate(self.groups)}
        probes = probe_groups(self.groups)
        engines = {"predictor": self, "dygraph": reuse}
        times = {name: [] for name in engines}
        counts = self.predictor_points, self.dygraph_points
        for k, probe in enumerate(probes[:1] + probes):
            _, undo = _apply.prune(self.model, by_id, {probe.id: PROBE_RATIO}, "l1")
            try:
                for name in (list(engines) if k % 2 else list(engines)[::-1]):  # take turns
                    clock = Stopwatch()
                    engines[name]()
                    if k:
                        times[name].append(clock.lap())
            finally:
                undo.restore()
        self.predictor_points, self.dygraph_points = counts   # probes are not the analysis's
        self.probe_seconds = [(index[p.id], t_predictor, t_dygraph) for p, t_predictor, t_dygraph
                              in zip(probes, times["predictor"], times["dygraph"])]
        self.seconds = {name: float(np.mean(t)) for name, t in times.items()}
        return self.seconds

    # -- evaluation ----------------------------------------------------------------------------
    def _params(self, state):
        return b"".join(paddle.base.core.save_lod_tensor_to_memory(state[key].value().get_tensor())
                        for key in self.param_order)

    def _predictor(self):
        state = self.model.state_dict()
        program = self.program.for_shapes({self.names[k]: state[k].shape for k in self.param_order})
        return cpu_predictor_from_memory(program, self._params(state), self.cpu_threads)

    facts = {"name": "predictor"}

    def evaluate(self, group_id=None):
        return self()

    def __call__(self):
        if self.prepare():
            raise RuntimeError(f"predictors cannot evaluate this model: {self.problem}")
        try:
            predictor = self._predictor()
        except Exception as e:  # noqa: BLE001  (this point only: dygraph gives its metric)
            logger.warning(f"sensitivity: no predictor for this point ({type(e).__name__}); "
                           "evaluating it in dygraph")
            self.dygraph_points += 1
            return self._miou(self._dygraph_label)
        self.predictor_points += 1
        return self._miou(lambda data: label_map(run_predictor(predictor, data["img"][None]),
                                                 data["trans_info"]))

    def _dygraph_label(self, data):
        return predicted_labels(self.model(paddle.to_tensor(data["img"][None]))[0],
                                data["trans_info"])

    def _miou(self, label_of):
        was_training = self.model.training
        self.model.eval()
        threads = cv2.getNumThreads()
        cv2.setNumThreads(self.cpu_threads)   # label_map's resizes: the process's thread budget
        try:
            with paddle.no_grad():
                areas = areas_of(label_of, self.samples, self.n)
        finally:
            cv2.setNumThreads(threads)
            if was_training:
                self.model.train()
        return M.summarize(*areas)["mIoU"]


def label_map(logits, trans_info):
    """The predicted label map ``[H, W]`` at the original size from a predictor's logits
    ``[1, C, h, w]`` (numpy), as ``core.infer.predicted_labels`` gives it from a tensor,
    but with OpenCV: its bilinear resize (half-pixel centres, as Paddle's) of channels-last
    logits and an argmax over their last axis took a third to a half of the time of Paddle's
    interpolate and argmax (CamVid's 11 classes at 360x480, one thread), which were over a third
    of a Fast-SCNN predictor evaluation. Like oneDNN's kernels, it can move a near tie: 3 of
    172,800 labels differed on random CamVid-sized logits."""
    if logits.shape[1] > CV2_MAX_CHANNELS:
        return predicted_labels(paddle.to_tensor(logits), trans_info)
    hwc = np.ascontiguousarray(logits[0].transpose(1, 2, 0))
    for op, (h, w) in reversed(trans_info):
        if op == "resize":
            hwc = cv2.resize(hwc, (w, h), interpolation=cv2.INTER_LINEAR)
            if hwc.ndim == 2:   # OpenCV drops a single channel's axis
                hwc = hwc[:, :, None]
        elif op == "padding":
            hwc = hwc[:h, :w]
        else:
            raise ValueError(f"unknown transform record {op!r}")
    return hwc.argmax(axis=-1)
