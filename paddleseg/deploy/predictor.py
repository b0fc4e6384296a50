"""Run an exported model: a Paddle Inference predictor (:func:`create_predictor`,
:func:`run_predictor`) or an ONNX Runtime session through paddle2onnx
(:func:`create_onnx_session`, :func:`run_onnx_session`); :func:`check_backend` says up front
whether this machine can run what was asked.
"""
import hashlib
import importlib.util
import os
import tempfile

import numpy as np

from paddleseg.core.export import (INPUT_NAME, MODEL_FILE, PARAMS_FILE, load_deploy_config,
                                   parse_input_shape)
from paddleseg.utils import distributed
from paddleseg.utils.errors import UserError
from paddleseg.utils.fileio import atomic_path

PRECISIONS = ("fp32", "fp16", "int8")
DEVICES = ("cpu", "gpu")
BACKENDS = ("paddle", "onnxruntime")


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


def cpu_predictor_from_memory(program, params, cpu_threads=1):
    """A CPU predictor for a program and its combined parameters held in memory (the bytes of
    an export's ``model.pdmodel`` and ``model.pdiparams``), created without IR passes: about
    0.1-0.6 s instead of 0.2-17 s (FCN-HRNetW18) for ours. Without the passes nothing places
    oneDNN kernels: the program's ops must ask for them (their ``use_mkldnn`` attribute)."""
    from paddle import inference
    config = inference.Config()
    config.set_model_buffer(program, len(program), params, len(params))
    config.disable_glog_info()
    config.switch_ir_optim(False)
    config.disable_gpu()
    config.set_cpu_math_library_num_threads(max(1, int(cpu_threads or 1)))
    return inference.create_predictor(config)


def run_predictor(predictor, batch):
    """Run ``predictor`` on one float32 ``[N, C, H, W]`` array; returns its first output."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    distributed.restore_cpu_threads()   # the run leaves the process's kernels on one thread
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


# --------------------------------------------------------------------------------------------
# ONNX Runtime (through paddle2onnx)
# --------------------------------------------------------------------------------------------
def _have(module):
    return importlib.util.find_spec(module) is not None


def fix_input_shape(deploy, input_shape, out_dir):
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
            model_file, params_file = fix_input_shape(deploy, shape, work)
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
# what this machine can run
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
