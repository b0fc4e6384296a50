"""prune.py --min_coverage: a model too little of which can be pruned fails with one line."""
import pytest

from test_prune import PRUNE, check_failed_cleanly, prune_args, run_script

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


@pytest.fixture
def fast_scnn_config(optic_configs):
    return optic_configs["FastSCNN"]


def test_min_coverage_above_what_the_model_allows_fails_before_pruning(fast_scnn_config,
                                                                       tmp_path):
    # Fast-SCNN: every conv but the classifier is prunable, 99.9% of its conv FLOPs
    save_dir = tmp_path / "out"
    proc = run_script(PRUNE, *prune_args(fast_scnn_config, None, save_dir,
                                         extra=["--min_coverage", "1"]))
    check_failed_cleanly(proc)
    last = proc.stderr.strip().splitlines()[-1]
    assert "can be pruned, below --min_coverage 1" in last, last
    assert "sensitivity: layer" not in proc.stdout + proc.stderr
    assert not save_dir.exists()


def test_min_coverage_out_of_range_is_refused(fast_scnn_config, tmp_path):
    proc = run_script(PRUNE, *prune_args(fast_scnn_config, None, tmp_path / "out",
                                         extra=["--min_coverage", "1.5"]))
    check_failed_cleanly(proc)
    assert "--min_coverage must lie in [0, 1], got 1.5" in proc.stderr
