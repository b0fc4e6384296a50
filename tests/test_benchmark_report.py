"""benchmarks/prune_speedup.py --phase report: RESULTS.md, speedup.png and the generated doc
blocks come from results.json alone, byte for byte, in this process or another."""
import copy
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "studies"))
import bench_report  # noqa: E402
import prune_speedup  # noqa: E402

OUTPUTS = ("RESULTS.md", "speedup.png", "frontier.png", "README.md", "prune.md")


def _row(kind, ratio, label, gflops, params, miou, median, **more):
    row = {"row": kind, "ratio": ratio, "label": label, "status": "ok", "error": None,
           "gflops": gflops, "params": params, "miou": miou, "wall_seconds": 61.0,
           "step_key": "0" * 64, "commands": [f"python slim/prune/prune.py --x {label}"],
           "latency": None if median is None else {
               "mean_ms": median + 1, "median_ms": median, "p10_ms": median - 2,
               "p90_ms": median + 3, "min_ms": median - 4, "rounds": 30}}
    row.update(more)
    return row


def _entry(name, base_ms, lowest_ms):
    rows = [
        _row("unpruned", None, "unpruned", 2.0, 2_500_000, 0.41, base_ms),
        _row("control", None, "control (+75 iters)", 2.0, 2_500_000, 0.42, None,
             note="the unpruned network: timed as the unpruned row"),
        _row("flops", 0.3, "FLOPs target 0.3", 1.4, 1_500_000, 0.415, base_ms * 0.8),
        dict(_row("latency", 0.3, "latency target 0.3", None, None, None, None),
             status="not run", note="slim/prune/prune.py has no --target latency in this version"),
        _row("paddleslim", 0.3, "PaddleSlim 0.3 (PaddleSeg 2.6)", 0.12, 120_000, 0.30, lowest_ms,
             paddleslim={"collections": 17, "skipped_small": 2, "paddleslim_pruned_flops": 0.93,
                         "pruned_convs": 36, "convs": 47}),
    ]
    return {
        "command": f"python benchmarks/prune_speedup.py --models {name}",
        "args": {"models": [name], "seed": 0}, "git": "abcdef123456", "machine": "Test CPU, 2 cores",
        "software": {"python": "3.11.7", "paddle": "2.6.2", "paddleslim": "2.6.0", "numpy": "1.26.4"},
        "config": f"configs/camvid/{name.lower()}.yml",
        "data": {"root": "../shared/data/camvid", "train_images": 367, "val_images": 101,
                 "num_classes": 11, "majority_class_miou": 0.025},
        "training": {"iters": 300, "batch_size": 8, "resolution": [256, 192],
                     "learning_rate": 0.05, "threads": 2, "seconds": 1300.5,
                     "seconds_per_iter": 4.2, "curve": [[150, 0.3], [300, 0.41]],
                     "step_key": "1" * 64, "commands": ["python train.py ..."]},
        "retraining_iters": 75,
        "latency_setup": {"input_shape": [1, 3, 512, 1024], "threads": 2, "warmup": 5, "rounds": 30,
                          "order": "random within each round", "seed": 0,
                          "backend": "Paddle Inference CPU, oneDNN"},
        "rows": bench_report.finish_rows(rows),
    }


def tiny_results(failed_slim=False):
    data = {"format": bench_report.FORMAT, "gpu": None,
            "models": {"FastSCNN": _entry("FastSCNN", 50.0, 30.0),
                       "BiSeNetV2": _entry("BiSeNetV2", 200.0, 150.0)}}
    if failed_slim:
        row = data["models"]["BiSeNetV2"]["rows"][-1]
        row.update(status="failed", error="PaddleSlim failed on BiSeNetV2 in sensitivity analysis "
                   "after pruning semantic.x.weight (conv2d_12.w_0) at layer semantic.y: "
                   "ValueError: (InvalidArgument) channels | groups")
    return data


DOC_TEMPLATE = "# {title}\n\nintro\n\n{begin}\nold text, 1.45x by hand\n{end}\n\ntail\n"


def make_workspace(folder, results):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    for doc, block in (("README.md", "headline"), ("prune.md", "table")):
        with open(os.path.join(folder, doc), "w", encoding="utf-8") as f:
            f.write(DOC_TEMPLATE.format(title=doc, begin=bench_report.BLOCK_BEGIN.format(name=block),
                                        end=bench_report.BLOCK_END.format(name=block)))
    return folder


def report_argv(folder):
    return ["--phase", "report", "--out_dir", str(folder), "--docs",
            os.path.join(folder, "README.md"), os.path.join(folder, "prune.md")]


def read_outputs(folder):
    out = {}
    for name in OUTPUTS:
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def test_report_is_a_pure_function_of_results_json(tmp_path):
    a = make_workspace(str(tmp_path / "a"), tiny_results(failed_slim=True))
    assert prune_speedup.main(report_argv(a)) == 0
    first = read_outputs(a)
    # again in a fresh process (other hash seeds, fresh matplotlib), from a copy of results.json
    b = make_workspace(str(tmp_path / "b"), tiny_results(failed_slim=True))
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "prune_speedup.py"),
                    *report_argv(b)], check=True, cwd=str(tmp_path))
    assert read_outputs(b) == first
    # and once more over its own outputs: nothing depends on what was there
    assert prune_speedup.main(report_argv(a)) == 0
    assert read_outputs(a) == first

    md = first["RESULTS.md"].decode()
    assert "| FastSCNN | FLOPs target 0.3 | 1.400 | 1.50M | 30.0% | 0.4150 | -0.5 (1 seed) | 40.0 [38.0, 43.0] | 1.25x |" in md
    assert "| FastSCNN | control (+75 iters) |" in md and "same network as unpruned" in md
    assert "not run: slim/prune/prune.py has no --target latency" in md
    assert "failed: PaddleSlim failed on BiSeNetV2 in sensitivity analysis" in md
    assert "channels \\| groups" in md                     # a '|' cannot break the table
    assert "python benchmarks/prune_speedup.py --models FastSCNN" in md
    assert "GPU: not measured. No GPU was lent" in md
    assert "Not yet measured: FCN-HRNetW18, HarDNet, UNet." in md
    assert md.index("| BiSeNetV2 | unpruned") < md.index("| FastSCNN | unpruned")  # fixed order
    for plot in ("speedup.png", "frontier.png"):
        png = first[plot]
        assert png.startswith(b"\x89PNG") and b"tIME" not in png and b"Software" not in png
    assert "![speedup against mIoU change, one panel per model](frontier.png)" in md
    readme = first["README.md"].decode()
    assert "1.45x by hand" not in readme and readme.startswith("# README.md\n\nintro\n\n")
    assert readme.endswith("\n\ntail\n")
    assert "FastSCNN 1.25x at 30% fewer FLOPs, -0.5 mIoU points (1 seed)" in readme
    assert "| BiSeNetV2 | PaddleSlim 0.3 (PaddleSeg 2.6) | failed (why: PaddleSlim table" \
        in first["prune.md"].decode()


def test_the_tutorial_s_table_keeps_the_headline_ratio_and_results_md_every_row():
    results = tiny_results()
    fast = results["models"]["FastSCNN"]["rows"]
    extra = copy.deepcopy(next(r for r in fast if r["row"] == "flops"))
    extra.update(ratio=0.5, label="FLOPs target 0.5")
    fast.append(extra)
    docs = bench_report.render_docs_table(results)
    assert "| FastSCNN | FLOPs target 0.3 |" in docs and "FLOPs target 0.5" not in docs
    assert "| FastSCNN | unpruned |" in docs and "| FastSCNN | control (+75 iters) |" in docs
    assert "| FastSCNN | FLOPs target 0.5 |" in bench_report.render_results(results)


def test_a_step_stopped_at_its_time_limit_is_not_called_failed_in_the_headline(tmp_path):
    results = tiny_results()
    row = results["models"]["BiSeNetV2"]["rows"][-1]
    row.update(status="failed", error="stopped after 3600 s (--paddleslim_timeout); last log "
               "line: PaddleSlim sensitivity: evaluation 300 of at most 1189", wall_seconds=3600)
    a = make_workspace(str(tmp_path / "a"), results)
    assert prune_speedup.main(report_argv(a)) == 0
    out = read_outputs(a)
    assert "BiSeNetV2 did not finish within 1h00m" in out["README.md"].decode()
    md = out["RESULTS.md"].decode()
    assert "| 1h00m | did not finish within 1h00m: stopped after 3600 s (--paddleslim_timeout); " \
           "last log line: PaddleSlim sensitivity: evaluation 300 of at most 1189 |" in md
    assert "| BiSeNetV2 | PaddleSlim 0.3 (PaddleSeg 2.6) | did not finish within 1h00m (why: " \
           "PaddleSlim table" in md


def test_a_model_without_paddleslim_rows_says_so(tmp_path):
    results = tiny_results()
    rows = results["models"]["FastSCNN"]["rows"]
    results["models"]["FastSCNN"]["rows"] = [r for r in rows if r["row"] != "paddleslim"]
    a = make_workspace(str(tmp_path / "a"), results)
    assert prune_speedup.main(report_argv(a)) == 0
    md = read_outputs(a)["RESULTS.md"].decode()
    assert "| FastSCNN | PaddleSlim (PaddleSeg 2.6) | - | - | - | - | - | - | - | not run: its " \
        "recorded command names no --paddleslim_ratios |" in md
    assert "| BiSeNetV2 | PaddleSlim (PaddleSeg 2.6) | 0.3 |" in md   # the other model's stays


def test_report_follows_results_json(tmp_path):
    """Another number in results.json gives other outputs (the report does read it)."""
    a = make_workspace(str(tmp_path / "a"), tiny_results())
    prune_speedup.main(report_argv(a))
    changed = tiny_results()
    changed["models"]["FastSCNN"]["rows"][2]["speedup"] = 1.5
    b = make_workspace(str(tmp_path / "b"), changed)
    prune_speedup.main(report_argv(b))
    first, second = read_outputs(a), read_outputs(b)
    for name in OUTPUTS:
        assert first[name] != second[name], name


def test_gpu_table_merges_into_results(tmp_path):
    a = make_workspace(str(tmp_path / "a"), tiny_results())
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps({"device": "NVIDIA Test GPU", "method": "onnx2torch", "rows": [
        {"model": "FastSCNN", "export": "unpruned", "precision": "fp16", "median_ms": 2.0,
         "p10_ms": 1.9, "p90_ms": 2.2, "speedup": 1.0}], "skipped": []}))
    prune_speedup.main(report_argv(a) + ["--gpu_results", str(gpu)])
    md = read_outputs(a)["RESULTS.md"].decode()
    assert "GPU: NVIDIA Test GPU" in md and "| FastSCNN | unpruned | fp16 | 2.00 |" in md
    assert bench_report.read_json(os.path.join(a, "results.json"))["gpu"]["device"] == "NVIDIA Test GPU"


def test_missing_doc_markers_are_one_line_errors(tmp_path, capsys):
    a = make_workspace(str(tmp_path / "a"), tiny_results())
    with open(os.path.join(a, "README.md"), "w") as f:
        f.write("# no markers here\n")
    with pytest.raises(SystemExit) as e:
        prune_speedup.cli.run(prune_speedup.main, report_argv(a))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "README.md" in err[0]


def test_results_of_another_format_are_not_merged_into(tmp_path):
    v1 = {"rows": [{"model": "UNet", "ratio": 0.3}], "args": {}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(v1))
    with pytest.raises(bench_report.ResultsError, match="another benchmark version"):
        bench_report.merge_model(str(tmp_path), "UNet", _entry("UNet", 1.0, 1.0))
    assert json.loads(path.read_text()) == v1     # untouched


def test_merge_keeps_other_models_and_a_fixed_order(tmp_path):
    bench_report.merge_model(str(tmp_path), "UNet", _entry("UNet", 10.0, 9.0))
    bench_report.merge_model(str(tmp_path), "BiSeNetV2", _entry("BiSeNetV2", 10.0, 9.0))
    newer = _entry("UNet", 20.0, 9.0)
    data = bench_report.merge_model(str(tmp_path), "UNet", newer)
    assert list(data["models"]) == ["BiSeNetV2", "UNet"]
    assert data["models"]["UNet"]["rows"][0]["latency"]["median_ms"] == 20.0


def test_entries_merge_from_another_run_s_results_by_name_and_part(tmp_path, capsys):
    main = make_workspace(str(tmp_path / "main"), tiny_results())
    other = tiny_results()
    other["models"]["FastSCNN"] = dict(_entry("FastSCNN", 60.0, 30.0), git="abc+dirty")
    other["models"]["BiSeNetV2"] = _entry("BiSeNetV2", 999.0, 150.0)   # not to be merged
    from test_benchmark_recovery import recovery_entry
    other["recovery"] = {"FastSCNN": dict(recovery_entry([0.32, 0.33, 0.34], [0.43, 0.44, 0.45],
                                                         [0.4] * 3, [0.44] * 3),
                                          git="abc+dirty", date="2026-12-07")}
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(other))

    # the recovery entry alone: the headline stays, and its row is not the headline's
    prune_speedup.main(report_argv(main) + ["--merge_from", str(other_file), "--models",
                                            "FastSCNN", "--merge_parts", "recovery"])
    data = bench_report.read_json(os.path.join(main, "results.json"))
    assert data["recovery"]["FastSCNN"]["git"] == "abc+dirty"
    assert data["models"] == tiny_results()["models"]
    log = capsys.readouterr().out
    assert "FastSCNN's recovery entry from" in log and "made by code abc+dirty" in log
    assert "retrained another row than its headline rows" in log
    # both parts of the named model; the other model stays this file's
    prune_speedup.main(report_argv(main) + ["--merge_from", str(other_file), "--models",
                                            "FastSCNN"])
    data = bench_report.read_json(os.path.join(main, "results.json"))
    assert data["models"]["FastSCNN"]["git"] == "abc+dirty"
    assert data["models"]["BiSeNetV2"] == tiny_results()["models"]["BiSeNetV2"]
    assert "FastSCNN" in read_outputs(main)["RESULTS.md"].decode()

    with pytest.raises(bench_report.ResultsError, match="has no recovery entry for BiSeNetV2"):
        prune_speedup.main(report_argv(main) + ["--merge_from", str(other_file), "--models",
                                                "BiSeNetV2", "--merge_parts", "recovery"])
    with pytest.raises(prune_speedup.BenchmarkError, match="--models to merge named"):
        prune_speedup.parse_args(report_argv(main) + ["--merge_from", str(other_file)])


def test_committed_results_reproduce(tmp_path):
    """The committed RESULTS.md, speedup.png and doc blocks are what results.json gives."""
    results = os.path.join(ROOT, "benchmarks", "results.json")
    data = bench_report.read_json(results)
    if data.get("format") != bench_report.FORMAT:
        pytest.skip("benchmarks/results.json is the v1 (membrane) table: nothing generated yet")
    work = tmp_path / "out"
    work.mkdir()
    shutil.copy(results, work / "results.json")
    docs = []
    for doc in ("README.md", os.path.join("docs", "prune.md")):
        shutil.copy(os.path.join(ROOT, doc), work / os.path.basename(doc))
        docs.append(str(work / os.path.basename(doc)))
    prune_speedup.main(["--phase", "report", "--out_dir", str(work), "--docs", *docs])
    for name, committed in (("RESULTS.md", "benchmarks/RESULTS.md"),
                            ("speedup.png", "benchmarks/speedup.png"),
                            ("frontier.png", "benchmarks/frontier.png"),
                            ("README.md", "README.md"), ("prune.md", "docs/prune.md")):
        with open(work / name, "rb") as f, open(os.path.join(ROOT, committed), "rb") as g:
            assert f.read() == g.read(), f"{committed} is not what --phase report makes"


def test_the_frontier_has_each_model_s_timed_rows_by_kind():
    results = tiny_results(failed_slim=True)
    fast = results["models"]["FastSCNN"]
    extra = copy.deepcopy(next(r for r in fast["rows"] if r["row"] == "flops"))
    extra.update(row="latency", ratio=0.5, label="latency target 0.5", speedup=1.9)
    fast["rows"].append(extra)
    for entry in results["models"].values():
        bench_report.finish_rows(entry["rows"])
    fast["rows"][-1]["speedup"] = 1.9
    points = bench_report.frontier_points(results)
    assert set(points) == {"FastSCNN", "BiSeNetV2"}
    # a failed or untimed row is not a point; points run by speedup
    assert "paddleslim" not in points["BiSeNetV2"]
    assert [p[2] for p in points["FastSCNN"]["latency"]] == [0.5]
    for series in points["FastSCNN"].values():
        assert [p[0] for p in series] == sorted(p[0] for p in series)
        assert all(isinstance(p[1], float) for p in series)


def test_finish_rows_measures_against_unpruned_and_control():
    rows = copy.deepcopy(_entry("FastSCNN", 50.0, 25.0)["rows"])
    by = {r["row"]: r for r in rows}
    assert by["flops"]["speedup"] == pytest.approx(1.25)
    assert by["paddleslim"]["speedup"] == pytest.approx(2.0)
    assert by["flops"]["miou_delta_points"] == pytest.approx(-0.5)
    assert by["unpruned"]["miou_delta_points"] == pytest.approx(-1.0)
    assert by["flops"]["flops_cut"] == pytest.approx(0.3)
    assert "speedup" not in by["latency"]                    # not run: nothing measured


@pytest.mark.parametrize("lat_miou,lat_ms,kept,fast", [(0.40, 70.0, True, True),
                                                       (0.38, 70.0, False, True),
                                                       (0.40, 80.0, True, False)])
def test_the_latency_goal_verdict(lat_miou, lat_ms, kept, fast):
    entry = _entry("BiSeNetV2", 100.0, 60.0)
    rows = [r for r in entry["rows"] if r["row"] != "latency"] + [
        _row("latency", 0.3, "latency target 0.3", 1.0, 1_000_000, lat_miou, lat_ms),
        _row("latency_equal_loss", 0.3, "latency target 0.3, FLOPs-target allocation", 1.0,
             1_000_000, 0.39, 70.0)]
    entry["rows"] = bench_report.finish_rows(rows)
    lat, ctl, got_fast, got_kept = bench_report.latency_goal(entry)
    assert (got_fast, got_kept) == (fast, kept)
    assert lat["speedup"] == pytest.approx(100.0 / lat_ms, abs=1e-4)
    line = [x for x in bench_report.goal_lines({"models": {"BiSeNetV2": entry}})
            if x.startswith("| BiSeNetV2")][0]
    assert ("| met |" if fast else "| missed |") in line
    assert ("met (" if kept else "missed (") in line
    # a model without the two rows has no verdict
    assert bench_report.latency_goal(_entry("FastSCNN", 100.0, 60.0)) is None


@pytest.mark.parametrize("lat_seeds,ctl_seeds,word", [
    ([0.40, 0.41, 0.42], [0.38, 0.39, 0.40], "met (+2.0"),
    ([0.38, 0.40, 0.42], [0.39, 0.41, 0.43], "within the noise (-1.0"),
    ([0.30, 0.31, 0.32], [0.38, 0.39, 0.40], "missed (-8.0")])
def test_the_latency_goal_compares_seed_means_where_both_rows_have_them(lat_seeds, ctl_seeds,
                                                                          word):
    entry = _entry("BiSeNetV2", 100.0, 60.0)
    # the single retrainings say the opposite of the seed means: the means decide
    entry["rows"] = bench_report.finish_rows(
        [r for r in entry["rows"] if r["row"] != "latency"] + [
            _row("latency", 0.3, "latency target 0.3", 1.0, 1_000_000, 0.45, 70.0),
            _row("latency_equal_loss", 0.3, "latency target 0.3, FLOPs-target allocation", 1.0,
                 1_000_000, 0.10, 70.0)])
    recovery = {"ratio": 0.3, "row_step_key": "0" * 64,
                "controls": {"config schedule": {"mious": [0.41, 0.41, 0.41]}},
                "recipes": {"plain": {"mious": lat_seeds, "control": "config schedule"}},
                "rows": [{"kind": "latency_equal_loss", "ratio": 0.3, "mious": ctl_seeds}]}
    results = {"models": {"BiSeNetV2": entry}, "recovery": {"BiSeNetV2": recovery}}
    line = [x for x in bench_report.goal_lines(results) if x.startswith("| BiSeNetV2")][0]
    assert word in line and "3 seeds each" in line
    # without the equal-loss row's seeds: the latency row's seed mean against the other's one
    # retraining, noise unknown, said to be so
    del recovery["rows"]
    line = [x for x in bench_report.goal_lines(results) if x.startswith("| BiSeNetV2")][0]
    gap = 100 * (sum(lat_seeds) / 3 - 0.10)
    assert f"met ({gap:+.1f}; 3 seeds against 1)" in line
    # neither row over seeds: their single retrainings
    del results["recovery"]
    line = [x for x in bench_report.goal_lines(results) if x.startswith("| BiSeNetV2")][0]
    assert "met (+35.0; 1 seed each)" in line


def test_latency_profiles_find_the_benchmark_checkpoints(tmp_path):
    import latency_profiles
    from paddleseg.utils.errors import UserError
    entry = _entry("BiSeNetV2", 100.0, 60.0)
    entry["rows"].append(_row("latency_equal_loss", 0.3, "equal", 1.0, 1, 0.39, 70.0,
                              step_key="e" * 64))
    with pytest.raises(UserError, match="--work_dir must be the folder the benchmark ran in"):
        latency_profiles.checkpoints(str(tmp_path), "BiSeNetV2", entry)
    train = tmp_path / "BiSeNetV2" / f"train-{'1' * 12}" / "out" / "iter_300"
    prune = tmp_path / "BiSeNetV2" / f"prune-{'e' * 12}" / "out"
    for folder in (train, prune):
        folder.mkdir(parents=True)
        (folder / "model.pdparams").write_bytes(b"")
    found = latency_profiles.checkpoints(str(tmp_path), "BiSeNetV2", entry)
    assert [label for label, _ in found] == ["unpruned", "equal"]
    assert found[1][1] == str(prune / "model.pdparams")


def test_a_study_s_results_md_names_its_own_folder():
    """A study run with --out_dir benchmarks/studies/NAME says which file it was made from and
    the command that remakes it; the benchmark's own says benchmarks/results.json."""
    results = tiny_results()
    study = bench_report.render_results(results, "benchmarks/studies/reconstruct")
    assert ("`python benchmarks/prune_speedup.py --phase report --out_dir "
            "benchmarks/studies/reconstruct` from `benchmarks/studies/reconstruct/results.json`"
            in study)
    own = bench_report.render_results(results)
    assert "--phase report` from `benchmarks/results.json`" in own
