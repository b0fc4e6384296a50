"""Every flag of PaddleSeg release/2.6's train.py, val.py, predict.py and export.py is accepted by
ours: a command copied from PaddleSeg's docs parses (what it asks for is done, or reported)."""
import pytest

from conftest import load_script

# one command per script using each of release/2.6's flags (read from its argparse definitions)
PADDLESEG_COMMANDS = {
    "train.py": ["--config", "c.yml", "--iters", "10", "--batch_size", "2", "--learning_rate",
                 "0.01", "--save_interval", "5", "--resume_model", "out/iter_5", "--save_dir",
                 "out", "--keep_checkpoint_max", "3", "--num_workers", "0", "--do_eval",
                 "--log_iters", "5", "--use_vdl", "--seed", "0", "--precision", "fp16",
                 "--amp_level", "O2", "--data_format", "NCHW", "--profiler_options",
                 "batch_range=[10,20]", "--device", "cpu"],
    "val.py": ["--config", "c.yml", "--model_path", "m.pdparams", "--num_workers", "0",
               "--aug_eval", "--scales", "0.75", "1.0", "--flip_horizontal", "--flip_vertical",
               "--is_slide", "--crop_size", "512", "512", "--stride", "256", "256",
               "--data_format", "NCHW", "--auc_roc", "True", "--device", "cpu"],
    "predict.py": ["--config", "c.yml", "--model_path", "m.pdparams", "--image_path", "img",
                   "--save_dir", "out", "--aug_pred", "--scales", "0.75", "1.0",
                   "--flip_horizontal", "--flip_vertical", "--is_slide", "--crop_size", "512",
                   "512", "--stride", "256", "256", "--custom_color", "0", "0", "0", "--device",
                   "cpu"],
    "export.py": ["--config", "c.yml", "--model_path", "m.pdparams", "--save_dir", "out",
                  "--input_shape", "1", "3", "512", "512", "--without_argmax", "--with_softmax"],
}


@pytest.mark.parametrize("script", sorted(PADDLESEG_COMMANDS))
def test_a_paddleseg_2_6_command_parses(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # save_dir checks look at the working folder
    args = load_script(script).parse_args(PADDLESEG_COMMANDS[script])
    assert args.config == "c.yml"


def test_what_the_flags_ask_for_reaches_the_code():
    train = load_script("train.py").parse_args(PADDLESEG_COMMANDS["train.py"])
    assert (train.precision, train.amp_level) == ("fp16", "O2")
    val = load_script("val.py").parse_args(PADDLESEG_COMMANDS["val.py"])
    assert val.auc_roc is True and val.scales == [0.75, 1.0] and val.crop_size == [512, 512]
    export = load_script("export.py").parse_args(PADDLESEG_COMMANDS["export.py"])
    assert export.output_op == "softmax"
