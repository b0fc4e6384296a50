"""tools/demo_summary.py: the README's quick-start paragraph from a make demo run's outputs
(tools/demo.sh's stage record, the best model's info, prune.py's report, benchmark.json, the
data set), written into the README's generated block; a run that did not finish, or a file
without the block, is one error line."""
import json
import os
import subprocess

import cv2
import numpy as np
import pytest

from conftest import ROOT, load_script, run_cli

DEMO = "tools/demo_summary.py"


def test_demo_sh_records_the_commit_the_machine_and_every_stage(tmp_path):
    """With a stand-in interpreter every step succeeds at once: the record is what is checked."""
    out = tmp_path / "demo"
    proc = subprocess.run(["bash", "tools/demo.sh", "true", str(out)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = (out / "demo_stages.tsv").read_text().splitlines()
    keys = [line.split("\t")[0] for line in lines]
    assert keys == ["commit", "date", "cores", "cpu", "load", "stage train", "stage evaluate",
                    "stage prune", "stage export", "stage latency", "stage done"]
    facts = dict(line.split("\t") for line in lines)
    assert int(facts["cores"]) >= 1 and facts["commit"] != ""
    starts = [int(facts[k]) for k in keys[5:]]
    assert starts == sorted(starts)


def demo_folder(tmp_path, data_root, stages=(0, 200, 205, 240, 250, 262)):
    """A finished demo's outputs as tools/demo.sh, train.py, prune.py and benchmark.py write
    them (figures chosen by the test)."""
    demo = tmp_path / "demo"
    (demo / "train" / "best_model").mkdir(parents=True)
    (demo / "train" / "iter_300").mkdir()
    (demo / "train" / "iter_200").mkdir()
    (demo / "pruned").mkdir()
    names = ("train", "evaluate", "prune", "export", "latency", "done")
    (demo / "demo_stages.tsv").write_text(
        "commit\tabc1234\ndate\t2026-12-07\ncores\t2\ncpu\tAMD EPYC\nload\t0.05\n" +
        "".join(f"stage {n}\t{1000 + s}\n" for n, s in zip(names, stages)))
    (demo / "train" / "best_model" / "model_info.json").write_text(
        json.dumps({"mIoU": 0.9161, "iter": 300}))
    (demo / "pruned" / "report.json").write_text(json.dumps({
        "pruning_ratio": 0.3, "flops_before": 500_000_000, "flops_after": 349_000_000,
        "params_before": 2_530_000, "params_after": 1_150_000, "input_shape": [1, 3, 128, 128],
        "miou_baseline": 0.916, "miou_pruned": 0.614, "miou_retrained": 0.874,
        "retraining_iters": 60, "seconds": {"sensitivity analysis": 12.4}}))
    settings = {"input_shape": [1, 3, 512, 1024], "warmup": 3, "repeats": 10, "device": "cpu",
                "cpu_threads": 2, "enable_mkldnn": True}
    (demo / "benchmark.json").write_text(json.dumps({"settings": settings, "results": [
        {"model_dir": "unpruned_export", "pruning_ratio": None, "median_ms": 124.1},
        {"model_dir": "pruned/export", "pruning_ratio": 0.3, "median_ms": 100.6}]}))
    return demo


def test_the_paragraph_says_what_the_run_gave(tiny_optic_root, tmp_path):
    demo = demo_folder(tmp_path, tiny_optic_root)
    text = load_script(DEMO).summary(str(demo), str(tiny_optic_root))
    labels = [cv2.imread(os.path.join(tiny_optic_root, line.split()[1]), cv2.IMREAD_UNCHANGED)
              for line in open(os.path.join(tiny_optic_root, "val_list.txt"))]
    background = np.mean(np.concatenate([label.ravel() for label in labels]) == 0) / 2
    for part in ["commit abc1234 (2026-12-07)", "2-core CPU machine (AMD EPYC, load average 0.05",
                 "the synthetic set (4 train / 2 val images at", "resized to 128x128",
                 "4 min 22 s for the five stages", "Training 300 iterations took 3 min 20 s",
                 "best val mIoU 0.916 at iteration 300",
                 f"predicting background everywhere scores {background:.2f}",
                 "Pruning 30% of the FLOPs (0.500 -> 0.349 GFLOPs at 128x128, 2.53M -> 1.15M "
                 "params; sensitivity analysis 12 s) dropped mIoU to 0.614",
                 "60 retraining iterations brought it back to 0.874 (-4.2 points",
                 "Latency at 1x3x512x1024 (Paddle Inference, oneDNN, 2 threads, 10 runs, "
                 "median): 124.1 ms -> 100.6 ms, 1.23x."]:
        assert part in text, (part, text)


def test_update_rewrites_only_the_block(tiny_optic_root, tmp_path):
    demo = demo_folder(tmp_path, tiny_optic_root)
    tool = load_script(DEMO)
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{tool.BEGIN}\nold figures\n{tool.END}\n\nthe rest\n")
    proc = run_cli(DEMO, demo, "--data", tiny_optic_root, "--update", readme)
    assert proc.returncode == 0, proc.stderr
    text = readme.read_text()
    assert "old figures" not in text and text.startswith("# title\n\n")
    assert text.endswith(f"{tool.END}\n\nthe rest\n")
    assert proc.stdout.splitlines()[0] in text


def test_the_repository_readme_has_the_block():
    tool = load_script(DEMO)
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert text.count(tool.BEGIN) == 1 and text.count(tool.END) == 1


@pytest.mark.parametrize("case", ["unfinished", "no report", "no block"])
def test_what_is_missing_is_one_line(case, tiny_optic_root, tmp_path):
    demo = demo_folder(tmp_path, tiny_optic_root)
    readme = tmp_path / "README.md"
    readme.write_text("no block here\n")
    if case == "unfinished":
        lines = (demo / "demo_stages.tsv").read_text().splitlines()
        (demo / "demo_stages.tsv").write_text("\n".join(lines[:-2]) + "\n")
        expected = "the demo did not finish (no start of latency, done)"
    elif case == "no report":
        os.remove(demo / "pruned" / "report.json")
        expected = "run make demo DEMO_DIR=<this folder> to the end first"
    else:
        expected = "has no generated demo block"
    proc = run_cli(DEMO, demo, "--data", tiny_optic_root, "--update", readme)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert readme.read_text() == "no block here\n"
