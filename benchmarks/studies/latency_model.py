"""How well the latency table predicts measured latency, beside a FLOPs-only predictor.

    python benchmarks/studies/latency_model.py            # all five models, 1x3x512x1024, 2 threads
    python benchmarks/studies/latency_model.py --models BiSeNetV2 FastSCNN --plans 20
    python benchmarks/studies/latency_model.py --report   # docs/latency_model.md from the JSON

Per model: build (or reuse) its latency table on this machine, draw ``--plans`` random aligned
pruning plans (another seed than the table's own sample plans, so none was fitted on) plus the
plan the latency allocation chooses for ``--target``, export each, and time it in turn with the
unpruned export. Predictions are compared as latency relative to the unpruned model (the table
was measured under another machine load than the check): mean absolute percentage error and
Kendall's tau, for the table and for "latency proportional to conv MACs".

Results per model go to ``--json`` (benchmarks/studies/latency_model.json, kept across runs, so
models can be run one at a time) and the whole table to ``--out``: this study regenerates
docs/latency_model.md. Models are built from their optic-disc configs with fresh weights:
latency does not depend on the values. The chosen plan uses a stand-in sensitivity (every group
equally sensitive, loss = ratio) unless a trained model's sensitivity file is given, so it shows
where the allocation puts the cuts by time alone.
"""
import json
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import paddleseg  # noqa: E402,F401  (import order: cv2 before paddle)
from paddleseg.utils import cli  # noqa: E402

MODELS = {  # name -> config (fresh weights: latency does not depend on them)
    "BiSeNetV2": "configs/bisenetv2/bisenet_optic_disc_512x512_1k.yml",
    "FCN-HRNetW18": "configs/fcn/fcn_hrnetw18_optic_disc_512x512_1k.yml",
    "FastSCNN": "configs/fastscnn/fastscnn_optic_disc_512x512_1k.yml",
    "HarDNet": "configs/hardnet/hardnet_optic_disc_512x512_1k.yml",
    "UNet": "configs/unet/unet_optic_disc_512x512_1k.yml",
}
GROUP_SHAPE = (1, 3, 64, 64)


def parse_args(argv):
    p = cli.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--shape", nargs=4, type=int, default=[1, 3, 512, 1024],
                   metavar=("N", "C", "H", "W"), help="latency input (default 1 3 512 1024)")
    p.add_argument("--cpu_threads", type=int, default=2)
    p.add_argument("--plans", type=int, default=20, help="random plans per model (>= 2)")
    p.add_argument("--samples", type=int, default=8, help="sample plans the latency table is built from (a table cached with another count is not reused)")
    p.add_argument("--max_ratio", type=float, default=0.6,
                   help="largest pruning ratio per group (the sensitivity grid's largest)")
    p.add_argument("--channel_step", type=int, default=8)
    p.add_argument("--target", type=float, default=0.3, help="latency cut of the chosen plan")
    p.add_argument("--sen_dir", default=None,
                   help="folder with <model>.json sensitivity files of trained models "
                        "(default: a stand-in, every group equally sensitive)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--table_dir", default=os.path.join("benchmarks", "work", "latency_tables"))
    p.add_argument("--json", default=os.path.join("benchmarks", "studies", "latency_model.json"))
    p.add_argument("--out", default=os.path.join("docs", "latency_model.md"))
    p.add_argument("--report", action="store_true",
                   help="only rewrite --out from --json, measuring nothing")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    if args.plans < 2:
        raise paddleseg.utils.UserError(f"--plans must be >= 2, got {args.plans}")
    return args


def machine():
    from paddleseg.slim.latency.measure import cpu_model
    return f"{cpu_model()}, {os.cpu_count()} cores visible, Python {platform.python_version()}"


def sensitivities(name, groups, args):
    """A trained model's sensitivity file when given, else every group equally sensitive."""
    if args.sen_dir:
        from paddleseg.slim import sensitivity
        data = sensitivity.load(os.path.join(args.sen_dir, f"{name}.json"))
        if data is not None:
            return {g.id: {float(r): v for r, v in data["losses"].get(g.id, {}).items()}
                    for g in groups}, "sensitivity file"
    grid = [round(0.1 * i, 1) for i in range(1, 10) if 0.1 * i <= args.max_ratio + 1e-9]
    return {g.id: {r: r for r in grid} for g in groups}, "stand-in (loss = ratio)"


def evaluate_model(name, args):
    import numpy as np
    from scipy.stats import kendalltau
    from paddleseg.cvlibs import Config
    from paddleseg.slim import build_groups
    from paddleseg.slim.latency import Backend, allocate_latency, obtain
    from paddleseg.slim.latency import measure
    from paddleseg.slim.latency.allocate import max_reduction
    from paddleseg.slim.latency.table import FORMAT as table_format, plan_limits, random_plan
    from paddleseg.utils import logger

    model = Config(os.path.join(ROOT, MODELS[name])).build_model()
    model.eval()
    groups = build_groups(model, GROUP_SHAPE).groups
    backend = Backend(cpu_threads=args.cpu_threads, shape=args.shape)
    # the sample count is in the name: a table built from other samples is never reused
    table_path = os.path.join(args.table_dir, f"{name}-{backend.shape_text()}-t{args.cpu_threads}"
                                              f"-s{args.samples}-v{table_format}.json")
    table, _ = obtain(model, groups, backend, args.channel_step, args.max_ratio, table_path,
                      args.samples)
    cost = table.model(groups)
    width = cost.width
    zero = np.zeros(len(cost.group_ids))
    rng = np.random.RandomState(args.seed)
    limits = plan_limits(groups, args.max_ratio, args.channel_step)
    plans = [random_plan(rng, limits) for _ in range(args.plans)]
    sens, sens_kind = sensitivities(name, groups, args)
    # at small shapes fixed costs cap the cut below --target: aim just under that cap then
    aim = min(args.target, max_reduction(cost, groups, sens, args.channel_step) - 0.01)
    chosen = allocate_latency(groups, sens, cost, aim, args.channel_step)
    plans.append(chosen.pruned)
    x = backend.input()
    rows, base_times = [], []
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="latency_model_") as tmp:
        run0 = backend.runner(measure.export_plan(model, groups, {}, os.path.join(tmp, "full")))
        repeats = measure.repeats_for(table.full_ms)
        for k, counts in enumerate(plans):
            folder = measure.export_plan(model, groups, counts, os.path.join(tmp, "plan"))
            t0, t1 = measure.interleaved_ms([run0, backend.runner(folder)], x, 1, repeats)
            base_times += list(t0)
            n = cost.vector(counts)
            rows.append({"chosen": k == len(plans) - 1,
                         "measured": measure.Paired(t0, t1).ratio,
                         "table": float(cost.ms(n) / cost.ms(zero)),
                         "flops": float(width.macs(n).sum() / width.macs(zero).sum())})
            eta = (time.time() - start) / (k + 1) * (len(plans) - k - 1)
            logger.info(f"{name}: plan {k + 1} of {len(plans)}: "
                        f"measured {rows[-1]['measured']:.3f}, "
                        f"table {rows[-1]['table']:.3f}, FLOPs {rows[-1]['flops']:.3f} "
                        f"(relative to unpruned), ETA {eta:.0f} s")
    measured = np.array([r["measured"] for r in rows])

    def score(key):
        pred = np.array([r[key] for r in rows])
        return {"mape": float(np.mean(np.abs(pred - measured) / measured)),
                "kendall_tau": float(kendalltau(pred, measured)[0])}
    return {"model": name, "plans": len(rows), "full_ms": measure.low(base_times),
            "repeats": repeats, "table": score("table"), "flops": score("flops"),
            "chosen": {"aimed_cut": aim, "predicted_cut": 1 - rows[-1]["table"],
                       "measured_cut": 1 - rows[-1]["measured"],
                       "flops_cut": 1 - rows[-1]["flops"], "sensitivity": sens_kind},
            "table_info": {"method": table.method, "samples": len(table.samples),
                           "seconds": table.seconds, "fit_mape": table.fit_error,
                           "created": table.created},
            "seconds": round(time.time() - start, 1), "rows": rows,
            "date": time.strftime("%Y-%m-%d %H:%M"), "command": command(),
            "shape": list(args.shape), "cpu_threads": args.cpu_threads, "machine": machine(),
            "load": os.getloadavg()[0]}


def command():
    return "python benchmarks/studies/latency_model.py " + " ".join(sys.argv[1:])


def render(results):
    lines = [
        "# How well the latency table predicts measured latency", "",
        "Generated by `benchmarks/studies/latency_model.py` (do not edit by hand). Per model: "
        "random aligned pruning plans, none of them among the table's own sample plans, plus the plan "
        "the latency allocation chooses for a 0.3 cut; each exported, then timed in turn with "
        "the unpruned export (Paddle Inference, oneDNN). Errors are of latency relative to the "
        "unpruned model. The FLOPs-only predictor says latency is proportional to conv "
        "multiply-adds.", "",
        "| Model | shape | threads | plans | table MAPE | table tau | FLOPs MAPE | FLOPs tau "
        "| chosen: predicted cut | measured cut | FLOPs cut | unpruned ms | table fit error "
        "| table built in |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        c = r["chosen"]
        lines.append(
            f"| {r['model']} | {'x'.join(map(str, r['shape']))} | {r['cpu_threads']} "
            f"| {r['plans']} "
            f"| {r['table']['mape']:.1%} | {r['table']['kendall_tau']:.2f} "
            f"| {r['flops']['mape']:.1%} | {r['flops']['kendall_tau']:.2f} "
            f"| {c['predicted_cut']:.3f} | {c['measured_cut']:.3f} | {c['flops_cut']:.3f} "
            f"| {r['full_ms']:.1f} | {r['table_info']['fit_mape']:.1%} "
            f"| {r['table_info']['seconds']:.0f} s |")
    lines += ["", "Runs:", ""]
    lines += [f"- {r['model']}: {r['date']}, {r['machine']}, load average {r['load']:.1f} when "
              f"done, {r['repeats']} timed runs per plan and model, table "
              f"{r['table_info']['method']} on {r['table_info']['samples']} sample plans "
              f"(fit error on them {r['table_info']['fit_mape']:.1%}), chosen plan from a "
              f"{r['chosen']['sensitivity']} sensitivity; `{r['command']}`" for r in results]
    lines += ["", "Other jobs shared this machine's two cores while these ran, so each timing "
              "carries noise (runs taken in turn with the unpruned model share it, but not all of "
              "it); rerun the commands above on a quiet machine for cleaner figures. The table "
              "fit error is the table's error on its own sample plans: a large one means the "
              "table itself was measured while other jobs competed for the cores (delete the "
              "table file under --table_dir to measure it again)."]
    return "\n".join(lines) + "\n"


def main(argv):
    args = parse_args(argv)
    from paddleseg.utils.fileio import write_json, write_text
    stored = {}
    if os.path.isfile(args.json):
        with open(args.json, encoding="utf-8") as f:
            stored = {r["model"]: r for r in json.load(f)}
    for name in [] if args.report else args.models:
        stored[name] = evaluate_model(name, args)
        write_json(args.json, [stored[m] for m in MODELS if m in stored])
    results = [stored[m] for m in MODELS if m in stored]
    write_text(args.out, render(results))
    for r in results:
        print(f"{r['model']}: table MAPE {r['table']['mape']:.1%} "
              f"tau {r['table']['kendall_tau']:.2f}; "
              f"FLOPs MAPE {r['flops']['mape']:.1%} tau {r['flops']['kendall_tau']:.2f}")
    return 0


if __name__ == "__main__":
    cli.run(main)
