"""Hardening of slim/prune/prune.py (issue 21): bad paths, flags and files are refused in one
line before any slow work, nothing the user had is lost, and a missed latency target is said
plainly. prune.py runs in-process through cli.run (the one-line error and exit 2)."""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def load_prune_cli():
    spec = importlib.util.spec_from_file_location("prune_cli",
                                                  os.path.join(ROOT, "slim", "prune", "prune.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_prune(argv, capsys):
    """prune.py in-process through cli.run: (exit code, stdout, stderr)."""
    from paddleseg.utils import cli
    with pytest.raises(SystemExit) as exc:
        cli.run(load_prune_cli().main, [str(a) for a in argv])
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def prune_args(config, save_dir, *extra):
    return ["--config", config, "--pruning_ratio", 0.1, "--retraining_iters", 1,
            "--save_dir", save_dir, "--sen_ratios", 0.5, "--sen_eval_num", 1, *extra]


def one_error_line(code, out, err):
    """The error line of a run refused before any work (exit 2, one line, no traceback)."""
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-2000:]}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "baseline mIoU" not in out, out + err
    return lines[0]


def snapshot(folder):
    return {os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(folder) for n in names}


# -- 1. a save_dir holding the input checkpoint; files of an earlier run ------------------------
def earlier_output(folder):
    """A folder as an earlier prune.py run leaves it: model, reports, sensitivity file."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("model.pdparams", "prune_plan.json", "report.json", "report.md",
                 "sensitivity.png", "sensitivity.json"):
        (folder / name).write_bytes(f"earlier {name}\n".encode())
    return folder


@pytest.mark.parametrize("given", ["file", "folder", "symlink"])
def test_pruning_in_place_is_refused_and_the_input_kept(given, tiny_config, tmp_path, capsys):
    out = earlier_output(tmp_path / "out" / "pruned")
    before = snapshot(out)
    model_path = {"file": out / "model.pdparams", "folder": out}.get(given)
    if given == "symlink":   # another name for the same file: real paths are compared
        (tmp_path / "link").symlink_to(out)
        model_path = tmp_path / "link" / "model.pdparams"
    line = one_error_line(*run_prune(prune_args(tiny_config, out, "--model_path", model_path),
                                     capsys))
    assert f"--save_dir {out} holds the input checkpoint --model_path {model_path}" in line, line
    assert snapshot(out) == before


def test_a_model_path_beside_save_dir_is_not_refused_for_it(tiny_config, tmp_path, capsys):
    # out/model.pdparams pruned into out/pruned: the checkpoint is not in the replaced folder
    from paddleseg.slim.output.publish import check_input_outside
    earlier_output(tmp_path / "out")
    check_input_outside(str(tmp_path / "out" / "model.pdparams"), str(tmp_path / "out" / "pruned"))
    check_input_outside(str(tmp_path / "out"), str(tmp_path / "out" / "pruned"))


def publish_over(save_dir, sen_file, tmp_path):
    """Publish a new stage (a model and a plot) over ``save_dir``; the new folder's names."""
    from paddleseg.slim.output.publish import make_stage, publish
    stage = make_stage(str(save_dir))
    for name in ("model.pdparams", "sensitivity.png"):
        with open(os.path.join(stage, name), "w") as f:
            f.write(f"new {name}\n")
    publish(stage, str(save_dir), None if sen_file is None else str(sen_file))
    return sorted(os.listdir(save_dir))


def test_a_sensitivity_file_this_run_did_not_use_is_not_carried(tmp_path):
    out = earlier_output(tmp_path / "out")
    (out / "sensitivity.json.part1.json").write_text("{}")
    elsewhere = tmp_path / "sens" / "mine.json"
    assert publish_over(out, elsewhere, tmp_path) == ["model.pdparams", "sensitivity.png"]


def test_the_sensitivity_file_this_run_resumed_is_carried(tmp_path):
    out = earlier_output(tmp_path / "out")
    assert publish_over(out, None, tmp_path) == ["model.pdparams", "sensitivity.json",
                                                 "sensitivity.png"]
    assert (out / "sensitivity.json").read_text() == "earlier sensitivity.json\n"
    # a --sen_file of its own name in save_dir: that one is carried, the default one is not
    out = earlier_output(tmp_path / "out2")
    (out / "mine.json").write_text("my analysis\n")
    assert publish_over(out, out / "mine.json", tmp_path) == ["mine.json", "model.pdparams",
                                                              "sensitivity.png"]


# -- 4. a FIFO or a device named as a file: refused, never opened -------------------------------
class FifoWatch:
    """Whether anyone opened ``path`` (a FIFO) for reading: a thread tries to open its writing
    end for ``seconds``; when it can (a reader is waiting), it records that and closes it, so
    a reader blocked in open() is released (and reads an empty file) instead of hanging."""

    def __init__(self, path, seconds=60):
        import threading
        import time
        os.mkfifo(path)
        self.path, self.opened, self.done = str(path), False, threading.Event()

        def watch():
            end = time.time() + seconds
            while not self.done.is_set() and time.time() < end:
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:   # ENXIO: no reader
                    time.sleep(0.1)
                    continue
                self.opened = True
                os.close(fd)
        self.thread = threading.Thread(target=watch, daemon=True)
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join()
        return self.opened


def test_a_fifo_as_latency_table_is_refused_unopened(tiny_config, tmp_path, capsys):
    fifo = FifoWatch(tmp_path / "table.json")
    result = run_prune(prune_args(tiny_config, tmp_path / "out", "--target", "latency",
                                  "--latency_table", fifo.path), capsys)
    opened = fifo.stop()
    line = one_error_line(*result)
    assert f"--latency_table {fifo.path} is not a regular file" in line, line
    assert not opened and not (tmp_path / "out").exists()


def test_a_fifo_or_device_as_sen_file_is_refused_unopened(tiny_config, tmp_path, capsys):
    fifo = FifoWatch(tmp_path / "sens.json")
    result = run_prune(prune_args(tiny_config, tmp_path / "out", "--sen_file", fifo.path), capsys)
    opened = fifo.stop()
    line = one_error_line(*result)
    assert f"--sen_file {fifo.path} is not a regular file" in line, line
    assert not opened and not (tmp_path / "out").exists()
    # /dev/null reads empty where /dev/zero would read without end: the same refusal
    line = one_error_line(*run_prune(prune_args(tiny_config, tmp_path / "out", "--sen_file",
                                                os.devnull), capsys))
    assert f"--sen_file {os.devnull} is not a regular file" in line, line


# -- 7. a path under an existing file -----------------------------------------------------------
@pytest.mark.parametrize("flag", ["--save_dir", "--sen_file", "--latency_table"])
def test_a_path_under_a_file_is_refused_before_any_work(flag, tiny_config, tmp_path, capsys):
    a_file = tmp_path / "somefile.txt"
    a_file.write_text("the user's notes\n")
    bad = a_file / "deeper" / ("out" if flag == "--save_dir" else "x.json")
    save_dir = bad if flag == "--save_dir" else tmp_path / "out"
    extra = [] if flag == "--save_dir" else [flag, bad]
    if flag == "--latency_table":
        extra += ["--target", "latency"]
    line = one_error_line(*run_prune(prune_args(tiny_config, save_dir, *extra), capsys))
    assert line == (f"error: {flag} {bad} cannot be made: {a_file} is an existing file, not a "
                    "folder; choose a path under a folder"), line
    assert a_file.read_text() == "the user's notes\n"
    assert sorted(os.listdir(tmp_path)) == ["somefile.txt"]


# -- 8. a .json sensitivity file that is not JSON text ------------------------------------------
@pytest.mark.parametrize("content", [
    bytes(range(256)) * 4,                                                    # binary garbage
    json.dumps({"format": 2, "fingerprint": {}, "base": None, "losses": {}}).encode("utf-16"),
], ids=["binary", "utf-16"])
def test_a_sen_file_that_is_not_json_text_is_refused_in_one_line(content, tiny_config, tmp_path,
                                                                   capsys):
    sen = tmp_path / "sens.json"
    sen.write_bytes(content)
    line = one_error_line(*run_prune(prune_args(tiny_config, tmp_path / "out", "--sen_file", sen),
                                     capsys))
    assert line.startswith(f"error: {sen} is not a JSON sensitivity file ("), line
    assert "UnicodeDecodeError" not in line and sen.read_bytes() == content


# -- 5. the latency shape is bounded; 6. so is --channel_step ------------------------------------
@pytest.mark.parametrize("shape,words", [
    ((1, 3, 100000, 100000), "H and W must lie in [32, 8192]"),
    ((1, 3, 3, 3), "H and W must lie in [32, 8192]"),
    ((1, 3, 64, 16), "H and W must lie in [32, 8192]"),
    ((65, 3, 64, 64), "N must lie in [1, 64]"),
    ((2, 3, 8192, 8192), "N*H*W = 134217728 is above the 16777216"),
    ((1, 4, 64, 64), "needs C = 3"),
])
def test_a_latency_shape_out_of_bounds_is_refused_before_any_work(shape, words, tiny_config,
                                                                  tmp_path, capsys):
    line = one_error_line(*run_prune(prune_args(tiny_config, tmp_path / "out", "--target",
                                                "latency", "--latency_shape", *shape), capsys))
    assert "--latency_shape" in line and words in line, line
    assert not (tmp_path / "out").exists()


def test_the_bounds_of_the_latency_shape_are_allowed():
    from paddleseg.slim.targets.latency import check_latency_shape
    for shape in [(1, 3, 32, 32), (1, 3, 4096, 4096), (8, 3, 1024, 2048), (64, 3, 512, 512)]:
        check_latency_shape(shape)


def test_the_flag_help_states_the_latency_shape_bounds():
    action = next(a for a in load_prune_cli().build_parser()._actions
                  if "--latency_shape" in a.option_strings)
    assert "32 <= H, W <= 8192" in action.help and "N <= 64" in action.help


@pytest.mark.parametrize("step", [0, 65, 100000])
def test_a_channel_step_out_of_bounds_is_refused(step, tiny_config, tmp_path, capsys):
    line = one_error_line(*run_prune(prune_args(tiny_config, tmp_path / "out", "--channel_step",
                                                step), capsys))
    assert line.startswith("error: --channel_step must lie in [1, 64]") and \
        line.endswith(f"got {step}"), line


# -- 2./3. a latency table's values and structure; a missed latency target said plainly ---------
@pytest.fixture(scope="module")
def toy_table(tmp_path_factory):
    """(table file contents, the ToyNet, its groups): a real table measured on ToyNet."""
    from paddleseg.slim.latency import obtain
    from test_slim_latency import backend, toy
    model, groups = toy()
    path = str(tmp_path_factory.mktemp("table") / "toy.json")
    obtain(model, groups, backend(), 8, 0.6, path, samples=3)
    with open(path) as f:
        return json.load(f), model, groups


def edited_table(toy_table, tmp_path, edit):
    d = json.loads(json.dumps(toy_table[0]))
    edit(d)
    path = str(tmp_path / "edited.json")
    with open(path, "w") as f:
        json.dump(d, f)   # NaN and Infinity are written as JSON's json module reads them
    return path


def obtain_refused(toy_table, path):
    from paddleseg.slim.latency import LatencyTableMismatch, obtain
    from test_slim_latency import backend
    _, model, groups = toy_table
    with pytest.raises(LatencyTableMismatch) as e:
        obtain(model, groups, backend(), 8, 0.6, path)
    message = str(e.value)
    assert path in message and "\n" not in message and "measure afresh" in message, message
    return message


def test_the_untouched_table_is_reused(toy_table, tmp_path):
    from paddleseg.slim.latency import obtain
    from test_slim_latency import backend
    _, model, groups = toy_table
    path = edited_table(toy_table, tmp_path, lambda d: None)
    table, _ = obtain(model, groups, backend(), 8, 0.6, path)
    assert table.coef == toy_table[0]["coef"]


@pytest.mark.parametrize("edit,words", [
    (lambda d: d["coef"][2].__setitem__(0, 1e300), "coef[2] (site "),
    (lambda d: d["coef"][0].__setitem__(3, float("nan")), "coef[0] (site "),
    (lambda d: d["coef"][1].__setitem__(1, -0.5), "coef[1] (site "),
    (lambda d: d["rest"].__setitem__(0, 1e300), "rest[0] = 1e+300"),
    (lambda d: d["rest"].__setitem__(2, float("inf")), "rest[2] = inf"),
    (lambda d: d.__setitem__("full_ms", float("nan")), "full_ms = nan"),
    (lambda d: d["samples"][1].__setitem__("total_ms", float("nan")), "samples[1].total_ms = nan"),
    (lambda d: d.__setitem__("sites", d["sites"][:3]), "3 sites, 5 coefficient rows"),
    (lambda d: d["sites"][1].__setitem__("cin", "16"), "sites[1].cin = '16'"),
], ids=["coef 1e300", "coef nan", "coef negative", "scale 1e300", "rest inf", "full_ms nan",
        "sample nan", "sites cut", "site field"])
def test_a_table_with_an_edited_value_is_refused_naming_it(edit, words, toy_table, tmp_path):
    path = edited_table(toy_table, tmp_path, edit)
    message = obtain_refused(toy_table, path)
    assert f"latency table {path} holds a value no measurement writes: " in message, message
    assert words in message, message


def test_a_table_listing_other_sites_is_refused_against_the_model(toy_table, tmp_path):
    def three_sites(d):   # consistent in itself, but not the model's 5 convs
        for k in ("sites", "coef", "present"):
            d[k] = d[k][:3]
    message = obtain_refused(toy_table, edited_table(toy_table, tmp_path, three_sites))
    assert "lists 3 conv sites where the model runs 5 at 1x3x32x32" in message, message

    def unknown_group(d):
        d["samples"][2]["counts"] = {"no.such.group": 8}
    message = obtain_refused(toy_table, edited_table(toy_table, tmp_path, unknown_group))
    assert "sample plan 2 prunes group 'no.such.group'" in message, message


def test_a_nan_table_is_refused_by_prune_naming_the_table(toy_table, tiny_config, tmp_path,
                                                          capsys):
    path = edited_table(toy_table, tmp_path, lambda d: d["coef"][0].__setitem__(0, float("nan")))
    line = one_error_line(*run_prune(prune_args(tiny_config, tmp_path / "out", "--target",
                                                "latency", "--latency_table", path), capsys))
    assert line.startswith(f"error: latency table {path} holds a value no measurement writes: "
                           "coef[0]"), line
    assert "--pruning_ratio" not in line and "got nan" not in line


def test_a_missed_latency_target_is_recorded_by_the_closing_loop():
    from test_slim_latency import search_setup
    search, sens = search_setup(factor=0.3)     # even the grid's most measures far below 0.3
    search.search(None, sens, 0.3, allow_lower=True)
    assert search.verdict["target_met"] is False and search.verdict["target_reduction"] == 0.3
    assert search.verdict["search_measured_reduction"] < 0.27
    search, sens = search_setup(factor=0.7)     # the loop closes the gap
    search.search(None, sens, 0.3)
    assert search.verdict["target_met"] is True


def latency_report(met):
    lat = {"backend": "paddle-inference-cpu", "device": "cpu", "cpu_threads": 1,
           "shape": [1, 3, 64, 64], "table": "/t.json", "table_method": "onednn-profile-fit",
           "allocation": "loss_per_ms", "target_tolerance": 0.03, "target_met": met,
           "target_reduction": 0.3, "search_measured_reduction": 0.09 if not met else 0.3,
           "rounds": [{"aimed": 0.3, "predicted": 0.304, "measured": 0.09}],
           "predicted_ms_before": 10.0, "predicted_ms_after": 6.96, "predicted_reduction": 0.304,
           "measured_ms_before": 10.0, "measured_ms_after": 9.1, "measured_reduction": 0.09,
           "table_error": 0.3, "group_time_share_before": {"a": 1.0},
           "group_time_share_after": {"a": 1.0}}
    return {"model_name": "BiSeNetV2", "flops_before": 100.0, "flops_after": 90.0,
            "target_reachable": True, "target_lowered_to": None, "target_met": met,
            "miou_baseline": 0.5, "miou_pruned": 0.4, "miou_retrained": 0.45, "latency": lat}


@pytest.mark.parametrize("met", [False, True])
def test_a_missed_latency_target_is_said_in_the_summary_and_the_report(met, tiny_config,
                                                                       tmp_path, capsys,
                                                                       monkeypatch):
    from paddleseg.slim import pipeline
    from paddleseg.slim.targets.latency import report_lines
    from paddleseg.utils import cli
    report = latency_report(met)
    monkeypatch.setattr(pipeline, "check_options", lambda o: None)
    monkeypatch.setattr(pipeline, "run", lambda o: report)
    monkeypatch.setattr(cli, "set_device", lambda *a: None)
    code, out, err = run_prune(prune_args(tiny_config, tmp_path / "out", "--target", "latency",
                                          "--pruning_ratio", 0.3, "--allow_lower_target"), capsys)
    assert code == 0, err
    final = out.strip().splitlines()[-1]
    md = "\n".join(report_lines(report["latency"]))
    if met:
        assert "NOT MET" not in final and "Target not met" not in md
    else:
        assert ("(TARGET NOT MET: latency cut 0.300 asked, 0.090 measured at best; kept by "
                "--allow_lower_target)") in final, final
        assert "**Target not met**: latency cut 0.300 asked, 0.090 measured" in md, md


def test_a_table_whose_fit_disagrees_with_its_own_measurements_is_refused(toy_table, tmp_path):
    # every value plausible alone (within 10x the full-model time), the whole 4x too slow
    def slower(d):
        d["coef"] = [[v * 4 for v in row] for row in d["coef"]]
        d["rest"][1:] = [v * 4 for v in d["rest"][1:]]
    message = obtain_refused(toy_table, edited_table(toy_table, tmp_path, slower))
    assert "for the unpruned model, measured at" in message and "more than 3x apart" in message, \
        message
