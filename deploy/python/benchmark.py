"""Model-prediction latency of exported models (no image decoding, pre- or post-processing).

    python deploy/python/benchmark.py output/fastscnn_export output/fastscnn_pruned_export \
        --input_shape 1 3 1024 2048 --cpu_threads 2

For each export: mean, median and p90 latency over ``--repeats`` runs after ``--warmup`` runs,
its pruning ratio (from deploy.yaml's ``pruning`` facts, which a pruned model's export carries;
"-" for an unpruned export) and its speedup over the unpruned export of the same model
(deploy.yaml's ``model_type``). Prints a
Markdown table and writes it with the raw numbers to ``--save_md`` / ``--save_json``. An export
that cannot be timed (missing, or exported for a fixed input shape other than ``--input_shape``)
is skipped with a line saying why; the others are still reported, and the exit status is then
non-zero, naming the skipped ones.

Other code calls :func:`paddleseg.deploy.benchmark.benchmark_predictor` (one export) or
:func:`paddleseg.deploy.benchmark.benchmark_models` (several, with speedups) directly.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402

# re-exported for callers that import this script's module
from paddleseg.core.export import export_folder, parse_input_shape  # noqa: E402
from paddleseg.deploy.benchmark import (benchmark_models, benchmark_predictor,  # noqa: E402,F401
                                        markdown_table)


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dirs", nargs="+", metavar="MODEL_DIR", help="exported model directories")
    p.add_argument("--input_shape", nargs="+", type=int, default=[1, 3, 1024, 2048], metavar="N C H W",
                   help="input shape (default 1 3 1024 2048)")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed runs (default 50)")
    p.add_argument("--backend", choices=["paddle", "onnxruntime"], default="paddle",
                   help="Paddle Inference, or ONNX Runtime on CPU via paddle2onnx")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--use_trt", action="store_true", help="TensorRT subgraphs (GPU builds only)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32", help="fp16 needs --device gpu")
    p.add_argument("--cpu_threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--enable_mkldnn", action=argparse.BooleanOptionalAction, default=True,
                   help="oneDNN for the Paddle CPU predictor (default on; --no-enable_mkldnn turns it off)")
    p.add_argument("--onnx_cache_dir", default=None, help="where converted ONNX models are kept "
                   "(default: <tmp>/paddleseg_onnx)")
    p.add_argument("--save_dir", default=".", help="folder for the default report files")
    p.add_argument("--save_json", default=None, help="JSON report (default SAVE_DIR/benchmark.json)")
    p.add_argument("--save_md", default=None, help="Markdown report (default SAVE_DIR/benchmark.md)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = p.parse_args(argv)
    args.input_shape = parse_input_shape(args.input_shape)
    if args.warmup < 0 or args.repeats < 1 or args.cpu_threads < 1:
        raise paddleseg.utils.UserError("--warmup must be >= 0, --repeats and --cpu_threads >= 1")
    args.save_json = args.save_json or os.path.join(args.save_dir, "benchmark.json")
    args.save_md = args.save_md or os.path.join(args.save_dir, "benchmark.md")
    from paddleseg.utils.fileio import check_file_target, check_folder_target
    check_folder_target(args.save_dir)  # before the timing, not after it
    check_file_target(args.save_json, "--save_json")
    check_file_target(args.save_md, "--save_md")
    return args


def not_benchmarked(model_dirs, rows):
    """The ``model_dirs`` that have no result row (skipped with a reason logged)."""
    done = {row["model_dir"] for row in rows}
    return [d for d in model_dirs if export_folder(d) not in done]


def main(argv):
    args = parse_args(argv)
    from paddleseg.utils import UserError
    from paddleseg.utils.fileio import write_json, write_text

    def report(msg):
        print(msg, file=sys.stderr, flush=True)

    settings = dict(input_shape=args.input_shape, warmup=args.warmup, repeats=args.repeats,
                    device=args.device, use_trt=args.use_trt, precision=args.precision,
                    cpu_threads=args.cpu_threads, enable_mkldnn=args.enable_mkldnn,
                    backend=args.backend, onnx_cache_dir=args.onnx_cache_dir)
    rows = benchmark_models(args.model_dirs, report_error=report, **settings)
    if not rows:
        raise UserError("no model could be benchmarked (see the lines above)")

    engine = args.backend if args.backend == "onnxruntime" else \
        f"paddle-inference {args.device}" + (" tensorrt" if args.use_trt else "") + \
        (" onednn" if args.device == "cpu" and args.enable_mkldnn else "")
    header = (f"Input {'x'.join(map(str, args.input_shape))}, {engine}, {args.precision}, "
              f"{args.cpu_threads} CPU thread(s), {args.warmup} warmup + {args.repeats} timed runs")
    table = markdown_table(rows)
    print(header)
    print(table, end="")
    write_json(args.save_json, {"settings": {k: v for k, v in settings.items() if k != "onnx_cache_dir"},
                                "results": rows})
    write_text(args.save_md, f"{header}\n\n{table}")
    print(f"wrote {args.save_json} and {args.save_md}")
    skipped = not_benchmarked(args.model_dirs, rows)
    if skipped:  # the table is partial: a script must not take it for the full comparison
        raise UserError(f"{len(skipped)} of {len(args.model_dirs)} model(s) not benchmarked "
                        f"(see above): {', '.join(skipped)}")
    return 0


if __name__ == "__main__":
    cli.run(main)
