"""Export a trained (or pruned) model for deployment and run the exported model.

Export writes PaddleSeg's inference layout into one directory, atomically::

    model.pdmodel  model.pdiparams  deploy.yaml

``deploy.yaml`` is PaddleSeg's format (``Deploy: model, params, transforms, input_shape,
output_op, output_dtype``) plus ``model_type`` (the config's model class), which the benchmark
uses to pair a pruned model with its unpruned baseline.

The rest of this module is the one place that loads an exported model: a Paddle Inference
predictor (:func:`create_predictor`, :func:`run_predictor`), an ONNX Runtime session through
paddle2onnx (:func:`create_onnx_session`), and the latency benchmark built on them
(:func:`benchmark_predictor`, :func:`benchmark_models`, :func:`markdown_table`).
"""
import copy
import hashlib
import importlib.util
import json
import os
import tempfile
import time

import numpy as np
import yaml

from paddleseg.utils import logger
from paddleseg.utils.errors import UserError
from paddleseg.utils.fileio import atomic_dir, atomic_path

OUTPUT_OPS = ("argmax", "softmax", "none")
PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "gpu")
BACKENDS = ("paddle", "onnxruntime")
DEPLOY_FILE = "deploy.yaml"
MODEL_FILE = "model.pdmodel"
PARAMS_FILE = "model.pdiparams"
REPORT_FILE = "report.json"
INPUT_NAME = "x"  # the InputSpec name; PaddleSeg exports use the same, TRT shape info keys on it


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def parse_input_shape(shape, what="--input_shape"):
    """``None`` or four positive ints ``N C H W`` -> list of ints; anything else -> UserError."""
    if shape is None:
        return None
    try:
        values = [int(v) for v in shape]
        ok = len(values) == 4 and all(v > 0 for v in values) \
            and all(float(v) == int(float(v)) for v in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        shown = " ".join(str(v) for v in shape) if isinstance(shape, (list, tuple)) else repr(shape)
        raise UserError(f"{what} needs four positive integers N C H W (e.g. 1 3 512 512), got: {shown}")
    return values


def _export_wrapper(model, output_op):
    import paddle

    class ExportedSegmentationNet(paddle.nn.Layer):
        """The model's first logit map followed by the deploy-time output op."""

        def __init__(self, net, op):
            super().__init__()
            self.net = net
            self.op = op

        def forward(self, x):
            outs = self.net(x)
            logit = outs[0] if isinstance(outs, (list, tuple)) else outs
            if self.op == "argmax":
                return paddle.argmax(logit, axis=1, dtype="int32")  # [N, H, W]
            if self.op == "softmax":
                return paddle.nn.functional.softmax(logit, axis=1)  # [N, C, H, W]
            return logit  # [N, C, H, W] logits

    return ExportedSegmentationNet(model, output_op)


def check_transforms(transforms):
    """Build each ``{type: ...}`` transform once, so a bad deploy.yaml fails at export time."""
    from paddleseg.cvlibs.config import build_component
    import paddleseg.transforms  # noqa: F401  (registers the transforms)
    if not isinstance(transforms, list):
        raise UserError(f"transforms must be a list of {{type: ...}} mappings, got {transforms!r}")
    return [build_component(copy.deepcopy(t)) for t in transforms]


def export_model(model, save_dir, input_shape=None, output_op="argmax", val_transforms_config=None,
                 model_type=None, extra_deploy_info=None):
    """Save ``model`` as a Paddle inference model plus ``deploy.yaml`` in ``save_dir``.

    Args:
        model (paddle.nn.Layer): a segmentation model whose eval-mode forward returns a list of
            logits; the first is exported.
        save_dir (str): output directory, written under a temporary name and then renamed (an
            existing directory is replaced only once the new one is complete).
        input_shape (list[int] | None): fixed ``[N, C, H, W]``; None exports ``[None, 3, None,
            None]`` (any batch and size).
        output_op (str): ``argmax`` (int32 ``[N, H, W]`` labels), ``softmax`` or ``none``
            (float32 ``[N, C, H, W]`` probabilities / logits).
        val_transforms_config (list[dict] | None): the config's ``val_dataset.transforms``,
            copied into deploy.yaml for the deploy-side preprocessing. None writes an empty list
            (the image then goes in unnormalised) and logs a warning.
        model_type (str | None): stored as ``model_type``; default: the model's class name.
        extra_deploy_info (dict | None): more keys for the ``Deploy`` section.

    Returns:
        str: ``save_dir``.
    """
    import paddle

    if output_op not in OUTPUT_OPS:
        raise UserError(f"output_op must be one of {', '.join(OUTPUT_OPS)}, got {output_op!r}")
    shape = parse_input_shape(input_shape) or [None, 3, None, None]
    if val_transforms_config is None:
        logger.warning("no val transforms given: deploy.yaml gets an empty transforms list")
        transforms = []
    else:
        transforms = copy.deepcopy(list(val_transforms_config))
    check_transforms(transforms)

    deploy = {
        "model": MODEL_FILE,
        "params": PARAMS_FILE,
        "transforms": transforms,
        "input_shape": [-1 if v is None else v for v in shape],  # as PaddleSeg writes it
        "output_op": output_op,
        "output_dtype": "int32" if output_op == "argmax" else "float32",
        "model_type": model_type or type(model).__name__,
    }
    deploy.update(extra_deploy_info or {})

    was_training = model.training
    model.eval()
    try:
        wrapped = _export_wrapper(model, output_op)
        wrapped.eval()
        spec = [paddle.static.InputSpec(shape=list(shape), dtype="float32", name=INPUT_NAME)]
        with atomic_dir(save_dir) as tmp:
            paddle.jit.save(wrapped, os.path.join(tmp, os.path.splitext(MODEL_FILE)[0]), input_spec=spec)
            for name in (MODEL_FILE, PARAMS_FILE):
                if not os.path.isfile(os.path.join(tmp, name)):
                    raise RuntimeError(f"paddle.jit.save wrote no {name}")
            with open(os.path.join(tmp, DEPLOY_FILE), "w", encoding="utf-8") as f:
                yaml.safe_dump({"Deploy": deploy}, f, default_flow_style=False, sort_keys=False)
    finally:
        if was_training:
            model.train()
    return save_dir


# --------------------------------------------------------------------------------------------
# reading an export
# --------------------------------------------------------------------------------------------
def deploy_yaml_path(path):
    """``path`` itself when it is a file, else ``path/deploy.yaml``; UserError when missing."""
    if not path:
        raise UserError("no exported model given (a deploy.yaml or the directory holding it)")
    yml = os.path.join(path, DEPLOY_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(yml):
        where = f"{path} has no {DEPLOY_FILE}" if os.path.isdir(path) else f"{DEPLOY_FILE} not found: {path}"
        raise UserError(f"{where} (export the model first with export.py)")
    return yml


def load_deploy_config(path):
    """The ``Deploy`` section of an export (``path``: deploy.yaml or its directory), with
    ``model_dir``, ``model_path`` and ``params_path`` added as real paths."""
    yml = deploy_yaml_path(path)
    try:
        with open(yml, "r", encoding="utf-8") as f:
            dic = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"malformed YAML in {yml}: {getattr(e, 'problem', e)}") from None
    if not isinstance(dic, dict) or not isinstance(dic.get("Deploy"), dict):
        raise UserError(f"{yml} has no 'Deploy' section (not a PaddleSeg deploy.yaml)")
    deploy = dict(dic["Deploy"])
    model_dir = os.path.dirname(os.path.abspath(yml))
    deploy["model_dir"] = model_dir
    for key, default in (("model", MODEL_FILE), ("params", PARAMS_FILE)):
        full = os.path.join(model_dir, deploy.get(key) or default)
        if not os.path.isfile(full):
            raise UserError(f"{yml} names {key} file {deploy.get(key) or default}, which is missing "
                            f"in {model_dir}")
        deploy[f"{key}_path"] = full
    deploy.setdefault("transforms", [])
    deploy.setdefault("output_op", "argmax")
    return deploy


def read_model_info(model_dir):
    """``{'model_name', 'pruning_ratio', 'report'}`` for an export.

    ``report.json`` is looked for in ``model_dir`` and then its parent; ``model_name`` comes
    from its ``model_name`` key, else deploy.yaml's ``model_type``, else the folder name.
    ``pruning_ratio`` is the report's number, or None when there is none (an unpruned model).
    """
    deploy = load_deploy_config(model_dir)
    model_dir = deploy["model_dir"]
    report, report_path = {}, None
    for folder in (model_dir, os.path.dirname(model_dir)):
        candidate = os.path.join(folder, REPORT_FILE)
        if os.path.isfile(candidate):
            try:
                with open(candidate, "r", encoding="utf-8") as f:
                    loaded = json.load(f)
            except (OSError, ValueError) as e:
                logger.warning(f"ignoring unreadable {candidate}: {e}")
                continue
            if isinstance(loaded, dict):
                report, report_path = loaded, candidate
                break
    ratio = report.get("pruning_ratio")
    try:
        ratio = None if ratio is None or isinstance(ratio, bool) else float(ratio)
    except (TypeError, ValueError):
        logger.warning(f"{report_path}: pruning_ratio {ratio!r} is not a number; ignored")
        ratio = None
    name = report.get("model_name") or deploy.get("model_type") or os.path.basename(model_dir)
    return {"model_name": str(name), "pruning_ratio": ratio, "report": report_path}


# --------------------------------------------------------------------------------------------
# Paddle Inference
# --------------------------------------------------------------------------------------------
def _check_device(device, use_trt, precision):
    import paddle
    from paddle import inference
    if device not in DEVICES:
        raise UserError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device == "cpu":
        if use_trt:
            raise UserError("TensorRT needs --device gpu")
        if precision != "fp32":
            raise UserError(f"precision {precision} needs --device gpu (the CPU predictor runs fp32)")
        return
    # The GPU and TensorRT paths follow Paddle Inference's documented API but cannot run on a
    # CPU-only build (like the one this project is developed on): fail early in one line.
    if not paddle.is_compiled_with_cuda():
        raise UserError("GPU inference asked, but this Paddle build has no CUDA "
                        "(install paddlepaddle-gpu==2.6.2 or use --device cpu)")
    if use_trt and tuple(inference.get_trt_compile_version()) == (0, 0, 0):
        raise UserError("TensorRT asked, but this Paddle build was compiled without TensorRT")
    if precision == "int8" and not use_trt:
        raise UserError("int8 precision needs --use_trt")


def _shape_for_batch(shape, default):
    shape = list(shape) if shape is not None else list(default)
    return [int(v) for v in shape]


def create_predictor(model_dir, device="cpu", use_trt=False, precision="fp32", enable_mkldnn=True,
                     cpu_threads=2, min_shape=None, max_shape=None, opt_shape=None,
                     gpu_mem_mb=500, device_id=0, trt_workspace=1 << 30, trt_min_subgraph_size=3,
                     trt_use_static=False, mkldnn_cache_capacity=10):
    """A Paddle Inference predictor for an exported model.

    Args:
        model_dir (str): the export directory (or its deploy.yaml).
        device (str): ``cpu`` or ``gpu``. ``gpu`` (and ``use_trt``) raise UserError on a Paddle
            build without CUDA, such as the CPU build this project is tested on.
        use_trt (bool): run subgraphs in TensorRT (GPU only) with dynamic shapes
            ``min_shape``/``max_shape``/``opt_shape`` (``[N, C, H, W]``; defaults 1x3x64x64,
            1x3x2048x2048 and 1x3x512x1024, with N taken from ``opt_shape``).
        precision (str): ``fp32``; ``fp16`` on GPU; ``int8`` with TensorRT (calibrated by
            Paddle on the first runs, use_calib_mode).
        enable_mkldnn (bool): oneDNN kernels on CPU (much faster; on by default).
        cpu_threads (int): math-library threads on CPU.

    Returns:
        paddle.inference.Predictor
    """
    from paddle import inference

    _check_device(device, use_trt, precision)
    deploy = load_deploy_config(model_dir)
    config = inference.Config(deploy["model_path"], deploy["params_path"])
    config.disable_glog_info()
    config.switch_ir_optim(True)
    config.enable_memory_optim()
    if device == "cpu":
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(max(1, int(cpu_threads or 1)))
        if enable_mkldnn:
            config.enable_mkldnn()
            # several input sizes (infer on a folder) each get their own oneDNN primitives
            config.set_mkldnn_cache_capacity(mkldnn_cache_capacity)
    else:  # not reachable on a CPU-only build: _check_device raised above
        ptype = inference.PrecisionType
        prec = {"fp32": ptype.Float32, "fp16": ptype.Half, "int8": ptype.Int8}[precision]
        if use_trt:
            config.enable_use_gpu(gpu_mem_mb, device_id)
            opt = _shape_for_batch(opt_shape, [1, 3, 512, 1024])
            mins = _shape_for_batch(min_shape, [opt[0], 3, 64, 64])
            maxs = _shape_for_batch(max_shape, [opt[0], 3, 2048, 2048])
            config.enable_tensorrt_engine(workspace_size=trt_workspace, max_batch_size=maxs[0],
                                          min_subgraph_size=trt_min_subgraph_size,
                                          precision_mode=prec, use_static=trt_use_static,
                                          use_calib_mode=precision == "int8")
            config.set_trt_dynamic_shape_info({INPUT_NAME: mins}, {INPUT_NAME: maxs},
                                              {INPUT_NAME: opt})
        else:
            config.enable_use_gpu(gpu_mem_mb, device_id, prec)
    try:
        return inference.create_predictor(config)
    except Exception as e:  # paddle reports C++ failures as long multi-line errors
        raise UserError(f"cannot create a predictor for {deploy['model_dir']}: {_last_line(e)}") from None


def run_predictor(predictor, batch):
    """Run ``predictor`` on one float32 ``[N, C, H, W]`` array; returns its first output."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


# --------------------------------------------------------------------------------------------
# ONNX Runtime (through paddle2onnx)
# --------------------------------------------------------------------------------------------
def _have(module):
    return importlib.util.find_spec(module) is not None


def _fix_input_shape(deploy, input_shape, out_dir):
    """Re-save the export's program with its input fixed to ``input_shape`` and every shape
    inferred again: paddle2onnx turns adaptive pooling (Fast-SCNN's pyramid pooling, for one)
    into fixed-size ONNX pools only when the shapes in the program are static."""
    import paddle
    was_dynamic = paddle.in_dynamic_mode()
    paddle.enable_static()
    try:
        with paddle.static.scope_guard(paddle.static.Scope()):
            exe = paddle.static.Executor(paddle.CPUPlace())
            prefix = os.path.splitext(deploy["model_path"])[0]
            names = {} if deploy["params_path"] == prefix + ".pdiparams" else \
                {"model_filename": deploy["model_path"], "params_filename": deploy["params_path"]}
            program, feeds, fetches = paddle.static.load_inference_model(prefix, exe, **names)
            block = program.global_block()
            feed = block.var(feeds[0])
            feed.desc.set_shape(list(input_shape))
            for op in block.ops:
                if op.type not in ("feed", "fetch"):
                    op.desc.infer_shape(block.desc)
            paddle.static.save_inference_model(os.path.join(out_dir, "model"), [feed], fetches, exe,
                                               program=program)
    finally:
        if was_dynamic:
            paddle.disable_static()
    return os.path.join(out_dir, MODEL_FILE), os.path.join(out_dir, PARAMS_FILE)


def convert_to_onnx(model_dir, input_shape, cache_dir=None, opset_version=11):
    """Convert an export to ONNX for a fixed ``input_shape`` with paddle2onnx's Python API
    (``paddle2onnx.export(model_file, params_file, save_file, opset_version, ...)``); returns the
    ``model.onnx`` path.

    The file goes to ``cache_dir`` (default: ``<tmp>/paddleseg_onnx``) under a key made of the
    model files' paths, sizes and times and the shape, so it is converted once per shape.
    """
    if not _have("paddle2onnx"):
        raise UserError("paddle2onnx is not installed (pip install paddle2onnx==1.3.1)")
    shape = parse_input_shape(input_shape)
    deploy = load_deploy_config(model_dir)
    key = hashlib.sha1()
    for path in (deploy["model_path"], deploy["params_path"]):
        st = os.stat(path)
        key.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|".encode())
    key.update(f"opset{opset_version}|{shape}".encode())
    cache_dir = cache_dir or os.path.join(tempfile.gettempdir(), "paddleseg_onnx")
    out = os.path.join(cache_dir, key.hexdigest()[:16], "model.onnx")
    if os.path.isfile(out):
        return out
    import paddle2onnx
    os.makedirs(os.path.dirname(out), exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(out)) as work, atomic_path(out) as tmp:
            model_file, params_file = _fix_input_shape(deploy, shape, work)
            paddle2onnx.export(model_file, params_file, save_file=tmp, opset_version=opset_version,
                               auto_upgrade_opset=True, verbose=False, enable_onnx_checker=True,
                               enable_optimize=True)
            if not os.path.isfile(tmp):
                raise RuntimeError("paddle2onnx wrote no file")
    except Exception as e:
        raise UserError(f"paddle2onnx cannot convert {deploy['model_dir']} at input shape "
                        f"{shape}: {_last_line(e)}") from None
    return out


def _last_line(exc):
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def create_onnx_session(model_dir, input_shape, cpu_threads=2, cache_dir=None, opset_version=11):
    """An onnxruntime CPU session (CPUExecutionProvider, ``cpu_threads`` intra-op threads) for
    an export converted at ``input_shape`` by :func:`convert_to_onnx`."""
    if not _have("onnxruntime"):
        raise UserError("onnxruntime is not installed (pip install onnxruntime); "
                        "skipping the onnxruntime backend")
    import onnxruntime as ort
    onnx_path = convert_to_onnx(model_dir, input_shape, cache_dir=cache_dir, opset_version=opset_version)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(cpu_threads or 1))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(onnx_path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise UserError(f"onnxruntime cannot load the ONNX model of {model_dir} at input shape "
                        f"{list(input_shape)} (an input this small may leave pooling windows "
                        f"empty): {_last_line(e)}") from None


def run_onnx_session(session, batch):
    """Run an onnxruntime session on one ``[N, C, H, W]`` array; returns its first output."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


# --------------------------------------------------------------------------------------------
# latency benchmark
# --------------------------------------------------------------------------------------------
def check_backend(backend, device="cpu", use_trt=False, precision="fp32"):
    """UserError (one line) when this machine cannot run ``backend`` on ``device`` as asked."""
    if backend not in BACKENDS:
        raise UserError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "onnxruntime":
        if device != "cpu" or use_trt or precision != "fp32":
            raise UserError("the onnxruntime backend runs on CPU in fp32 only (CPUExecutionProvider)")
        for module, pin in (("onnxruntime", "onnxruntime"), ("paddle2onnx", "paddle2onnx==1.3.1")):
            if not _have(module):
                raise UserError(f"{module} is not installed (pip install {pin}); "
                                "the onnxruntime backend cannot run")
    else:
        _check_device(device, use_trt, precision)


def benchmark_predictor(model_dir, input_shape=(1, 3, 1024, 2048), warmup=10, repeats=50,
                        device="cpu", use_trt=False, precision="fp32", cpu_threads=2,
                        enable_mkldnn=True, backend="paddle", onnx_cache_dir=None, seed=0):
    """Model-prediction latency of one export (no image decoding, pre- or post-processing).

    One timed run = input copy in, ``run``, output copy out, on a fixed random input of
    ``input_shape``, after ``warmup`` untimed runs.

    Returns:
        dict: ``model_dir, model_name, pruning_ratio, backend, device, use_trt, precision,
        enable_mkldnn, cpu_threads, input_shape, warmup, repeats, mean_ms, median_ms, p90_ms,
        min_ms, times_ms``.

    Raises:
        UserError: bad arguments, a missing export, or a backend/device that is not available
            here (no CUDA, no TensorRT, no onnxruntime) - one line, for the caller to report.
    """
    shape = parse_input_shape(input_shape)
    if int(warmup) < 0 or int(repeats) < 1:
        raise UserError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}")
    check_backend(backend, device, use_trt, precision)
    info = read_model_info(model_dir)
    if backend == "onnxruntime":
        session = create_onnx_session(model_dir, shape, cpu_threads=cpu_threads,
                                      cache_dir=onnx_cache_dir)

        def run(x):
            return run_onnx_session(session, x)
    else:
        predictor = create_predictor(model_dir, device=device, use_trt=use_trt, precision=precision,
                                     enable_mkldnn=enable_mkldnn, cpu_threads=cpu_threads,
                                     min_shape=shape, max_shape=shape, opt_shape=shape)

        def run(x):
            return run_predictor(predictor, x)

    x = np.random.RandomState(seed).standard_normal(shape).astype(np.float32)
    for _ in range(int(warmup)):
        run(x)
    times = []
    for _ in range(int(repeats)):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1000.0)
    times = np.asarray(times)
    return {
        "model_dir": os.path.abspath(model_dir if os.path.isdir(model_dir) else os.path.dirname(model_dir)),
        "model_name": info["model_name"],
        "pruning_ratio": info["pruning_ratio"],
        "backend": backend,
        "device": device,
        "use_trt": bool(use_trt),
        "precision": precision,
        "enable_mkldnn": bool(enable_mkldnn) if backend == "paddle" and device == "cpu" else None,
        "cpu_threads": int(cpu_threads),
        "input_shape": shape,
        "warmup": int(warmup),
        "repeats": int(repeats),
        "mean_ms": float(times.mean()),
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(times.min()),
        "times_ms": [round(float(t), 4) for t in times],
    }


def add_speedups(rows):
    """Set ``speedup`` on each row: the latency of the unpruned row of the same model name
    (pruning ratio 0 or none) divided by the row's; None where there is no such baseline."""
    baselines = {}
    for ratio_wanted in (0.0, None):  # an explicit 0 wins over "no report"
        for row in rows:
            ratio = row.get("pruning_ratio")
            if (ratio is None if ratio_wanted is None else ratio == 0.0):
                baselines.setdefault(row["model_name"], row)
    for row in rows:
        base = baselines.get(row["model_name"])
        row["speedup"] = (base["mean_ms"] / row["mean_ms"]) if base and row["mean_ms"] > 0 else None
        row["baseline_dir"] = base["model_dir"] if base else None
    return rows


def benchmark_models(model_dirs, report_error=None, **kwargs):
    """:func:`benchmark_predictor` over several exports; a failing one is reported in one line
    through ``report_error(msg)`` (default: a logged warning) and skipped. Returns the rows
    with speedups (see :func:`add_speedups`)."""
    report_error = report_error or logger.warning
    try:  # a missing GPU / TensorRT / onnxruntime is said once, not once per model
        check_backend(kwargs.get("backend", "paddle"), kwargs.get("device", "cpu"),
                      kwargs.get("use_trt", False), kwargs.get("precision", "fp32"))
    except UserError as e:
        report_error(f"skipped all models: {e}")
        return []
    rows = []
    for model_dir in model_dirs:
        try:
            rows.append(benchmark_predictor(model_dir, **kwargs))
        except UserError as e:
            report_error(f"skipped {model_dir}: {e}")
    return add_speedups(rows)


def _fmt_ratio(ratio):
    return "-" if ratio is None else f"{ratio:.2f}"


def markdown_table(rows):
    """The results as a Markdown table (Model | Pruning ratio | Mean | Median | P90 | Speedup)."""
    lines = ["| Model | Pruning ratio | Mean (ms) | Median (ms) | P90 (ms) | Speedup |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        speedup = "-" if r.get("speedup") is None else f"{r['speedup']:.2f}x"
        lines.append(f"| {r['model_name']} | {_fmt_ratio(r.get('pruning_ratio'))} | {r['mean_ms']:.2f} "
                     f"| {r['median_ms']:.2f} | {r['p90_ms']:.2f} | {speedup} |")
    return "\n".join(lines) + "\n"
