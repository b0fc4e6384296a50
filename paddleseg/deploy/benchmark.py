"""Model-prediction latency of exports and the tables built from it.

One export (:func:`benchmark_predictor`) or several side by side, with speedups
(:func:`benchmark_models`, :func:`markdown_table`; :func:`interleaved_latency` for raw samples).
All time runs with :func:`time_runs`.
"""
import os
import time

import numpy as np

from paddleseg.core.export import (check_input_shape_fits, export_folder, load_deploy_config,
                                   parse_input_shape, read_model_info)
from paddleseg.deploy.predictor import (check_backend, create_onnx_session, create_predictor,
                                        run_onnx_session, run_predictor)
from paddleseg.utils import logger
from paddleseg.utils.errors import UserError


def random_input(shape, seed):
    return np.random.RandomState(seed).standard_normal(shape).astype(np.float32)


def _paddle_runner(model_dir, shape, **predictor_kwargs):
    """``run(x)`` on a Paddle Inference predictor whose TensorRT shapes are all ``shape``."""
    predictor = create_predictor(model_dir, min_shape=shape, max_shape=shape, opt_shape=shape,
                                 **predictor_kwargs)

    def run(x):
        return run_predictor(predictor, x)
    return run


def time_runs(runs, x, warmup, repeats, shuffle_seed=None):
    """Latency samples (ms) per callable in ``runs``, each called on ``x``.

    Each gets ``warmup`` untimed calls first; then each repeat (round) times one call of each,
    so that machine noise during the measurement hits all of them alike. With
    ``shuffle_seed`` the order within each round is drawn at random (seeded), so that no export
    always runs right after the same other one (caches, CPU clocks).
    """
    for run in runs:
        for _ in range(int(warmup)):
            run(x)
    times = [[] for _ in runs]
    order = list(range(len(runs)))
    shuffler = None if shuffle_seed is None else np.random.RandomState(shuffle_seed)
    for _ in range(int(repeats)):
        if shuffler is not None:
            shuffler.shuffle(order)
        for i in order:
            start = time.perf_counter()
            runs[i](x)
            times[i].append((time.perf_counter() - start) * 1000.0)
    return [np.asarray(t) for t in times]


def interleaved_latency(model_dirs, input_shape, warmup, repeats, cpu_threads, shuffle_seed=None):
    """Per export: latency samples (ms), one run of each export per round (in random order
    per round with ``shuffle_seed``, see :func:`time_runs`)."""
    input_shape = parse_input_shape(input_shape)
    for d in model_dirs:
        check_input_shape_fits(load_deploy_config(d), input_shape)
    runs = [_paddle_runner(d, input_shape, cpu_threads=cpu_threads) for d in model_dirs]
    return time_runs(runs, random_input(input_shape, 0), warmup, repeats, shuffle_seed)


def latency_stats(times):
    """Mean, median, p10, p90 and min (ms) of latency samples, as plain floats."""
    times = np.asarray(times, dtype=np.float64)
    return {"mean_ms": float(times.mean()), "median_ms": float(np.median(times)),
            "p10_ms": float(np.percentile(times, 10)), "p90_ms": float(np.percentile(times, 90)),
            "min_ms": float(times.min())}


def _prepare(model_dir, shape, device="cpu", use_trt=False, precision="fp32", cpu_threads=2,
             enable_mkldnn=True, backend="paddle", onnx_cache_dir=None):
    """(``run(x)``, the result row without timings) for one export."""
    check_backend(backend, device, use_trt, precision)
    check_input_shape_fits(load_deploy_config(model_dir), shape)
    info = read_model_info(model_dir)
    if backend == "onnxruntime":
        session = create_onnx_session(model_dir, shape, cpu_threads=cpu_threads,
                                      cache_dir=onnx_cache_dir)

        def run(x):
            return run_onnx_session(session, x)
    else:
        run = _paddle_runner(model_dir, shape, device=device, use_trt=use_trt, precision=precision,
                             enable_mkldnn=enable_mkldnn, cpu_threads=cpu_threads)
    row = {
        "model_dir": export_folder(model_dir),
        "model_name": info["model_name"],
        "pruning_ratio": info["pruning_ratio"],
        "backend": backend,
        "device": device,
        "use_trt": bool(use_trt),
        "precision": precision,
        "enable_mkldnn": bool(enable_mkldnn) if backend == "paddle" and device == "cpu" else None,
        "cpu_threads": int(cpu_threads),
        "input_shape": shape,
    }
    return run, row


def _add_times(row, times, warmup, repeats):
    row.update({
        "warmup": int(warmup),
        "repeats": int(repeats),
        "mean_ms": float(times.mean()),
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "min_ms": float(times.min()),
        "times_ms": [round(float(t), 4) for t in times],
    })
    return row


def _check_counts(warmup, repeats):
    if int(warmup) < 0 or int(repeats) < 1:
        raise UserError(f"warmup must be >= 0 and repeats >= 1, got {warmup} and {repeats}")


def benchmark_predictor(model_dir, input_shape=(1, 3, 1024, 2048), warmup=10, repeats=50,
                        seed=0, **options):
    """Model-prediction latency of one export (no image decoding, pre- or post-processing).

    One timed run = input copy in, ``run``, output copy out, on a fixed random input of
    ``input_shape``, after ``warmup`` untimed runs. ``options``: device, use_trt, precision,
    cpu_threads, enable_mkldnn, backend, onnx_cache_dir.

    Returns:
        dict: ``model_dir, model_name, pruning_ratio, backend, device, use_trt, precision,
        enable_mkldnn, cpu_threads, input_shape, warmup, repeats, mean_ms, median_ms, p90_ms,
        min_ms, times_ms``.

    Raises:
        UserError: bad arguments, a missing export, or a backend/device that is not available
            here (no CUDA, no TensorRT, no onnxruntime) - one line, for the caller to report.
    """
    shape = parse_input_shape(input_shape)
    _check_counts(warmup, repeats)
    run, row = _prepare(model_dir, shape, **options)
    times, = time_runs([run], random_input(shape, seed), warmup, repeats)
    return _add_times(row, times, warmup, repeats)


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


def benchmark_models(model_dirs, report_error=None, input_shape=(1, 3, 1024, 2048), warmup=10,
                     repeats=50, seed=0, **options):
    """Latency of several exports measured side by side (one run of each in turn, so machine
    noise hits them alike); a failing export is reported in one line through
    ``report_error(msg)`` (default: a logged warning) and skipped. Returns the rows with
    speedups (see :func:`add_speedups`)."""
    report_error = report_error or logger.warning
    shape = parse_input_shape(input_shape)
    _check_counts(warmup, repeats)
    try:  # a missing GPU / TensorRT / onnxruntime is said once, not once per model
        check_backend(options.get("backend", "paddle"), options.get("device", "cpu"),
                      options.get("use_trt", False), options.get("precision", "fp32"))
    except UserError as e:
        report_error(f"skipped all models: {e}")
        return []
    prepared = []
    for model_dir in model_dirs:
        try:
            prepared.append(_prepare(model_dir, shape, **options))
        except UserError as e:
            report_error(f"skipped {model_dir}: {e}")
    if not prepared:
        return []
    samples = time_runs([run for run, _ in prepared], random_input(shape, seed), warmup, repeats)
    return add_speedups([_add_times(row, t, warmup, repeats) for (_, row), t in zip(prepared, samples)])


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
