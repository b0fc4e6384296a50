"""The benchmark's cached steps: keyed by everything that affects them, never reused for other
arguments or other code."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "studies"))
import bench_cache  # noqa: E402
import bench_report  # noqa: E402
import prune_speedup  # noqa: E402


def test_a_step_is_reused_only_for_the_same_material(tmp_path):
    steps = bench_cache.Steps(str(tmp_path))
    calls = []

    def compute(folder):
        calls.append(folder)
        with open(os.path.join(folder, "out.txt"), "w") as f:
            f.write("x")
        return {"value": len(calls)}, ["python train.py ..."]

    first = steps.run("train", {"iters": 10, "seed": 0}, compute)
    again = steps.run("train", {"seed": 0, "iters": 10}, compute)       # same, other key order
    other = steps.run("train", {"iters": 11, "seed": 0}, compute)
    assert len(calls) == 2 and again == first and first["result"] == {"value": 1}
    assert other["key"] != first["key"] and other["result"] == {"value": 2}
    assert first["commands"] == ["python train.py ..."]
    # a record whose key differs (edited, or from an older version) is not trusted
    record = os.path.join(steps.folder("train", first["key"]), bench_cache.RECORD)
    with open(record) as f:
        text = f.read()
    with open(record, "w") as f:
        f.write(text.replace(first["key"], "0" * 64))
    steps.run("train", {"iters": 10, "seed": 0}, compute)
    assert len(calls) == 3


def test_a_step_killed_before_its_record_is_redone_from_scratch(tmp_path):
    steps = bench_cache.Steps(str(tmp_path))
    material = {"iters": 1}
    folder = steps.folder("train", bench_cache.digest(dict(material, kind="train")))
    os.makedirs(folder)
    with open(os.path.join(folder, "half_written.bin"), "w") as f:
        f.write("partial")
    record = steps.run("train", material, lambda d: ({"files": sorted(os.listdir(d))}, []))
    assert record["result"] == {"files": []}


def test_a_resumable_step_killed_before_its_record_continues_from_its_folder(tmp_path, capsys):
    steps = bench_cache.Steps(str(tmp_path))
    material = {"iters": 1}
    folder = steps.folder("recovery", bench_cache.digest(dict(material, kind="recovery")))
    os.makedirs(os.path.join(folder, "out", "retrain", "iter_2"))
    record = steps.run("recovery", material, lambda d: ({"files": sorted(os.listdir(d))}, []),
                       resumable=True)
    assert record["result"] == {"files": ["out"]}   # what the killed run left, for its command
    assert "resuming recovery step" in capsys.readouterr().out
    # once recorded, it is reused like any other step
    assert steps.run("recovery", material, lambda d: 1 / 0, resumable=True) == record


def test_only_an_earlier_version_of_the_same_unit_is_explained(tmp_path, capsys):
    """A new recovery unit is not compared with the other seeds and recipes (each start listed
    all of them); a unit whose code changed still says why its old folder is not reused."""
    steps = bench_cache.Steps(str(tmp_path))
    unit = {"seed": 0, "flags": [], "control": False, "row": {"ratio": 0.3}, "code": "a"}
    steps.run("recovery", unit, lambda d: ({}, []))
    capsys.readouterr()
    for other in ({"seed": 1}, {"flags": ["--distill", "channel"]}, {"control": True},
                  {"row": {"ratio": 0.5}}):
        steps.run("recovery", dict(unit, **other), lambda d: ({}, []))
        assert "not reusing" not in capsys.readouterr().out, other
    steps.run("recovery", dict(unit, code="b"), lambda d: ({}, []))
    out = capsys.readouterr().out
    assert out.count("not reusing") == 1 and "made with other code" in out
    # a training step's seed is an argument like any other: an old one is explained
    steps.run("train", {"seed": 0}, lambda d: ({}, []))
    steps.run("train", {"seed": 1}, lambda d: ({}, []))
    assert "made with other seed" in capsys.readouterr().out


def test_latency_phase_never_computes(tmp_path):
    steps = bench_cache.Steps(str(tmp_path), compute=False)
    with pytest.raises(bench_cache.StepNotPrepared, match="--phase prepare"):
        steps.run("prune", {"ratio": 0.3}, lambda d: ({}, []))
    assert not os.listdir(tmp_path)


def test_code_version_follows_the_sources(tmp_path):
    (tmp_path / "pkg").mkdir()
    src = tmp_path / "pkg" / "a.py"
    src.write_text("x = 1\n")
    before = bench_cache.code_version(["pkg/*.py"], root=str(tmp_path))
    assert bench_cache.code_version(["pkg/*.py"], root=str(tmp_path)) == before
    src.write_text("x = 2\n")
    edited = bench_cache.code_version(["pkg/*.py"], root=str(tmp_path))
    (tmp_path / "pkg" / "b.py").write_text("")
    added = bench_cache.code_version(["pkg/*.py"], root=str(tmp_path))
    other_lib = bench_cache.code_version(["pkg/*.py"], root=str(tmp_path), extra={"paddleslim": "2.7"})
    assert len({before, edited, added, other_lib}) == 4
    # "!" leaves files out: editing them keeps the version, a new file beside them does not
    (tmp_path / "pkg" / "timing").mkdir()
    (tmp_path / "pkg" / "timing" / "t.py").write_text("t = 1\n")
    patterns = ["pkg/**/*.py", "!pkg/timing/**/*.py"]
    assert bench_cache.source_files(patterns, str(tmp_path)) == ["pkg/a.py", "pkg/b.py"]
    engine = bench_cache.code_version(patterns, root=str(tmp_path))
    (tmp_path / "pkg" / "timing" / "t.py").write_text("t = 2\n")
    assert bench_cache.code_version(patterns, root=str(tmp_path)) == engine
    (tmp_path / "pkg" / "new").mkdir()
    (tmp_path / "pkg" / "new" / "n.py").write_text("")
    assert bench_cache.code_version(patterns, root=str(tmp_path)) != engine


@pytest.fixture
def fake_camvid(tmp_path):
    """List files (and the files they name) in CamVid's layout: all the keys read of the data."""
    root = tmp_path / "camvid"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for split, names in (("train", ["a", "b"]), ("val", ["c"])):
        with open(root / f"{split}.txt", "w") as f:
            for n in names:
                (root / "images" / f"{n}.jpg").write_bytes(b"jpg")
                (root / "labels" / f"{n}.png").write_bytes(b"png")
                f.write(f"images/{n}.jpg labels/{n}.png\n")
    return str(root)


def materials(fake_camvid, *extra, model="FastSCNN"):
    """Every step's material for the given command-line arguments."""
    args = prune_speedup.parse_args(["--models", model, "--dataset_root", fake_camvid,
                                     "--out_dir", "elsewhere", *extra])
    run = prune_speedup.ModelRun(model, args)
    out = {"train": run.train_material()}
    run.train_record = {"key": step_key(out["train"], "train")}
    out.update(unpruned=run.unpruned_material(), control=run.control_material(),
               flops=run.prune_material("flops", 0.3), latency=run.prune_material("latency", 0.3),
               paddleslim=run.paddleslim_material(0.3), sensitivity=run.sensitivity_material(),
               budget=run.prune_material(prune_speedup.BUDGET, 1.0))
    out["counts"] = run.count_material({"key": step_key(out["flops"], "prune")})
    row = {"key": step_key(out["latency"], "prune")}
    out.update(recovery=run.recovery_material(row, "distill", 0),
               recovery_control=run.recovery_material(row, "distill", 0, control=True))
    return {k: bench_cache.digest(v) for k, v in out.items()}


def step_key(material, kind):
    return bench_cache.digest(dict(material, kind=kind))


# argument -> the steps whose key must change with it (all others must not)
KEYED = [
    (["--train_iters", "7"], "all"),
    (["--seed", "3"], "all"),
    (["--train_threads", "1"], "all"),
    (["--eval_points", "3"], "all"),
    (["--retraining_iters", "9"], {"control", "flops", "latency", "recovery", "recovery_control",
                                   "budget", "paddleslim", "counts"}),
    (["--criterion", "l1"], {"flops", "latency", "recovery", "budget", "sensitivity", "counts"}),
    (["--sen_ratios", "0.3", "0.6"], {"flops", "latency", "recovery", "budget", "sensitivity",
                                      "counts"}),
    (["--sen_eval_num", "5"], {"flops", "latency", "recovery", "budget", "paddleslim",
                               "sensitivity", "counts"}),
    (["--channel_step", "4"], {"flops", "latency", "recovery", "budget", "counts"}),
    (["--input_shape", "1", "3", "256", "512"], {"unpruned", "latency", "recovery", "budget",
                                                 "counts"}),
    (["--cpu_threads", "1"], {"latency", "recovery", "budget"}),
    (["--latency_samples", "5"], {"latency", "recovery", "budget"}),
    (["--paddleslim_criterion", "fpgm"], {"paddleslim"}),
    (["--paddleslim_timeout", "60"], {"paddleslim"}),
    (["--budget_ceiling", "0.4"], {"budget"}),
    (["--recovery_threads", "1"], {"recovery", "recovery_control"}),
]


def test_every_keyed_argument_changes_the_keys_of_its_steps(fake_camvid):
    base = materials(fake_camvid, "--train_iters", "8")
    assert len(set(base.values())) == len(base)
    for argv, expected in KEYED:
        argv = argv if "--train_iters" in argv else argv + ["--train_iters", "8"]
        changed = {k for k, v in materials(fake_camvid, *argv).items() if v != base[k]}
        assert changed == (set(base) if expected == "all" else expected), argv


def test_config_data_and_code_are_keyed(fake_camvid, tmp_path, monkeypatch):
    base = materials(fake_camvid)
    # the config after _base_ merge: a config that inherits the model's and changes the lr
    cfg = tmp_path / "cfg.yml"
    cfg.write_text(f"_base_: {os.path.join(ROOT, prune_speedup.MODELS['FastSCNN'])}\n"
                   "lr_scheduler:\n  learning_rate: 0.02\n")
    monkeypatch.setitem(prune_speedup.MODELS, "FastSCNN", str(cfg))
    assert all(v != base[k] for k, v in materials(fake_camvid).items())
    monkeypatch.undo()
    # the data: one more line in the training list
    with open(os.path.join(fake_camvid, "train.txt"), "a") as f:
        f.write("images/c.jpg labels/c.png\n")
    assert all(v != base[k] for k, v in materials(fake_camvid).items())
    with open(os.path.join(fake_camvid, "train.txt")) as f:
        lines = f.readlines()
    with open(os.path.join(fake_camvid, "train.txt"), "w") as f:
        f.writelines(lines[:-1])
    # the code: a source file of the pruning steps
    real = bench_cache.code_version

    def keys_after_editing(path):
        monkeypatch.setattr(bench_cache, "code_version", lambda patterns, root=bench_cache.ROOT,
                            extra=None: real(patterns, root, extra) + (
                                "!" if path in bench_cache.source_files(patterns) else ""))
        return {k for k, v in materials(fake_camvid).items() if v != base[k]}

    pruning = {"flops", "latency", "budget", "paddleslim", "counts", "recovery"}
    assert keys_after_editing("paddleseg/slim/apply.py") == pruning | {"sensitivity",
                                                                       "recovery_control"}
    # an analysis or a control's retraining neither times a model nor allocates a target: hours
    # of them are kept (a pruned row's recovery follows its row, pruned again)
    assert keys_after_editing("paddleseg/slim/latency/measure.py") == pruning
    assert keys_after_editing("paddleseg/slim/targets/latency.py") == pruning
    assert keys_after_editing("train.py") == set(base)


def test_dataset_root_without_list_files_is_one_line(tmp_path):
    with pytest.raises(prune_speedup.BenchmarkError, match="train.txt not found"):
        prune_speedup.ModelRun("FastSCNN", prune_speedup.parse_args(
            ["--dataset_root", str(tmp_path), "--out_dir", "elsewhere"]))


def test_fewer_than_30_rounds_are_refused():
    with pytest.raises(prune_speedup.BenchmarkError, match=">= 30"):
        prune_speedup.parse_args(["--repeats", "10"])


def test_commands_report_their_error_line_and_stop_at_the_timeout(tmp_path):
    log = str(tmp_path / "log")
    code, error, _ = prune_speedup.run_command(
        ["-c", "import sys; print('working'); print('error: no such layer', file=sys.stderr); "
               "sys.exit(2)"], log, threads=1)
    assert (code, error) == (2, "no such layer")
    assert open(log).read().splitlines() == ["working", "error: no such layer"]
    code, error, seconds = prune_speedup.run_command(
        ["-c", "import time; print('started', flush=True); time.sleep(60)"], log, 1, timeout=2)
    assert code is None and error is None and seconds < 30
    assert prune_speedup.last_progress(log) == "last log line: started"
    # a library's warning after our last progress line does not hide it
    with open(log, "a") as f:
        f.write("2026-12-02 01:26:05 [INFO] PaddleSlim: building collections\n"
                "2026-12-02 01:26:28,986-WARNING: Leaves ['batch_norm_0.tmp_0', ...]\n")
    assert prune_speedup.last_progress(log) == \
        "last log line: 2026-12-02 01:26:05 [INFO] PaddleSlim: building collections"


def test_a_benchmark_stopped_by_sigterm_stops_the_command_it_runs(tmp_path):
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path[:0] = [{root!r}, {bench!r}]; import prune_speedup; "
        "prune_speedup.stop_commands_on_sigterm(); "
        "prune_speedup.run_command(['-c', {child!r}], {log!r}, 1)").format(
            root=ROOT, bench=os.path.join(ROOT, "benchmarks"), child=child,
            log=str(tmp_path / "log"))])
    deadline = time.time() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    child_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.time() + 10
    while running(child_pid) and time.time() < deadline:
        time.sleep(0.1)
    assert not running(child_pid), "the command outlived its benchmark"


def running(pid):
    """Whether ``pid`` runs (a zombie no one has reaped yet has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_recorded_command_is_the_one_that_runs_every_phase():
    argv = ["--models", "UNet", "--phase", "latency", "--repeats", "30"]
    assert prune_speedup.without_phase(argv) == ["--models", "UNet", "--repeats", "30"]
    assert prune_speedup.without_phase(["--phase=prepare", "--models", "UNet"]) == \
        ["--models", "UNet"]


def test_the_benchmarks_own_outputs_do_not_make_the_tree_dirty(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "results.json").write_text("{}")
    (tmp_path / "train.py").write_text("")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "x")
    assert not bench_cache.git_commit(str(tmp_path)).endswith("+dirty")
    (tmp_path / "benchmarks" / "results.json").write_text('{"models": {}}')
    assert not bench_cache.git_commit(str(tmp_path)).endswith("+dirty")
    (tmp_path / "train.py").write_text("# changed")
    assert bench_cache.git_commit(str(tmp_path)).endswith("+dirty")


def test_sensitivity_scaling_compares_the_files_of_equal_thread_counts():
    import sensitivity_scaling
    same = {"default": {b"a"}, "ranks": {b"a"}, "one thread": {b"a"}}
    assert sensitivity_scaling.same_files(same) == (True, True)
    last_bits = {"default": {b"b"}, "ranks": {b"a"}, "one thread": {b"a"}}
    assert sensitivity_scaling.same_files(last_bits) == (True, False)
    broken = {"default": {b"a"}, "ranks": {b"a", b"c"}, "one thread": {b"a"}}
    assert sensitivity_scaling.same_files(broken) == (False, False)


def test_a_resumed_step_s_time_sums_the_runs_its_log_holds(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("old line, written before the run-start marks\n")
    assert prune_speedup.run_command(["-c", "print('one')"], str(log), 1, append=True)[0] == 0
    assert prune_speedup.run_command(["-c", "print('two')"], str(log), 1, append=True)[0] == 0
    lines = log.read_text().splitlines()
    assert lines[0].startswith("old line") and lines[2::2] == ["one", "two"]
    # every line is in the file as soon as it is printed: a killed run's log keeps it
    proc = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path[:0] = {path!r}; import prune_speedup; prune_speedup.run_command("
        "['-c', 'import time; print(\"line\", flush=True); time.sleep(60)'], {log!r}, 1, "
        "append=True)").format(path=[os.path.join(ROOT, "benchmarks"), ROOT], log=str(log))])
    deadline = time.time() + 60
    while "line" not in log.read_text().splitlines()[-1] and time.time() < deadline:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    assert log.read_text().splitlines()[-1] == "line"
    assert [ln.split()[:3] for ln in lines[1::2]] == [["===", "run", "started"]] * 2
    log.write_text("=== run started 2026-12-07 10:00:00\n2026-12-07 10:00:05 [INFO] a\n"
                   "a warning\n2026-12-07 10:10:00 [INFO] killed here\n"
                   "=== run started 2026-12-07 10:30:00\n    2026-12-07 10:35:00 [INFO] end\n")
    assert prune_speedup.attempts_seconds(str(log)) == 900.0   # 10 + 5 minutes


def test_a_killed_training_step_resumes_at_its_last_checkpoint(fake_camvid, tmp_path,
                                                               monkeypatch):
    args = prune_speedup.parse_args(["--models", "FastSCNN", "--dataset_root", fake_camvid,
                                     "--out_dir", "elsewhere", "--train_iters", "8",
                                     "--work_dir", str(tmp_path / "work")])
    run = prune_speedup.ModelRun("FastSCNN", args)
    commands = []

    def fake_train(argv, log_path, threads, timeout=None, append=False):
        commands.append(argv)
        out = argv[argv.index("--save_dir") + 1]
        with open(log_path, "a") as log:
            log.write("=== run started 2026-12-07 10:00:00\n")
        for it in (4, 8) if len(commands) == 2 else (4,):
            os.makedirs(os.path.join(out, f"iter_{it}"), exist_ok=True)
        if len(commands) == 1:
            raise KeyboardInterrupt()   # killed after its checkpoint at iteration 4
        with open(log_path, "a") as log:
            log.write("2026-12-07 10:01:00 [INFO] [TRAIN] iter 8/8, batch_cost 1.0s\n")
        return 0, None, 99.0   # this run's own wall time
    monkeypatch.setattr(prune_speedup, "run_command", fake_train)
    monkeypatch.setattr(prune_speedup, "evaluate_checkpoint", lambda cfg, path: 0.5)
    with pytest.raises(KeyboardInterrupt):
        run.train()
    record = run.train()
    assert "--resume_model" not in commands[0]
    assert commands[1][commands[1].index("--resume_model") + 1].endswith("iter_4")
    assert record["result"]["resumed_from_iter"] == 4
    assert record["result"]["curve"] == [[4, 0.5], [8, 0.5]]
    assert record["commands"] == [prune_speedup.command_text(commands[0])]   # as a user runs it
    assert record["result"]["seconds"] == 60.0   # the log's runs: the killed one logged no time
    assert os.listdir(os.path.join(run.steps.folder("train", record["key"]), "out")) == ["iter_8"]

    # killed after its last iteration, in the curve's evaluations: not trained again
    os.remove(os.path.join(run.steps.folder("train", record["key"]), bench_cache.RECORD))
    record = run.train()
    assert len(commands) == 2 and record["result"]["resumed_from_iter"] == 8
    assert record["result"]["curve"] == [[8, 0.5]]   # what the killed run had left


def test_a_killed_pruning_step_runs_the_same_prune_py_command_again(fake_camvid, tmp_path,
                                                                       monkeypatch):
    # prune.py resumes a killed run of the same command itself (its sensitivity file, the
    # allocation and the retraining's checkpoints in its save_dir): the folder is kept for it
    args = prune_speedup.parse_args(["--models", "FastSCNN", "--dataset_root", fake_camvid,
                                     "--out_dir", "elsewhere", "--work_dir",
                                     str(tmp_path / "work")])
    run = prune_speedup.ModelRun("FastSCNN", args)
    run.train_record = {"key": "t" * 64, "result": {"checkpoint": "ckpt.pdparams"}}
    commands = []

    def fake_prune(argv, log_path, threads, timeout=None, append=False):
        commands.append((argv, append))
        out = argv[argv.index("--save_dir") + 1]
        os.makedirs(os.path.join(out, "resume"), exist_ok=True)
        with open(log_path, "a") as log:
            log.write(f"=== run started 2026-12-07 10:00:00\n2026-12-07 10:0{len(commands)}:00 "
                      "[INFO] pruning\n")
        if len(commands) == 1:
            raise KeyboardInterrupt()
        assert os.listdir(out) == ["resume"]   # what the killed run left is there for it
        with open(os.path.join(out, "report.json"), "w") as f:
            f.write('{"model_name": "FastSCNN", "flops_reduction": 0.3}')
        return 0, None, 99.0
    monkeypatch.setattr(prune_speedup, "run_command", fake_prune)
    with pytest.raises(KeyboardInterrupt):
        run.prune("flops", 0.3)
    record = run.prune("flops", 0.3)
    assert commands[0] == commands[1] and commands[0][1] is True
    assert record["result"]["seconds"] == 180.0   # 1 minute, then 2


def test_a_budget_row_runs_prune_py_with_the_budget_up_to_the_ceiling(fake_camvid, monkeypatch):
    args = prune_speedup.parse_args(["--models", "FastSCNN", "--dataset_root", fake_camvid,
                                     "--out_dir", "elsewhere", "--budget_drops", "1.0",
                                     "--budget_ceiling", "0.45"])
    run = prune_speedup.ModelRun("FastSCNN", args)
    run.train_record = {"key": "t" * 64, "result": {"checkpoint": "ckpt.pdparams"}}
    seen = {}
    monkeypatch.setattr(prune_speedup.ModelRun, "_pruning_step",
                        lambda self, kind, material, argv, timeout, **kw: seen.update(argv=argv))
    run.prune(prune_speedup.BUDGET, 1.0)
    argv = seen["argv"]
    assert argv[argv.index("--pruning_ratio") + 1] == "0.45"
    assert argv[argv.index("--max_miou_drop") + 1] == "1.0"
    assert argv[argv.index("--target") + 1] == "latency"
    with pytest.raises(prune_speedup.BenchmarkError, match="--budget_drops"):
        prune_speedup.parse_args(["--budget_drops", "0"])
    plain_key = run.prune_material(prune_speedup.BUDGET, 1.0)
    assert "recipe" not in plain_key["budget"]   # the config schedule's rows keep their keys


def test_a_row_recipe_searches_and_retrains_the_budget_rows_only(fake_camvid, monkeypatch):
    """--row_recipe long: prune.py's budget run gets the recipe's flags (its length made the
    row's multiple, after the row's own --retraining_iters: the last one counts), the step's key
    and the row's label say so; the other rows are pruned as before (their keys unchanged)."""
    common = ["--models", "FastSCNN", "--dataset_root", fake_camvid, "--out_dir", "elsewhere",
              "--budget_drops", "1.0", "--retraining_iters", "10"]
    runs = {}
    for recipe in ("plain", "long"):
        args = prune_speedup.parse_args(common + ["--row_recipe", recipe, "--recipes", "plain",
                                                  "finetune"])
        runs[recipe] = prune_speedup.ModelRun("FastSCNN", args)
        runs[recipe].train_record = {"key": "t" * 64, "result": {"checkpoint": "c.pdparams"}}
    # added to the recipes: its seeds and control are the rows' baseline
    assert runs["long"].args.recipes == ["plain", "finetune", "long"]
    seen = []
    monkeypatch.setattr(prune_speedup.ModelRun, "_pruning_step",
                        lambda self, kind, material, argv, timeout, **kw: seen.append(
                            (material, argv)) or {"key": "p" * 64, "material": material,
                                                  "commands": [], "result": {"error": "x"}})
    for kind, ratio in (("latency", 0.3), (prune_speedup.BUDGET, 1.0)):
        for recipe in ("plain", "long"):
            runs[recipe].prune(kind, ratio)
    (lat_plain, lat_argv), (lat_long, lat_long_argv), (plain, _), (budget, argv) = seen
    assert lat_plain == lat_long and lat_argv == lat_long_argv
    assert budget["budget"]["recipe"] == ["--retraining_iters", "40"] and plain != budget
    assert argv[argv.index("--retraining_iters") + 1] == "10"
    assert argv[len(argv) - 1 - argv[::-1].index("--retraining_iters") + 1] == "40"
    record = {"key": "p" * 64, "material": budget, "commands": [], "result": {"error": "x"}}
    row, _ = bench_report.pruned_row(prune_speedup.BUDGET, 1.0, record, None)
    assert row["label"].endswith("retrained with `--retraining_iters 40`")


def test_a_row_without_a_budget_keeps_no_budget_section():
    # prune.py writes "budget": null without --max_miou_drop
    report = {"model_name": "FastSCNN", "flops_reduction": 0.3, "budget": None,
              "coverage": {"convs": 3, "prunable_convs": 2, "flops_coverage": 0.9, "groups": 2}}
    kept = prune_speedup.slim_report(report)
    assert kept == {"model_name": "FastSCNN", "flops_reduction": 0.3,
                    "coverage": {"convs": 3, "prunable_convs": 2, "flops_coverage": 0.9}}


def test_a_budget_rows_record_keeps_the_chosen_cut_and_why_for_the_goals_table():
    report = {"model_name": "FastSCNN", "miou_retrained": 0.43, "flops_reduction": 0.24,
              "budget": {"max_miou_drop": 1.0, "chosen_cut": 0.1,
                         "why": "cut 0.1 chosen: the next, 0.2, was refused",
                         "reference": {"mious": [0.437, 0.432], "mean": 0.4345,
                                       "noise_points": 0.48, "iters": 150},
                         "steps": [{"step": 1, "cut": 0.1, "miou": 0.433, "accepted": True,
                                    "plan": {"g": 0.5}},
                                   {"step": 2, "cut": 0.2, "miou": 0.402, "accepted": False,
                                    "plan": {"g": 0.8}}]}}
    kept = prune_speedup.slim_report(report)
    assert kept["budget"]["chosen_cut"] == 0.1 and kept["budget"]["why"].endswith("refused")
    assert [s["accepted"] for s in kept["budget"]["steps"]] == [True, False]
    assert not any("plan" in s for s in kept["budget"]["steps"])
    record = {"key": "k" * 64, "commands": [], "result": {
        "report": kept, "export": "e", "model": "m", "seconds": 1.0}}
    row, _ = bench_report.pruned_row(prune_speedup.BUDGET, 1.0, record,
                                     {"flops": 1e9, "params": 1e6})
    assert row["budget"]["chosen_cut"] == 0.1 and "refused" in row["budget"]["why"]
