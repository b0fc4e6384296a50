"""``--max_miou_drop`` (issue 23): the step search's decisions on accuracies the test controls
(it stops at the right step, refuses a step within noise of the budget, resumes), and prune.py
end to end on the tiny set with a controlled mIoU: the chosen cut, the report, a killed search
resumed to the same result, a budget no step meets, and the refusals."""
import json
import os
import re

import numpy as np
import paddle
import pytest

import paddleseg.slim.budget as budget
import paddleseg.slim.candidates as candidates
from conftest import run_cli, write_optic_config
from paddleseg.cvlibs import Config
from paddleseg.slim import count_flops
from paddleseg.slim.budget import candidate_cuts, search, step_facts
from paddleseg.slim.output.report import budget_lines
from test_prune import PRUNE, failure
from test_prune_steps import weights

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def test_candidate_cuts_step_up_to_the_ceiling():
    assert candidate_cuts(0.5, 0.1) == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert candidate_cuts(0.35, 0.1) == [0.1, 0.2, 0.3, 0.35]
    assert candidate_cuts(0.05, 0.1) == [0.05]
    # the most a target reaches (its aim sits just below it) is never rounded up beyond it
    assert candidate_cuts(0.77095 - 1e-9, 0.4) == [0.4, 0.7709]
    assert candidate_cuts(0.771 - 1e-9, 0.4) == [0.4, 0.7709]


REFERENCE = {"mean": 0.5, "noise_points": 0.2}
MIOUS = {0.1: 0.499, 0.2: 0.497, 0.3: 0.492, 0.4: 0.48, 0.5: 0.47}


def run_search(max_drop, records=None, mious=MIOUS):
    asked, saved = [], []

    def evaluate(k, cut):
        asked.append(cut)
        return {"miou": mious[cut]}
    chosen, out = search(sorted(mious), REFERENCE, evaluate, max_drop, list(records or []),
                         lambda r: saved.append(len(r)))
    return chosen, out, asked, saved


def test_a_step_is_described_by_its_flops_and_measured_latency():
    assert step_facts({"flops_reduction": 0.35}) == "FLOPs -35.0%"
    assert step_facts({"flops_reduction": 0.35, "measured_latency_reduction": 0.2,
                       "speedup": 1.25}) == "FLOPs -35.0%; latency measured -20.0%, 1.25x"
    assert step_facts({}) == "no facts recorded"   # a record of an older run
    line = budget_lines({"max_miou_drop": 1.0, "why": "cut 0.2 chosen", "reference": {
        "iters": 4, "mean": 0.5, "mious": [0.5, 0.5], "noise_points": 0.0}, "steps": [
        {"step": 1, "cut": 0.1, "flops_reduction": 0.12, "measured_latency_reduction": 0.1,
         "speedup": 1.111, "miou": 0.49, "drop_points": 1.0, "accepted": True}]})
    assert "| 1 | 0.1 | 12.0% | 10.0% (1.11x) | 0.4900 | +1.0 | accepted |" in line


def test_the_search_stops_at_the_first_step_over_the_budget():
    chosen, records, asked, saved = run_search(1.0)
    # drops 0.1, 0.3, 0.8 (+0.2 noise = 1.0: within), 2.0: refused, and nothing after it
    assert chosen == 2 and records[chosen]["cut"] == 0.3
    assert asked == [0.1, 0.2, 0.3, 0.4] and saved == [1, 2, 3, 4]
    assert [r["accepted"] for r in records] == [True, True, True, False]
    assert [r["drop_points"] for r in records] == pytest.approx([0.1, 0.3, 0.8, 2.0])


def test_a_step_within_noise_of_the_budget_is_refused():
    chosen, records, _, _ = run_search(0.9)  # 0.8 lost + 0.2 noise > 0.9: not by luck
    assert chosen == 1 and not records[2]["accepted"]


def test_the_search_resumes_after_its_finished_steps():
    _, first, _, _ = run_search(1.0)
    chosen, records, asked, _ = run_search(1.0, records=first[:2])
    assert asked == [0.3, 0.4] and chosen == 2 and records == first


def test_a_budget_no_step_meets_chooses_nothing():
    chosen, records, asked, _ = run_search(0.2)
    assert chosen is None and asked == [0.1] and not records[0]["accepted"]


def run_search_seeded(max_drop, second_mious, records=None, mious=MIOUS):
    """The search with a second seed: ``second_mious`` {cut: the retry's mIoU}; a cut not in
    it scores the same with both seeds."""
    asked, retried = [], []

    def evaluate(k, cut):
        asked.append(cut)
        return {"miou": mious[cut]}

    def second_seed(record):
        retried.append(record["cut"])
        return second_mious.get(record["cut"], mious[record["cut"]])
    chosen, out = search(sorted(mious), REFERENCE, evaluate, max_drop, list(records or []),
                         lambda r: None, second_seed)
    return chosen, out, asked, retried


def test_the_margin_takes_the_larger_noise_and_shrinks_with_seeds():
    # one seed: the reference's noise; two seeds agreeing: sqrt(1/2 + 1/2) / sqrt(3/2) of it
    assert budget.margin(0.2, 1) == pytest.approx(0.2)
    assert budget.margin(0.2, 2, 0.0) == pytest.approx(0.2 * (2 / 3) ** 0.5)
    # two seeds 1.5 points apart: their own noise, not the reference's 0.2, sets the margin
    assert budget.margin(0.2, 2, 1.5) == pytest.approx(((1.5 ** 2 / 2 + 0.2 ** 2 / 2) / 1.5)
                                                       ** 0.5)
    assert budget.seeds_noise([0.48, 0.495]) == pytest.approx(1.5)
    assert budget.seeds_noise([0.48]) is None


def test_an_accepted_step_is_confirmed_by_a_second_seed():
    # every accepted step is retrained with the next seed; cut 0.4 (2.0 lost, beyond the
    # noise of a 1.75 budget) is refused by its first seed, without a retry
    chosen, records, _, retried = run_search_seeded(1.75, {})
    assert chosen == 2 and retried == [0.1, 0.2, 0.3] and records[3]["mious"] == [0.48]
    assert [r["accepted"] for r in records] == [True, True, True, False]
    assert records[2]["noise_points"] == pytest.approx(0.2 * (2 / 3) ** 0.5, abs=1e-4)


def test_a_lucky_first_seed_is_not_accepted():
    # budget 1: cut 0.3's first seed loses 0.8 (+0.2 noise: accepted); its second loses 2.2,
    # so the mean, 1.5, refuses it and cut 0.2 is the answer
    chosen, records, asked, retried = run_search_seeded(1.0, {0.3: 0.478})
    assert chosen == 1 and asked == [0.1, 0.2, 0.3] and retried == [0.1, 0.2, 0.3]
    assert records[2]["drop_points"] == pytest.approx(1.5) and not records[2]["accepted"]
    # cut 0.1's seeds lose 0.1 and 1.3: the mean (0.7) plus the reference's two-seed margin
    # (0.16) would pass, but the seeds' own spread (1.2 points) is the noise: refused
    chosen, records, _, _ = run_search_seeded(1.0, {0.1: 0.487})
    assert chosen is None and records[0]["drop_points"] == pytest.approx(0.7)
    assert records[0]["noise_points"] == pytest.approx(((1.2 ** 2 / 2 + 0.02) / 1.5) ** 0.5,
                                                       abs=1e-4)


def test_a_lucky_first_seed_does_not_cost_the_answer_its_weights(tmp_path):
    """Cut 0.3 accepted by its first seed, refused by its second: cut 0.2's kept model (the
    answer) must still be there, so that it becomes the final model without a retraining."""
    state = budget.BudgetState(str(tmp_path), "key", 1.0)

    def evaluate(k, cut):
        os.makedirs(state.step_folder(k + 1))   # what the search keeps of each step
        open(state.weights(k + 1), "w").close()
        return {"miou": MIOUS[cut]}

    chosen, records = search(sorted(MIOUS), REFERENCE, evaluate, 1.0, [],
                             lambda r: state.save(REFERENCE, r),
                             lambda record: {0.3: 0.478}.get(record["cut"], MIOUS[record["cut"]]))
    assert chosen == 1 and not records[2]["accepted"]
    assert sorted(os.listdir(state.folder)) == ["state.json", "step_2"]
    assert candidates.final_weights(state, records[chosen]["step"], True) == state.weights(2)


def test_a_step_refused_within_the_noise_gets_a_second_seed():
    # budget 2.1: cut 0.4's first seed loses 2.0 (+0.2 noise: refused, but within the noise);
    # its second loses 1.0: the mean, 1.5, plus the margin of two seeds 1 point apart (0.59)
    # is within the budget: accepted, and the search goes on to cut 0.5 (3.0 lost, beyond the
    # noise: refused without a retry)
    chosen, records, asked, retried = run_search_seeded(2.1, {0.4: 0.49})
    assert retried == [0.1, 0.2, 0.3, 0.4] and asked == [0.1, 0.2, 0.3, 0.4, 0.5]
    step = records[3]
    assert chosen == 3 and step["mious"] == [0.48, 0.49] and step["miou"] == pytest.approx(0.485)
    assert step["drop_points"] == pytest.approx(1.5) and step["accepted"]
    assert step["noise_points"] == pytest.approx(((1.0 / 2 + 0.02) / 1.5) ** 0.5, abs=1e-4)
    assert records[4]["mious"] == [0.47] and not records[4]["accepted"]


def test_a_step_whose_one_seed_lost_more_than_the_budget_gets_no_second_seed():
    # budget 1.9: cut 0.4's first seed loses 2.0, within the 0.2 noise of the budget but over
    # it: refused at once, the search stops there
    chosen, records, asked, retried = run_search_seeded(1.9, {0.4: 0.5})
    assert chosen == 2 and retried == [0.1, 0.2, 0.3] and asked == [0.1, 0.2, 0.3, 0.4]
    assert records[3]["mious"] == [0.48] and not records[3]["accepted"]
    # no second seed could have accepted it: the mean plus the two seeds' margin never falls
    # below the first seed's drop, whichever way the second goes
    for second in [0.40 + i / 1000 for i in range(201)]:
        record = {"miou": 0.48, "mious": [0.48, second]}
        budget.judge(record, REFERENCE, 1.9)
        assert not record["accepted"], second
        assert record["drop_points"] + record["noise_points"] >= 2.0 - 1e-9


def test_a_second_seed_that_confirms_the_loss_refuses_the_step():
    chosen, records, _, retried = run_search_seeded(2.1, {0.4: 0.478})
    assert retried == [0.1, 0.2, 0.3, 0.4] and chosen == 2
    assert records[3]["drop_points"] == pytest.approx(2.1) and not records[3]["accepted"]
    assert "mean of 2 seeds" in budget.why_stopped(records, chosen, REFERENCE, 2.1, 5)


def test_a_search_killed_before_its_second_seed_resumes_to_it():
    # killed after step 4's first seed was saved: the resumed run retrains only its second seed
    fresh = run_search_seeded(2.1, {0.4: 0.49})[1]
    first_seed_only = run_search(2.1)[1][3]   # no second seed: step 4 refused after its first
    assert first_seed_only["mious"] == [0.48] and not first_seed_only["accepted"]
    chosen, records, asked, retried = run_search_seeded(2.1, {0.4: 0.49},
                                                        records=fresh[:3] + [first_seed_only])
    assert retried == [0.4] and asked == [0.5] and chosen == 3
    assert records == fresh


def test_an_older_run_s_record_without_seeds_resumes():
    # a state written before steps carried their seeds' mIoUs and noise (and before accepted
    # steps had a second seed): each step its seed cannot decide gets its second on resuming
    killed = run_search(2.1)[1]
    old = [{k: v for k, v in r.items() if k not in ("mious", "noise_points")}
           for r in killed]
    chosen, records, asked, retried = run_search_seeded(2.1, {0.4: 0.49}, records=old)
    assert retried == [0.1, 0.2, 0.3, 0.4] and records[3]["mious"] == [0.48, 0.49]
    assert chosen == 3 and asked == [0.5]


# --- prune.py end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def config(tiny_optic_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("budget")
    cfg = write_optic_config(folder / "fastscnn.yml", tiny_optic_root, "FastSCNN", [1.0, 0.4])
    paddle.seed(0)   # the weights pruned: every fine-tuning of the search starts from them
    weights_file = str(folder / "model.pdparams")
    paddle.save(Config(cfg).model.state_dict(), weights_file)
    return cfg, str(folder / "sensitivity.json"), weights_file


def argv(config, save_dir, max_drop, *extra):
    cfg, sen_file, weights_file = config
    return ["--config", cfg, "--model_path", weights_file, "--pruning_ratio", "0.4",
            "--retraining_iters", "4",
            "--save_dir", save_dir, "--sen_ratios", "0.3", "0.6", "--sen_eval_num", "1",
            "--sen_evaluator", "dygraph", "--sen_file", sen_file, "--seed", "0",
            "--max_miou_drop", str(max_drop), "--budget_step", "0.2", *extra]


@pytest.fixture
def controlled_miou(monkeypatch):
    return control_miou(monkeypatch)


def control_miou(monkeypatch):
    """The search's mIoU made 0.5 minus 5 points per 10% of FLOPs cut (at the 64x64 input):
    cut 0.2 loses 1 point, cut 0.4 two. Returns the list of FLOPs cuts it was asked about."""
    asked, full = [], {}

    def fake(model, dataset, max_images=None):
        flops = count_flops(model, (1, 3, 64, 64))
        full.setdefault("flops", flops)  # the first model evaluated is an unpruned reference
        cut = 1 - flops / full["flops"]
        asked.append(round(cut, 2))
        return 0.5 - 0.05 * cut
    monkeypatch.setattr(candidates, "miou", fake)
    return asked


@pytest.fixture(scope="module")
def budget_run(config, tmp_path_factory):
    """(process, output folder) of one search with the controlled mIoU, a 1.5-point budget and
    steps 0.2 and 0.4: the tests below read it, none changes it."""
    out = tmp_path_factory.mktemp("budget_run") / "out"
    with pytest.MonkeyPatch.context() as monkeypatch:
        control_miou(monkeypatch)
        proc = run_cli(PRUNE, *argv(config, out, 1.5))
    assert proc.returncode == 0, failure(proc)
    return proc, out


def test_the_budget_search_keeps_the_last_step_within_the_budget(budget_run):
    proc, out = budget_run
    log = proc.stdout + proc.stderr
    assert "budget search: at most 2 steps (0.2, 0.4)" in log
    assert "the chosen step's model is the final one; budget 1.5" in log   # the time up front
    assert "budget search: step 2 of 2: cut 0.4" in log and "ETA" in log
    report = json.loads((out / "report.json").read_text())
    b = report["budget"]
    assert b["chosen_cut"] == 0.2 and b["reference"]["noise_points"] == 0.0
    assert [s["accepted"] for s in b["steps"]] == [True, False]
    assert [s["drop_points"] for s in b["steps"]] == pytest.approx([1.0, 2.0], abs=0.2)
    # the accepted step was confirmed by a second seed; the refused one (beyond the noise) not
    assert "two where the first is accepted or refused for its noise alone" in log
    assert "step 1 was accepted by one seed: the same plan is retrained" in log
    assert [len(s["mious"]) for s in b["steps"]] == [2, 1]
    for step in b["steps"]:   # the log says a loss as one (a gain would read "above")
        assert f"{step['drop_points']:.1f} points below the reference" in log
    assert "the next, 0.4, was refused" in b["why"]
    assert abs(report["flops_reduction"] - 0.2) <= 0.03   # the chosen step's model, retrained
    assert "| 2 | 0.4 |" in (out / "report.md").read_text()
    # each step's model: its FLOPs cut, in report.json and the log (the FLOPs target times none)
    assert [s["flops_reduction"] for s in b["steps"]] == pytest.approx([0.2, 0.4], abs=0.03)
    assert "measured_latency_reduction" not in b["steps"][0]
    assert re.search(r"step 1 of 2: cut 0\.2 \(FLOPs -\d+\.\d%\)", log)
    # the chosen step was retrained as the final model would be: its model is the final one
    assert "the budget search's chosen step was this retraining" in log
    assert b["final_model"].startswith("the chosen step's retrained model")
    assert "The final model: the chosen step's retrained model" in (
        out / "report.md").read_text()
    assert not (out / "budget_search").exists()
    assert sorted(os.listdir(out)) == [
        "export", "model.pdparams", "report.json", "report.md", "sensitivity.png"]


def test_prune_py_retrains_a_step_refused_within_the_noise_with_the_next_seed(
        config, tmp_path, monkeypatch):
    # the reference's two seeds score 0.50 and 0.49 (noise 1 point); each step's first
    # retraining scores 1.5 points below the reference mean, its second 0.5 above it at cut 0.2
    # and again 1.5 below at 0.4. Budget 2: both refused by their first seed within the noise;
    # with the second, 0.2 is accepted (0.5 + 0.82 noise) and 0.4 refused (1.5 + 0.82)
    calls = {}

    def fake(model, dataset, max_images=None):
        flops = count_flops(model, (1, 3, 64, 64))
        calls.setdefault("full", flops)
        cut = round(1 - flops / calls["full"], 1)
        calls[cut] = calls.get(cut, 0) + 1
        if cut == 0:
            return 0.50 if calls[cut] == 1 else 0.49
        return 0.480 if cut > 0.3 or calls[cut] == 1 else 0.500
    monkeypatch.setattr(candidates, "miou", fake)
    out = tmp_path / "out"
    proc = run_cli(PRUNE, *argv(config, out, 2.0))
    assert proc.returncode == 0, failure(proc)
    log = proc.stdout + proc.stderr
    assert log.count("refused for its noise alone: the same plan is retrained") == 2
    b = json.loads((out / "report.json").read_text())["budget"]
    assert b["reference"]["noise_points"] == pytest.approx(1.0)
    assert [s["mious"] for s in b["steps"]] == [pytest.approx([0.48, 0.50]),
                                                pytest.approx([0.48, 0.48])]
    assert [s["accepted"] for s in b["steps"]] == [True, False] and b["chosen_cut"] == 0.2
    assert "mean of 2 seeds" in b["why"]
    assert "0.4900 (mean of 2 seeds)" in (out / "report.md").read_text()
    # the final model is the step's first seed's (the one a final retraining repeats)
    assert b["final_model"].startswith("the chosen step's retrained model")


def test_the_chosen_step_s_model_is_what_the_final_retraining_makes(config, tmp_path,
                                                                   budget_run):
    # the reuse is exact: the budget run's final weights are those of a run that prunes the
    # chosen cut (0.2) without the search and retrains it in full
    budget_out, plain_out = budget_run[1], tmp_path / "plain"
    plain = [a for a in argv(config, plain_out, 1.5)[:-4]] + ["--pruning_ratio", "0.2"]
    proc = run_cli(PRUNE, *plain)
    assert proc.returncode == 0, failure(proc)
    ours, theirs = weights(budget_out), weights(plain_out)
    assert ours.keys() == theirs.keys()
    for name in ours:   # the structure record differs: it names each run's --pruning_ratio
        if name != "__pruned_structure__":
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_a_ceiling_beyond_what_pruning_reaches_caps_the_search(config, tmp_path,
                                                                controlled_miou):
    # --pruning_ratio is only the search's ceiling: 0.95 of the FLOPs cannot go with ratios up
    # to 0.6, so the search runs up to the most the grid reaches instead of failing
    proc = run_cli(PRUNE, *argv(config, tmp_path / "out", 50, "--pruning_ratio", "0.95",
                                "--budget_iters", "2"))
    assert proc.returncode == 0, failure(proc)
    log = proc.stdout + proc.stderr
    assert "budget search: the ceiling 0.95 is beyond what pruning can reach" in log
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    # a shorter search retraining is not the final one: the run retrains the chosen cut in full
    assert "chosen step was this retraining" not in log
    assert "then the final retraining (4 iterations)" in log
    assert report["budget"]["final_model"] == "the chosen cut retrained 4 iterations"
    cuts = [s["cut"] for s in report["budget"]["steps"]]
    assert cuts[:2] == [0.2, 0.4] and 0.4 < cuts[-1] < 0.95
    assert report["budget"]["chosen_cut"] == cuts[-1]   # all within a 50-point budget


def test_a_killed_search_resumes_after_its_last_step(config, tmp_path, budget_run,
                                                      controlled_miou, monkeypatch):
    straight = budget_run[1]
    real = candidates.miou

    def killed_at_step_2(model, dataset, max_images=None):
        if len(controlled_miou) == 4:  # two references and step 1's two seeds done
            raise KeyboardInterrupt()
        return real(model, dataset, max_images)
    controlled_miou.clear()
    monkeypatch.setattr(candidates, "miou", killed_at_step_2)
    out = tmp_path / "resumed"
    assert run_cli(PRUNE, *argv(config, out, 1.5)).returncode != 0
    assert (out / "budget_search" / "state.json").is_file()

    monkeypatch.setattr(candidates, "miou", real)
    controlled_miou.clear()
    proc = run_cli(PRUNE, *argv(config, out, 1.5))
    assert proc.returncode == 0, failure(proc)
    assert "resuming after step 1" in proc.stdout + proc.stderr
    assert controlled_miou == [0.4]   # step 2 alone: no reference, no step 1 again
    a = json.loads((straight / "report.json").read_text())["budget"]
    b = json.loads((out / "report.json").read_text())["budget"]
    assert a == b
    # step 1's model, kept by the killed run, is the resumed run's final model
    ours, theirs = weights(straight), weights(out)
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_a_budget_no_step_meets_is_one_line_and_no_output(config, tmp_path, controlled_miou):
    proc = run_cli(PRUNE, *argv(config, tmp_path / "out", 0.5))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --max_miou_drop 0.5: the smallest cut, 0.2, is refused")
    assert "the unpruned model stays the answer" in lines[-1]
    assert not (tmp_path / "out" / "report.json").exists()


BAD = {
    "zero": (["--max_miou_drop", "0"], "error: --max_miou_drop must be > 0 (mIoU points), got 0.0"),
    "step alone": (["--budget_step", "0.2"], "error: --budget_step and --budget_iters need "
                                             "--max_miou_drop"),
    "step range": (["--max_miou_drop", "1", "--budget_step", "1.5"],
                   "error: --budget_step must lie in (0, 1), got 1.5"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_budget_flags_are_one_line(case, config, tmp_path):
    extra, line = BAD[case]
    cfg = config[0]
    proc = run_cli(PRUNE, "--config", cfg, "--pruning_ratio", "0.4", "--retraining_iters", "2",
                   "--save_dir", tmp_path / "out", *extra)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [line], proc.stderr


def test_the_latency_target_s_allocation_and_closing_loop_survive_a_json_round_trip():
    from test_slim_latency import search_setup
    search, sens = search_setup(factor=0.8)
    alloc = search.search(None, sens, 0.3)
    state = json.loads(json.dumps(search.snapshot(alloc)))
    other, _ = search_setup(factor=0.8)
    restored = other.restore(state)
    assert restored == alloc and other.chosen == alloc
    assert other.rounds == search.rounds and other.verdict == search.verdict
