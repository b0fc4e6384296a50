"""PaddleSeg release/2.6's original pruning method, run through PaddleSlim, for comparison.

``slim/prune/prune.py --method paddleslim`` runs what PaddleSeg 2.6's pruning tutorial ran:
PaddleSlim's ``L1NormFilterPruner`` (or ``FPGMFilterPruner`` with ``--criterion fpgm``) built on
a training-sized sample input, ``pruner.sensitive(eval_func)`` over PaddleSlim's fixed ratio grid
(0.1 ... 0.9, every conv collection PaddleSlim finds), then ``pruner.sensitive_prune(ratio,
skip_vars)`` with PaddleSeg's workaround of skipping parameters with 8 or fewer output channels,
then retraining with the config's schedule. The same checkpoint, config and data as this
project's engine, so the two can be compared row by row (``benchmarks/prune_speedup.py``).

What differs from PaddleSeg 2.6, and why:

- parameter names (PaddleSlim keys everything by them) are made reproducible by building the
  model inside a fresh ``unique_name`` scope;
- the sensitivity file is this project's JSON format (written durably, resumed, refused when made
  for another model, weights, eval set or criterion), never PaddleSlim's pickle, which would let
  a file run code when loaded;
- ``--sen_eval_num`` limits the sensitivity evaluation to the first N val images (PaddleSeg
  evaluated the whole val set at every one of its grid points);
- the pruned model is saved with a channel plan, like this project's pruned models, so that
  ``val.py``, ``train.py --model_path`` and ``export.py`` rebuild it from the config;
- where PaddleSlim cannot handle a model (its tracer fails, or a pruned layer no longer fits the
  next one, as with a depthwise conv that has a channel multiplier), the run stops with one
  line naming the layer and PaddleSlim's error (:class:`PaddleSlimError`).
"""
import logging
import os
import time
import warnings

from ..core.model_loader import build_and_load
from ..core.train import set_seed
from ..utils import logger
from ..utils.errors import UserError
from ..utils.fileio import write_json, write_text
from ..utils.progress import Phase, format_seconds
from . import sensitivity as sens_mod
from .flops import count_flops_params
from .options import check_common, setup_facts
from .output.publish import staged_run
from .retrain import miou, retrain_and_evaluate
from .output.storage import save_pruned

PADDLESLIM_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))  # fixed in PaddleSlim 2.6
EVALUATOR_FACTS = {"name": "paddleslim"}   # its sensitivity file's evaluator, in the fingerprint
SMALL_LAYER_CHANNELS = 8  # PaddleSeg 2.6 skips parameters with this many output channels or fewer


class PaddleSlimError(UserError):
    """PaddleSlim cannot prune this model: the message names the layer and PaddleSlim's error."""


def one_line(error):
    """``Type: first line of the message``, for an error PaddleSlim or Paddle raised."""
    text = str(error).strip()
    # Paddle's C++ errors open with a blank line and a banner; keep the first line with content
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not set(ln.strip()) <= set("-=")]
    first = next((ln for ln in lines if not ln.startswith(("C++ Traceback", "Error Message"))),
                 lines[0] if lines else "")
    if len(first) > 300:   # Paddle's messages run on; keep whole sentences
        cut = first.rfind(". ", 0, 300)
        first = first[:cut + 1] if cut > 100 else first[:300] + " ..."
    return f"{type(error).__name__}: {first}"


def parameter_paths(model):
    """{parameter name (``conv2d_3.w_0``): layer path and attribute (``head.conv.weight``)}."""
    return {p.name: f"{path}.{attr}" if path else attr
            for path, layer in model.named_sublayers(include_self=True)
            for attr, p in layer._parameters.items() if p is not None}


def import_paddleslim(criterion):
    """The pruner class for ``criterion``; PaddleSlim's loggers quietened (they log every step)."""
    try:
        import paddleslim  # noqa: F401
        from paddleslim.dygraph import FPGMFilterPruner, L1NormFilterPruner
    except ImportError as e:
        raise PaddleSlimError(f"--engine paddleslim needs PaddleSlim 2.6 ({one_line(e)}); "
                              "pip install --no-deps paddleslim==2.6.0") from None
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("paddleslim"):
            log = logging.getLogger(name)
            log.setLevel(logging.WARNING)
            if not any(isinstance(f, _Shortened) for f in log.filters):
                log.addFilter(_Shortened())
    return {"l1": L1NormFilterPruner, "fpgm": FPGMFilterPruner}[criterion]


class _Shortened(logging.Filter):
    """PaddleSlim's warnings list every variable it skips (thousands of characters a line);
    the first words say what matters, e.g. ``Unsupported operator named concat``."""

    def filter(self, record):
        message = record.getMessage()
        if len(message) > 200:
            record.msg, record.args = message[:200] + " ...", ()
        return True


class JsonStatus:
    """Stands in for PaddleSlim's pickled ``Status``: the same attributes, kept in this project's
    sensitivity-file format (``sensitivity.save``: durable, JSON unless named .pickle)."""

    def __init__(self, sen_file, fp):
        self.sen_file, self.fingerprint = sen_file, fp
        self.sensitivies = {}   # PaddleSlim's spelling: {parameter name: {ratio: loss}}
        self.accumulates = {}
        self.is_ckp = True
        self.load(sen_file)

    def load(self, src):
        data = sens_mod.load(src)
        if data is None:
            return
        if data.get("fingerprint") != self.fingerprint:
            diff = sens_mod.describe_difference(data.get("fingerprint", {}), self.fingerprint)
            raise sens_mod.SensitivityMismatch(f"{src} was made for a different setup ({diff}); "
                                               "delete it or choose another file")
        self.sensitivies = {name: {round(float(r), 2): loss for r, loss in losses.items()}
                            for name, losses in data["losses"].items()}

    def save(self, dst):
        losses = {name: {sens_mod.ratio_key(r): float(loss) for r, loss in sorted(curve.items())}
                  for name, curve in self.sensitivies.items()}
        sens_mod.save(dst, {"format": sens_mod.FORMAT, "fingerprint": self.fingerprint,
                            "base": None, "losses": losses})


def _fingerprint(model, pruner, criterion, setup):
    masters = sorted({c.master_name for c in pruner.collections})
    shapes = {p.name: p.shape for p in model.parameters()}
    return {"model": type(model).__name__,
            "groups": [[name, int(shapes[name][0])] for name in masters if name in shapes],
            "criterion": criterion, "ratios": [sens_mod.ratio_key(r) for r in PADDLESLIM_RATIOS],
            "setup": dict(setup or {}), "evaluator": dict(EVALUATOR_FACTS)}


class _LayerTracker:
    """Which leaf layer a forward pass was in when it raised: forward pre-hooks note each one."""

    def __init__(self, model):
        self.current = None
        self.hooks = [layer.register_forward_pre_hook(self._enter(path))
                      for path, layer in model.named_sublayers() if not layer.sublayers()]

    def _enter(self, path):
        def hook(layer, inputs):
            self.current = path
        return hook

    def remove(self):
        for h in self.hooks:
            h.remove()


def _where(tracker, var, paths):
    parts = []
    if var:
        parts.append(f"after pruning {paths.get(var, var)} ({var})")
    if tracker.current:
        parts.append(f"at layer {tracker.current}")
    return " ".join(parts)


def prune_with_paddleslim(model, input_shape, eval_fn, pruning_ratio, criterion="l1",
                          sen_file=None, setup=None, progress=None):
    """PaddleSeg 2.6's method on ``model`` in place: sensitivity, ``sensitive_prune``, then the
    layers' channel attributes set from the pruned weights and PaddleSlim's backup buffers dropped.

    ``eval_fn()`` returns the metric (higher is better); ``sen_file`` keeps the sensitivities
    (resumed; refused when made for another setup); ``progress(done, total)`` is called before
    each evaluation. Returns a dict of what PaddleSlim did. Raises PaddleSlimError (one line,
    naming the layer) where PaddleSlim fails on the model.
    """
    pruner_class = import_paddleslim(criterion)
    widths = {path: layer.weight.shape[0] for path, layer in _convs(model)}
    run = _PaddleSlimRun(model, input_shape, eval_fn, progress)
    with warnings.catch_warnings():  # PaddleSlim 2.6 calls np.product on every FLOPs count
        warnings.filterwarnings("ignore", message=".*`product` is deprecated",
                                category=DeprecationWarning)
        try:
            info = run.prune(pruner_class, pruning_ratio, criterion, sen_file, setup)
        finally:
            run.tracker.remove()
    sync_layer_attributes(model)
    drop_backup_buffers(model)
    after = {path: layer.weight.shape[0] for path, layer in _convs(model)}
    info.update(pruned_convs=sum(after[p] != widths[p] for p in widths), convs=len(widths),
                layer_ratios={p: round(1 - after[p] / widths[p], 4) for p in widths
                              if after[p] != widths[p]})
    return info


class _PaddleSlimRun:
    """One PaddleSlim pruning of a model, noting where it is (the parameter being pruned, the
    layer running) so that a failure can name the layer."""

    def __init__(self, model, input_shape, eval_fn, progress):
        self.model, self.shape = model, list(input_shape)
        self.eval_fn, self.progress = eval_fn, progress
        self.paths = parameter_paths(model)
        self.tracker = _LayerTracker(model)
        self.var, self.evals, self.total = None, 0, 0

    def prune(self, pruner_class, pruning_ratio, criterion, sen_file, setup):
        import paddle
        model = self.model
        # PaddleSlim says nothing while it walks the graph from every conv weight, which took
        # 27 minutes on FCN-HRNetW18 (2-core CPU): say so, so that a log stopped there tells
        convs = len(_convs(model))
        logger.info(f"PaddleSlim: tracing {type(model).__name__} and building its pruning "
                    f"collections from {convs} conv weights (no progress until it is done)")
        start = time.time()
        try:
            pruner = pruner_class(model, self.shape)
        except Exception as e:  # PaddleSlim's tracer raises anything on graphs it cannot read
            where = f" {_where(self.tracker, None, self.paths)}" if self.tracker.current else ""
            raise PaddleSlimError(f"PaddleSlim cannot trace {type(model).__name__}{where}: "
                                  f"{one_line(e)}") from None
        collections = list(pruner.collections)
        logger.info(f"PaddleSlim: {len(collections)} pruning collections in "
                    f"{format_seconds(time.time() - start)}")
        self.total = 1 + len(collections) * len(PADDLESLIM_RATIOS)
        if sen_file:
            pruner._status = JsonStatus(sen_file, _fingerprint(model, pruner, criterion, setup))
        prune_var = pruner.prune_var

        def tracked_prune_var(var_name, *args, **kwargs):
            self.var = var_name
            return prune_var(var_name, *args, **kwargs)
        pruner.prune_var = tracked_prune_var
        phase = "sensitivity analysis"
        try:
            pruner.sensitive(eval_func=self.evaluate, sen_file=sen_file)
            phase, self.var = "sensitive_prune", None
            # PaddleSeg 2.6: "avoid the bug when pruning conv2d with small channel number"
            skips = [p.name for p in model.parameters() if p.shape[0] <= SMALL_LAYER_CHANNELS]
            plan = pruner.sensitive_prune(pruning_ratio, skip_vars=list(skips))
            phase, self.var = "the pruned model's forward pass", None
            model.eval()
            with paddle.no_grad():
                model(paddle.rand(self.shape))
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise PaddleSlimError(f"PaddleSlim failed on {type(model).__name__} in {phase} "
                                  f"{_where(self.tracker, self.var, self.paths)}: "
                                  f"{one_line(e)}") from None
        return {"collections": len(collections), "skipped_small": len(skips),
                "paddleslim_pruned_flops": round(float(getattr(plan, "_pruned_flops", 0.0)), 4)}

    def evaluate(self):
        self.evals += 1
        if self.progress is not None:
            self.progress(self.evals, self.total)
        self.tracker.current = None
        return self.eval_fn()


def _convs(model):
    import paddle.nn as nn
    return [(path, layer) for path, layer in model.named_sublayers()
            if isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose))]


def sync_layer_attributes(model):
    """Set conv in/out channels and batch-norm widths from the weights PaddleSlim shrank (it
    changes tensors and conv groups, not these attributes), so that the channel plan, FLOPs
    counts and export see the pruned structure."""
    import paddle.nn as nn
    from .apply import Undo, refresh_conv_kernel
    for _, layer in model.named_sublayers():
        if isinstance(layer, nn.Conv2D):
            out_c, in_per_group = layer.weight.shape[:2]
            layer._out_channels, layer._in_channels = out_c, in_per_group * layer._groups
            refresh_conv_kernel(layer, Undo())
        elif isinstance(layer, nn.Conv2DTranspose):
            in_c, out_per_group = layer.weight.shape[:2]
            layer._in_channels, layer._out_channels = in_c, out_per_group * layer._groups
        elif hasattr(layer, "_num_features") and getattr(layer, "weight", None) is not None:
            layer._num_features = layer.weight.shape[0]


def drop_backup_buffers(model):
    """PaddleSlim keeps the full-size tensors as ``*_backup`` buffers: not part of the model."""
    for _, layer in model.named_sublayers(include_self=True):
        for name in [n for n in layer._buffers if n.endswith("_backup")]:
            del layer._buffers[name]


def check_options(o):
    check_common(o)
    sens_mod.load(o.sensitivity_path)  # damaged or unsafe: fails here, before any work


def run(o):
    """The whole PaddleSlim pipeline into ``o.save_dir`` (staged and switched in as one folder,
    as :func:`paddleseg.slim.pipeline.run` does); returns the report dict."""
    cfg = o.build_config()
    check_options(o)
    set_seed(o.seed)
    return staged_run(o.save_dir, o.sen_file, lambda stage: _run(o, cfg, {}, stage))


def _build(cfg, model_path):
    """The model with parameter names that do not depend on what the process built before."""
    import paddle
    with paddle.utils.unique_name.guard():
        return build_and_load(cfg, model_path)


def _run(o, cfg, t, stage):
    with Phase(t, "load and baseline evaluation"):
        model = _build(cfg, o.model_path)
        val_dataset, train_dataset = cfg.val_dataset, cfg.train_dataset
        if val_dataset is None or train_dataset is None:
            raise UserError(f"{cfg.path} needs a train_dataset and a val_dataset")
        model.eval()
        base_miou = miou(model, val_dataset)
        logger.info(f"baseline mIoU {base_miou:.4f}")
    shape = [1] + list(train_dataset[0]["img"].shape)  # PaddleSeg 2.6's sample input
    flops0, params0 = count_flops_params(model, shape)
    eval_num = o.sen_eval_num or len(val_dataset)
    first = {}   # when the first evaluation began: PaddleSlim builds its collections before

    def progress(done, total):
        first.setdefault("start", time.time())
        if done == 1 or done % 10 == 0 or done == total:
            spent = time.time() - first["start"]
            eta = spent / (done - 1) * (total - done + 1) if done > 1 else float("nan")
            logger.info(f"PaddleSlim sensitivity: evaluation {done} of at most {total}, "
                        f"ETA {format_seconds(eta) if done > 1 else '?'}")
    with Phase(t, "PaddleSlim sensitivity analysis and sensitive_prune"):
        info = prune_with_paddleslim(
            model, shape, lambda: miou(model, val_dataset, eval_num), o.pruning_ratio,
            o.criterion, o.sensitivity_path, setup_facts(cfg, o.model_path, eval_num),
            progress)
        flops1, params1 = count_flops_params(model, shape)
        model.eval()
        pruned_miou = miou(model, val_dataset)
        logger.info(f"PaddleSlim: FLOPs {flops0 / 1e9:.3f}G -> {flops1 / 1e9:.3f}G "
                    f"({1 - flops1 / flops0:.1%} fewer, {o.pruning_ratio:.1%} asked), params "
                    f"{params0 / 1e6:.3f}M -> {params1 / 1e6:.3f}M, {info['pruned_convs']} of "
                    f"{info['convs']} convs pruned, mIoU right after pruning {pruned_miou:.4f}")
    final = retrain_and_evaluate(o, cfg, model, stage, val_dataset, t)
    from importlib.metadata import version
    report = {
        "engine": "paddleslim", "paddleslim_version": version("paddleslim"),
        "model_name": type(model).__name__, "config": cfg.path, "model_path": o.model_path,
        "criterion": o.criterion, "pruning_ratio": o.pruning_ratio, "input_shape": shape,
        "flops_before": flops0, "flops_after": flops1,
        "flops_reduction": round(1 - flops1 / flops0, 4),
        "params_before": params0, "params_after": params1,
        "miou_baseline": base_miou, "miou_pruned": pruned_miou, "miou_retrained": final["mIoU"],
        "retraining_iters": o.retraining_iters, "sen_eval_num": eval_num,
        "sen_ratios": list(PADDLESLIM_RATIOS), "paddleslim": info, "seconds": t,
    }
    save_pruned(model, stage, info={"engine": "paddleslim", "criterion": o.criterion,
                                    "pruning_ratio": o.pruning_ratio})
    if o.export:
        with Phase(t, "export"):
            from ..core.export import export_model
            export_model(model, os.path.join(stage, "export"),
                         val_transforms_config=cfg.val_dataset_config.get("transforms"),
                         model_type=report["model_name"],
                         extra_deploy_info={"pruned": True, "engine": "paddleslim"})
    write_json(os.path.join(stage, "report.json"), report)
    write_text(os.path.join(stage, "report.md"), render_markdown(report))
    return report


def render_markdown(r):
    info = r["paddleslim"]
    seconds = "\n".join(f"| {k} | {format_seconds(v)} |" for k, v in r["seconds"].items())
    return "\n".join([
        f"# Pruning report (PaddleSlim {r['paddleslim_version']}, PaddleSeg 2.6's method): "
        f"{r['model_name']}", "",
        f"Config `{r['config']}`, weights `{r['model_path']}`, "
        f"{'L1NormFilterPruner' if r['criterion'] == 'l1' else 'FPGMFilterPruner'}, "
        f"sensitive_prune({r['pruning_ratio']}), input {r['input_shape']}; sensitivity on "
        f"{r['sen_eval_num']} val images at ratios {r['sen_ratios']}.", "",
        "| | before | after |", "|-|-|-|",
        f"| GFLOPs | {r['flops_before'] / 1e9:.4f} | {r['flops_after'] / 1e9:.4f} |",
        f"| params | {r['params_before']:,} | {r['params_after']:,} |", "",
        f"FLOPs reduction: {r['flops_reduction']:.3f} realized, {r['pruning_ratio']} asked "
        f"(PaddleSlim's own count: {info['paddleslim_pruned_flops']:.3f}). "
        f"{info['collections']} collections found, {info['pruned_convs']} of {info['convs']} "
        f"convs pruned, {info['skipped_small']} small parameters skipped.", "",
        f"mIoU: {r['miou_baseline']:.4f} baseline, {r['miou_pruned']:.4f} after pruning, "
        f"{r['miou_retrained']:.4f} after {r['retraining_iters']} retraining iterations.", "",
        "| phase | time |", "|-|-|", seconds, ""])

