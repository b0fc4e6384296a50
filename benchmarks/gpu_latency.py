"""GPU latency of the benchmark's exports, on a machine with PyTorch + CUDA and no Paddle.

Two steps, one script:

    # here (Paddle, paddle2onnx): the exports in results.json -> ONNX at 1x3x1024x2048, weights
    # stripped (latency does not depend on their values; the bundle must travel light)
    python benchmarks/gpu_latency.py prepare --wheel_dir benchmarks/gpu_bundle/wheels
    # there (PyTorch + CUDA + onnx; onnx2torch from the wheel carried in the bundle):
    python benchmarks/gpu_latency.py run --bundle benchmarks/gpu_bundle --out gpu_latency.json
    # back here: the table into results.json and RESULTS.md
    python benchmarks/prune_speedup.py --phase report --gpu_results gpu_latency.json

``run`` fills the stripped conv weights with He-normal random values (seeded), converts each
graph with onnx2torch, and times every export of a model side by side: fp32 and fp16, CUDA
events around each forward, 10 warm-up runs each, then 50 rounds timing one run of every
export in a random order per round; median and p10/p90 per export, speedup = unpruned median /
median. It stops starting new models after ``--budget_s`` seconds (default 270, so it ends
within 5 minutes) and lists what it skipped. ``--device cpu`` runs the same code without CUDA
(perf_counter timing) to check a bundle anywhere.

``prepare`` needs ``onnx2torch-*.whl`` in ``--wheel_dir`` (``pip download --no-deps onnx2torch
-d DIR``): the wheel is copied into the bundle and imported from there, nothing is installed.
"""
import argparse
import glob
import json
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_BUNDLE = os.path.join(HERE, "gpu_bundle")
MANIFEST = "manifest.json"
GPU_SHAPE = (1, 3, 1024, 2048)
FLOAT = 1                      # onnx TensorProto.FLOAT
STRIP_MIN_ELEMENTS = 256       # smaller tensors (biases, BN, shape constants) travel as they are


# ---------------------------------------------------------------- ONNX bytes, without onnx
# ModelProto.graph = 7; GraphProto: node = 1, initializer = 5; NodeProto.attribute = 5;
# AttributeProto.t = 5 (a Constant node's tensor; paddle2onnx stores weights there); TensorProto:
# dims = 1, data_type = 2, float_data = 4, name = 8, raw_data = 9. Wire types: 0 varint,
# 1 fixed64, 2 bytes, 5 fixed32.


def _read_varint(buf, i):
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _varint(value):
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buf):
    """(field number, wire type, value, raw bytes of the whole field) of a message."""
    i = 0
    while i < len(buf):
        start = i
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            length, i = _read_varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value, buf[start:i]


def _bytes_field(number, payload):
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _tensor_info(tensor):
    dims, dtype, has_data, name = [], FLOAT, False, ""
    for number, wire, value, _ in _fields(tensor):
        if number == 1:
            if wire == 2:   # packed
                j = 0
                while j < len(value):
                    d, j = _read_varint(value, j)
                    dims.append(d)
            else:
                dims.append(value)
        elif number == 2:
            dtype = value
        elif number in (4, 9) and len(value):
            has_data = True
        elif number == 8:
            name = bytes(value).decode("utf-8", "replace")
    return dims, dtype, has_data, name


def _numel(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def _map_message(buf, number, fn):
    """``buf`` (a message) with each bytes field ``number`` replaced by fn(its bytes)."""
    out = bytearray()
    for n, wire, value, raw in _fields(buf):
        out += _bytes_field(n, fn(bytes(value))) if n == number and wire == 2 else raw
    return bytes(out)


def _map_tensors(model, fn):
    """``model`` bytes with every weight tensor (graph initializers and the tensors of Constant
    nodes) replaced by fn(TensorProto bytes)."""
    def node(buf):
        return _map_message(buf, 5, lambda attr: _map_message(attr, 5, fn))

    def graph(buf):
        return _map_message(_map_message(buf, 5, fn), 1, node)
    return _map_message(model, 7, graph)


def _tensors(model):
    found = []

    def note(tensor):
        found.append(_tensor_info(tensor))
        return tensor
    _map_tensors(model, note)
    return found


def strip_weights(model, min_elements=STRIP_MIN_ELEMENTS):
    """The ONNX model bytes without the data of its float weight tensors of ``min_elements``
    or more (names, types and shapes kept)."""
    def strip(tensor):
        dims, dtype, has_data, _ = _tensor_info(tensor)
        if dtype != FLOAT or not has_data or _numel(dims) < min_elements:
            return tensor
        return b"".join(raw for number, _, _, raw in _fields(tensor) if number not in (4, 9))
    return _map_tensors(model, strip)


def refill_weights(model, seed=0):
    """Put He-normal random float32 data (seeded by tensor name) into the stripped tensors."""
    import hashlib

    import numpy as np

    def refill(tensor):
        dims, dtype, has_data, name = _tensor_info(tensor)
        if dtype != FLOAT or has_data or _numel(dims) == 0:
            return tensor
        fan_in = _numel(dims[1:]) if len(dims) > 1 else 1
        rng = np.random.RandomState((seed + int(hashlib.md5(name.encode()).hexdigest()[:7], 16))
                                    % 2**31)
        data = (rng.standard_normal(_numel(dims)) * (2.0 / fan_in) ** 0.5).astype("<f4")
        return tensor + _bytes_field(9, data.tobytes())
    return _map_tensors(model, refill)


def stripped_count(model):
    """How many float tensors of ``model`` have no data (stripped, not yet refilled)."""
    return sum(dtype == FLOAT and not has_data and _numel(dims) > 0
               for dims, dtype, has_data, _ in _tensors(model))


# ---------------------------------------------------------------- prepare (here, with Paddle)


def _explicit_same_paddings(program):
    """Rewrite Paddle's padding='same' convs and pools (of a program whose shapes are static)
    with the explicit paddings Paddle computes for them: paddle2onnx turns SAME into ONNX
    auto_pad SAME_UPPER, which onnx2torch does not take. Paddle's SAME uses no dilation."""
    block = program.global_block()
    for op in block.ops:
        if op.type not in ("conv2d", "depthwise_conv2d", "pool2d") or \
                not op.has_attr("padding_algorithm") or op.attr("padding_algorithm") != "SAME":
            continue
        x = block.var(op.input("Input" if op.type != "pool2d" else "X")[0])
        kernel = block.var(op.input("Filter")[0]).shape[2:] if op.type != "pool2d" \
            else op.attr("ksize")
        pads = []
        for n, k, stride in zip(x.shape[2:], kernel, op.attr("strides")):
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            pads += [total // 2, total - total // 2]     # [top, bottom, left, right]
        op._set_attr("paddings", pads)
        op._set_attr("padding_algorithm", "EXPLICIT")
        if op.has_attr("dilations"):
            op._set_attr("dilations", [1, 1])


def export_onnx(export_dir, shape, out_path):
    """ONNX of an export at a fixed ``shape``, with explicit paddings (see above)."""
    import tempfile

    import paddle
    import paddle2onnx
    from paddleseg.core.export import load_deploy_config
    from paddleseg.deploy.predictor import fix_input_shape
    deploy = load_deploy_config(export_dir)
    with tempfile.TemporaryDirectory() as work:
        model_file, _ = fix_input_shape(deploy, list(shape), work)  # static shapes, re-saved
        paddle.enable_static()
        try:
            with paddle.static.scope_guard(paddle.static.Scope()):
                exe = paddle.static.Executor(paddle.CPUPlace())
                prefix = os.path.splitext(model_file)[0]
                program, feeds, fetches = paddle.static.load_inference_model(prefix, exe)
                _explicit_same_paddings(program)
                feed = [program.global_block().var(feeds[0])]
                out = os.path.join(work, "explicit", "model")
                paddle.static.save_inference_model(out, feed, fetches, exe, program=program)
        finally:
            paddle.disable_static()
        paddle2onnx.export(out + ".pdmodel", out + ".pdiparams", save_file=out_path,
                           opset_version=11, auto_upgrade_opset=True, verbose=False,
                           enable_onnx_checker=True, enable_optimize=True)


def prepare(args):
    sys.path[:0] = [HERE, ROOT]
    import bench_report
    import paddleseg  # noqa: F401  (import order: cv2 before paddle)
    results = bench_report.load_results(os.path.dirname(os.path.abspath(args.results)))
    wheels = sorted(glob.glob(os.path.join(args.wheel_dir, "onnx2torch-*.whl")))
    if not wheels:
        raise SystemExit(f"error: no onnx2torch wheel in {args.wheel_dir}; "
                         f"pip download --no-deps onnx2torch -d {args.wheel_dir}")
    os.makedirs(args.bundle, exist_ok=True)
    shutil.copy2(wheels[-1], os.path.join(args.bundle, os.path.basename(wheels[-1])))
    manifest = {"input_shape": list(args.input_shape), "wheel": os.path.basename(wheels[-1]),
                "models": {}}
    total = 0
    for model, entry in results["models"].items():
        rows = []
        for r in entry["rows"]:
            if r["status"] != "ok" or not r.get("export"):
                continue
            name = f"{model}/{len(rows)}_{r['row']}.onnx"
            path = os.path.join(args.bundle, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            export_onnx(os.path.join(ROOT, r["export"]), args.input_shape, path)
            with open(path, "rb") as f:
                data = strip_weights(f.read())
            with open(path, "wb") as f:
                f.write(data)
            total += len(data)
            rows.append({"label": r["label"], "row": r["row"], "file": name})
        manifest["models"][model] = rows
    with open(os.path.join(args.bundle, MANIFEST), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
    print(f"bundle {args.bundle}: {sum(map(len, manifest['models'].values()))} graphs, "
          f"{total / 2**20:.1f} MiB of ONNX")
    return 0


# ---------------------------------------------------------------- run (there, with PyTorch)


def import_onnx2torch(bundle, wheel):
    """onnx2torch from the carried wheel (a zip on sys.path). Its NMS / RoiAlign converters
    import torchvision at import time; segmentation graphs use neither, so a stand-in will do
    where torchvision is absent."""
    import importlib.util
    import types
    if importlib.util.find_spec("torchvision") is None:
        tv = types.ModuleType("torchvision")
        tv.ops = types.ModuleType("torchvision.ops")
        tv.ops.roi_align = None
        sys.modules.update({"torchvision": tv, "torchvision.ops": tv.ops})
    sys.path.insert(0, os.path.join(bundle, wheel))
    import onnx2torch
    return onnx2torch


class Timer:
    """Milliseconds of one call: CUDA events on a GPU, perf_counter on the CPU."""

    def __init__(self, torch, device):
        self.torch, self.cuda = torch, device.startswith("cuda")

    def __call__(self, fn):
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            self.torch.cuda.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1000.0


def constants_to_initializers(model):
    """paddle2onnx stores weights in Constant nodes; onnx2torch looks them up as initializers."""
    graph, kept = model.graph, []
    for node in graph.node:
        value = next((a for a in node.attribute if a.name == "value" and a.HasField("t")), None)
        if node.op_type == "Constant" and value is not None and len(node.output) == 1:
            tensor = value.t
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


def load_graph(torch, onnx, onnx2torch, path, device, precision):
    with open(path, "rb") as f:
        model = constants_to_initializers(onnx.load_from_string(refill_weights(f.read())))
    net = onnx2torch.convert(model).eval().to(device)
    return net.half() if precision == "fp16" else net


def percentiles(times):
    import numpy as np
    t = np.asarray(times)
    return {"median_ms": float(np.median(t)), "p10_ms": float(np.percentile(t, 10)),
            "p90_ms": float(np.percentile(t, 90)), "mean_ms": float(t.mean()), "runs": len(t)}


def time_model(torch, graphs, x, warmup, repeats, timer, rng):
    """{index: samples}: ``warmup`` runs each, then ``repeats`` rounds in random order."""
    with torch.no_grad():
        for net in graphs:
            for _ in range(warmup):
                net(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        times = [[] for _ in graphs]
        order = list(range(len(graphs)))
        for _ in range(repeats):
            rng.shuffle(order)
            for i in order:
                times[i].append(timer(lambda: graphs[i](x)))
    return times


def run(args):
    import numpy as np
    import onnx
    import torch
    start = time.time()
    with open(os.path.join(args.bundle, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    onnx2torch = import_onnx2torch(args.bundle, manifest["wheel"])
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA device visible to PyTorch (use --device cpu to check "
                             "the bundle without one)")
        torch.backends.cudnn.benchmark = True   # fixed shapes: let cuDNN pick its kernels
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    timer, rng = Timer(torch, args.device), np.random.RandomState(args.seed)
    rows, skipped = [], []
    for model, exports in manifest["models"].items():
        if time.time() - start > args.budget_s:
            skipped.append(f"{model}: not started, {args.budget_s} s budget spent")
            continue
        for precision in args.precisions:
            dtype = torch.float16 if precision == "fp16" else torch.float32
            x = torch.randn(*manifest["input_shape"], generator=torch.Generator().manual_seed(0))
            x = x.to(args.device, dtype)
            graphs, kept = [], []
            for e in exports:
                try:
                    graphs.append(load_graph(torch, onnx, onnx2torch,
                                             os.path.join(args.bundle, e["file"]), args.device,
                                             precision))
                    kept.append(e)
                except Exception as err:  # one export onnx2torch cannot take: say so, go on
                    skipped.append(f"{model} {e['label']} {precision}: "
                                   f"{type(err).__name__}: {str(err).splitlines()[0][:200]}")
            if not graphs:
                continue
            try:
                times = time_model(torch, graphs, x, args.warmup, args.repeats, timer, rng)
            except Exception as err:  # e.g. an op without an fp16 kernel
                skipped.append(f"{model} {precision}: {type(err).__name__}: "
                               f"{str(err).splitlines()[0][:200]}")
                continue
            base = next((percentiles(t)["median_ms"] for e, t in zip(kept, times)
                         if e["row"] == "unpruned"), None)
            for e, t in zip(kept, times):
                stats = percentiles(t)
                rows.append({"model": model, "export": e["label"], "precision": precision,
                             **{k: round(v, 4) for k, v in stats.items()},
                             "speedup": round(base / stats["median_ms"], 4) if base else None})
            del graphs
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    table = {"device": device_name, "torch": torch.__version__,
             "cuda": getattr(torch.version, "cuda", None),
             "method": (f"PyTorch {torch.__version__} via onnx2torch ({manifest['wheel']}), "
                        f"input {'x'.join(map(str, manifest['input_shape']))}, {args.warmup} "
                        f"warm-up + {args.repeats} timed rounds in random order, "
                        f"{'CUDA events' if args.device.startswith('cuda') else 'perf_counter'}, "
                        "random weights (latency does not depend on their values)"),
             "rows": rows, "skipped": skipped, "seconds": round(time.time() - start, 1)}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(table, f, indent=2)
    print(f"{device_name}: {len(rows)} timings in {table['seconds']} s -> {args.out}")
    print("| Model | Export | Precision | Median (ms) | P10 | P90 | Speedup |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(f"| {r['model']} | {r['export']} | {r['precision']} | {r['median_ms']:.2f} | "
              f"{r['p10_ms']:.2f} | {r['p90_ms']:.2f} | {sp} |")
    for s in skipped:
        print(f"skipped: {s}")
    return 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    pre = sub.add_parser("prepare", help="here: ONNX bundle from results.json's exports")
    pre.add_argument("--results", default=os.path.join(HERE, "results.json"))
    pre.add_argument("--bundle", default=DEFAULT_BUNDLE)
    pre.add_argument("--wheel_dir", default=os.path.join(DEFAULT_BUNDLE, "wheels"))
    pre.add_argument("--input_shape", nargs=4, type=int, default=list(GPU_SHAPE))
    go = sub.add_parser("run", help="there: time the bundle with PyTorch")
    go.add_argument("--bundle", default=DEFAULT_BUNDLE)
    go.add_argument("--out", default="gpu_latency.json")
    go.add_argument("--device", default="cuda")
    go.add_argument("--precisions", nargs="+", choices=["fp32", "fp16"], default=["fp32", "fp16"])
    go.add_argument("--warmup", type=int, default=10)
    go.add_argument("--repeats", type=int, default=50)
    go.add_argument("--budget_s", type=float, default=270.0)
    go.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return prepare(args) if args.command == "prepare" else run(args)


if __name__ == "__main__":
    sys.exit(main())
