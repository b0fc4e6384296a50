"""PaddleSeg-format configs: _base_ inheritance, --opts, overrides, built objects, errors."""
import os
import textwrap

import paddle
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components)
import paddleseg.models  # noqa: F401
from paddleseg.cvlibs.config import Config, ConfigError, load_config_dict, merge_config, parse_opts
from paddleseg.models.losses import CrossEntropyLoss, DiceLoss
from paddleseg.utils import UserError


def write(path, text):
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(textwrap.dedent(text))
    return str(path)


BASE = """\
batch_size: 4
iters: 100
model:
  type: BiSeNetV2
  num_classes: 19
  align_corners: False
  pretrained: null
train_dataset:
  type: Dataset
  dataset_root: data/x
  num_classes: 19
  mode: train
  transforms:
    - type: Resize
      target_size: [512, 512]
    - type: RandomHorizontalFlip
    - type: Normalize
optimizer:
  type: sgd
  momentum: 0.9
  weight_decay: 4.0e-5
lr_scheduler:
  type: PolynomialDecay
  learning_rate: 0.01
  end_lr: 0
  power: 0.9
loss:
  types:
    - type: CrossEntropyLoss
  coef: [1, 1, 1, 1, 1]
"""


@pytest.fixture
def base_cfg(tmp_path):
    return write(tmp_path / "_base_" / "base.yml", BASE)


# -- _base_ inheritance ------------------------------------------------------------------------

def test_base_nested_dicts_merge_and_lists_replace(tmp_path, base_cfg):
    child = write(tmp_path / "sub" / "child.yml", """\
        _base_: ../_base_/base.yml
        batch_size: 8
        model:
          num_classes: 2
        train_dataset:
          transforms:
            - type: Normalize
        """)
    dic = load_config_dict(child)
    assert "_base_" not in dic
    assert dic["batch_size"] == 8 and dic["iters"] == 100
    # nested dict merged key by key
    assert dic["model"] == {"type": "BiSeNetV2", "num_classes": 2, "align_corners": False,
                            "pretrained": None}
    assert dic["train_dataset"]["dataset_root"] == "data/x"
    # a list is replaced whole, not merged element-wise
    assert dic["train_dataset"]["transforms"] == [{"type": "Normalize"}]
    assert dic["optimizer"]["momentum"] == 0.9


def test_inherited_false_replaces_the_base_dict(tmp_path, base_cfg):
    child = write(tmp_path / "child.yml", """\
        _base_: _base_/base.yml
        optimizer:
          _inherited_: False
          type: adam
        """)
    dic = load_config_dict(child)
    assert dic["optimizer"] == {"type": "adam"}  # no momentum/weight_decay from the base
    assert "_inherited_" not in str(dic)


def test_base_chain_and_list_of_bases(tmp_path, base_cfg):
    write(tmp_path / "_base_" / "mid.yml", """\
        _base_: base.yml
        iters: 200
        model:
          num_classes: 3
        """)
    write(tmp_path / "_base_" / "extra.yml", """\
        iters: 300
        val_dataset:
          type: Dataset
        """)
    child = write(tmp_path / "child.yml", """\
        _base_: [_base_/mid.yml, _base_/extra.yml]
        model:
          align_corners: True
        """)
    dic = load_config_dict(child)
    assert dic["iters"] == 300  # later base wins
    assert dic["model"]["num_classes"] == 3  # from the middle of the chain
    assert dic["model"]["align_corners"] is True  # the child wins
    assert dic["model"]["type"] == "BiSeNetV2"  # from the root of the chain
    assert dic["val_dataset"] == {"type": "Dataset"}
    assert dic["lr_scheduler"]["learning_rate"] == 0.01


def test_merge_config_does_not_modify_its_inputs():
    base = {"a": {"b": 1, "c": [1, 2]}}
    update = {"a": {"b": 2}}
    out = merge_config(base, update)
    assert out == {"a": {"b": 2, "c": [1, 2]}}
    assert base == {"a": {"b": 1, "c": [1, 2]}} and update == {"a": {"b": 2}}
    out["a"]["c"].append(3)
    assert base["a"]["c"] == [1, 2]


# -- overrides ---------------------------------------------------------------------------------

def test_opts_nested_keys_and_yaml_typed_values(base_cfg):
    cfg = Config(base_cfg, opts=[
        "model.num_classes=3",
        "lr_scheduler.learning_rate=0.5",
        "model.align_corners=true",
        "model.pretrained=null",
        "train_dataset.dataset_root=some/where",
        "train_dataset.transforms=[{type: Resize, target_size: [32, 32]}]",
        "model.deep.key=[1, 2]",
        "optimizer.type=adam",
    ])
    d = cfg.dic
    assert d["model"]["num_classes"] == 3 and isinstance(d["model"]["num_classes"], int)
    assert d["lr_scheduler"]["learning_rate"] == 0.5 and isinstance(d["lr_scheduler"]["learning_rate"], float)
    assert d["model"]["align_corners"] is True
    assert d["model"]["pretrained"] is None
    assert d["model"]["type"] == "BiSeNetV2"  # siblings kept
    assert d["train_dataset"]["dataset_root"] == "some/where"
    assert d["train_dataset"]["transforms"] == [{"type": "Resize", "target_size": [32, 32]}]
    assert d["model"]["deep"] == {"key": [1, 2]}  # nested keys are free-form
    assert d["optimizer"] == {"type": "adam", "momentum": 0.9, "weight_decay": 4.0e-5}


def test_parse_opts_value_with_equals_sign_and_bad_item():
    assert parse_opts(["model.b=x=y"]) == {"model": {"b": "x=y"}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_opts(["no_equals_sign"])


def test_learning_rate_batch_size_iters_overrides(base_cfg):
    cfg = Config(base_cfg, learning_rate=0.25, batch_size=8, iters=20,
                 opts=["lr_scheduler.learning_rate=0.5", "iters=7"])
    # the explicit flags win over --opts, like PaddleSeg's
    assert cfg.dic["lr_scheduler"]["learning_rate"] == 0.25
    assert cfg.batch_size == 8 and cfg.iters == 20
    sched = cfg.build_lr_scheduler()
    assert sched.base_lr == pytest.approx(0.25)
    assert sched.decay_steps == 20


def test_iters_and_batch_size_are_checked(base_cfg):
    with pytest.raises(ConfigError, match="iters must be a positive integer"):
        Config(base_cfg, iters=0)
    with pytest.raises(ConfigError, match="batch_size must be a positive integer"):
        Config(base_cfg, opts=["batch_size=two"])


# -- built objects -----------------------------------------------------------------------------

def test_one_loss_type_serves_every_coef(base_cfg):
    loss = Config(base_cfg).loss
    assert len(loss["types"]) == 5 and loss["coef"] == [1, 1, 1, 1, 1]
    assert all(isinstance(t, CrossEntropyLoss) for t in loss["types"])


def test_several_loss_types_and_mismatch(tmp_path, base_cfg):
    cfg = Config(base_cfg, opts=["loss.types=[{type: CrossEntropyLoss}, {type: DiceLoss}]",
                                 "loss.coef=[1, 0.4]"])
    loss = cfg.loss
    assert isinstance(loss["types"][0], CrossEntropyLoss) and isinstance(loss["types"][1], DiceLoss)
    assert loss["coef"] == [1, 0.4]
    bad = Config(base_cfg, opts=["loss.types=[{type: CrossEntropyLoss}, {type: DiceLoss}]",
                                 "loss.coef=[1, 1, 1]"])
    with pytest.raises(ConfigError, match="2 types but 3 coef"):
        bad.loss


def test_optimizer_momentum_with_l2decay_and_polynomial_decay(base_cfg):
    cfg = Config(base_cfg, iters=40)
    layer = paddle.nn.Conv2D(3, 2, 1)
    opt = cfg.build_optimizer(layer)
    assert isinstance(opt, paddle.optimizer.Momentum)
    assert opt._momentum == pytest.approx(0.9)
    assert opt._regularization_method == "l2_decay"
    assert opt._regularization_coeff == pytest.approx(4.0e-5)
    sched = opt._learning_rate
    assert isinstance(sched, paddle.optimizer.lr.PolynomialDecay)
    assert sched.decay_steps == 40  # = iters
    assert sched.end_lr == 0 and sched.power == pytest.approx(0.9)
    assert opt.get_lr() == pytest.approx(0.01)
    for _ in range(20):
        sched.step()
    assert opt.get_lr() == pytest.approx(0.01 * 0.5 ** 0.9)  # half way: (1 - 20/40)^0.9
    for _ in range(20):
        sched.step()
    assert opt.get_lr() == pytest.approx(0.0)


def test_warmup_wraps_the_decay(base_cfg):
    cfg = Config(base_cfg, iters=50, opts=["lr_scheduler.warmup_iters=10",
                                           "lr_scheduler.warmup_start_lr=0.001"])
    sched = cfg.build_lr_scheduler()
    assert isinstance(sched, paddle.optimizer.lr.LinearWarmup)
    assert sched() == pytest.approx(0.001)
    assert sched.learning_rate.decay_steps == 40  # iters - warmup_iters


def test_adam_and_unknown_optimizer(base_cfg):
    layer = paddle.nn.Conv2D(3, 2, 1)
    opt = Config(base_cfg, opts=["optimizer={type: adam, _inherited_: false}"]).build_optimizer(layer)
    assert isinstance(opt, paddle.optimizer.Adam)
    # merged over the base's sgd settings, adam gets a momentum it does not take
    with pytest.raises(ConfigError, match="cannot build optimizer adam.*momentum"):
        Config(base_cfg, opts=["optimizer.type=adam"]).build_optimizer(layer)
    with pytest.raises(ConfigError, match="unknown optimizer type 'rmsnope'"):
        Config(base_cfg, opts=["optimizer={type: rmsnope}"]).build_optimizer(layer)


def test_model_built_with_num_classes(base_cfg):
    cfg = Config(base_cfg, opts=["model.num_classes=2"])
    model = cfg.model
    assert type(model).__name__ == "BiSeNetV2"
    assert cfg.model is model  # cached
    assert cfg.build_model() is not model
    model.eval()
    with paddle.no_grad():
        out = model(paddle.rand([1, 3, 64, 64]))
    assert out[0].shape == [1, 2, 64, 64]


# -- errors ------------------------------------------------------------------------------------

def test_config_error_is_a_user_error():
    assert issubclass(ConfigError, UserError)


def test_missing_file(tmp_path):
    missing = str(tmp_path / "nope.yml")
    with pytest.raises(ConfigError, match="config file not found") as info:
        Config(missing)
    assert missing in str(info.value)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path / "bad.yml", """\
        batch_size: 2
        iters: 5
        model:
          type: [BiSeNetV2
          num_classes: 2
        """)
    with pytest.raises(ConfigError) as info:
        Config(path)
    msg = str(info.value)
    assert "malformed YAML" in msg and path in msg
    assert "line " in msg
    line = int(msg.split("line ")[1].split(",")[0])
    assert 4 <= line <= 6  # where the bracket opens or where the parser gives up


def test_non_mapping_yaml(tmp_path):
    path = write(tmp_path / "list.yml", "- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        Config(path)


def test_unknown_type_lists_registered_names(base_cfg):
    cfg = Config(base_cfg, opts=["model.type=NoSuchNet"])
    with pytest.raises(ConfigError) as info:
        cfg.model
    msg = str(info.value)
    assert "unknown models type 'NoSuchNet'" in msg
    for name in ("BiSeNetV2", "UNet", "FCN", "FastSCNN", "HarDNet"):
        assert name in msg
    for name in ("OpticDiscSeg", "Resize", "CrossEntropyLoss"):  # other registries' names
        assert name not in msg


def test_bad_component_argument(base_cfg):
    cfg = Config(base_cfg, opts=["model.no_such_arg=1"])
    with pytest.raises(ConfigError, match="cannot build BiSeNetV2"):
        cfg.model


def test_missing_base(tmp_path):
    child = write(tmp_path / "child.yml", """\
        _base_: ../missing_base.yml
        model:
          type: BiSeNetV2
        """)
    with pytest.raises(ConfigError) as info:
        Config(child)
    msg = str(info.value)
    assert "_base_" in msg and "missing_base.yml" in msg and child in msg


def test_missing_model_section_and_missing_iters(tmp_path):
    with pytest.raises(ConfigError, match="no 'model' section"):
        Config(write(tmp_path / "a.yml", "batch_size: 2\n"))
    cfg = Config(write(tmp_path / "b.yml", "model: {type: BiSeNetV2}\n"))
    with pytest.raises(ConfigError, match="no 'iters'"):
        cfg.iters
    with pytest.raises(ConfigError, match="no 'loss' section"):
        cfg.loss
    with pytest.raises(ConfigError, match="please give a config"):
        Config(None)


# -- bad config files and overrides: one ConfigError line each (issue 9) ------------------------

def one_line_config_error(*args, **kwargs):
    with pytest.raises(ConfigError) as info:
        Config(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def test_base_cycle_is_named(tmp_path, base_cfg):
    write(tmp_path / "a.yml", "_base_: b.yml\niters: 3\n")
    write(tmp_path / "b.yml", f"_base_: [{base_cfg}, a.yml]\n")
    msg = one_line_config_error(str(tmp_path / "a.yml"))
    assert msg.startswith("_base_ cycle: ") and msg.count("a.yml") == 2 and "b.yml" in msg
    write(tmp_path / "self.yml", "_base_: ./self.yml\n")
    assert "_base_ cycle" in one_line_config_error(str(tmp_path / "self.yml"))


def test_a_base_used_twice_is_no_cycle(tmp_path, base_cfg):
    write(tmp_path / "c.yml", f"_base_: {base_cfg}\niters: 3\n")
    cfg = Config(write(tmp_path / "d.yml", f"_base_: [{base_cfg}, c.yml]\n"))
    assert cfg.dic["iters"] == 3 and cfg.batch_size == 4


@pytest.mark.parametrize("value", ["5", "[a.yml, 7]", "''", "{x: 1}"])
def test_base_must_name_files(tmp_path, value):
    path = write(tmp_path / "c.yml", f"_base_: {value}\nmodel: {{type: BiSeNetV2}}\n")
    assert "_base_ must be a file path" in one_line_config_error(path)


def test_binary_config_file(tmp_path):
    path = tmp_path / "model.pdparams"
    path.write_bytes(b"\x80\x04\x95\xff\x00binary")
    msg = one_line_config_error(str(path))
    assert "is not a YAML text file" in msg and str(path) in msg
    path.write_bytes(b"model: {type: BiSeNetV2}\x00\n")  # valid UTF-8, but no YAML character
    msg = one_line_config_error(str(path))
    assert "malformed YAML" in msg and str(path) in msg


@pytest.mark.parametrize("text", ["model: 5\n", "model: [BiSeNetV2]\n",
                                  "model: {type: BiSeNetV2}\nval_dataset: resize\n"])
def test_sections_must_be_mappings(tmp_path, text):
    msg = one_line_config_error(write(tmp_path / "c.yml", text))
    assert "must be a mapping" in msg


def test_empty_section_counts_as_absent(tmp_path):
    cfg = Config(write(tmp_path / "c.yml", "model: {type: BiSeNetV2}\nval_dataset:\n"))
    assert cfg.val_dataset_config == {} and cfg.val_dataset is None


@pytest.mark.parametrize("item,needle", [
    ("=3", "must look like key.sub=value"),
    ("model..type=UNet", "must look like key.sub=value"),
    ("iter=3", "unknown top-level key 'iter'"),  # misspelt iters: used to be ignored
    ("train_datset.dataset_root=x", "unknown top-level key 'train_datset'"),
    ("_base_=other.yml", "unknown top-level key '_base_'"),
])
def test_opts_keys_paddleseg_does_not_know_are_refused(base_cfg, item, needle):
    msg = one_line_config_error(base_cfg, opts=[item])
    assert needle in msg and item in msg


def test_opts_that_contradict_each_other(base_cfg):
    msg = one_line_config_error(base_cfg, opts=["model=UNet", "model.num_classes=2"])
    assert "conflicts with the earlier 'model=...'" in msg


def test_unknown_top_level_key_in_a_file_is_named(tmp_path, base_cfg, capsys):
    cfg = Config(write(tmp_path / "c.yml", f"_base_: {base_cfg}\niter: 3\n"))
    assert cfg.iters == 100
    assert "ignoring unknown top-level key(s) iter" in capsys.readouterr().out


@pytest.mark.parametrize("lr", [0, -0.01, "fast", ".nan"])
def test_learning_rate_must_be_positive(base_cfg, lr):
    msg = one_line_config_error(base_cfg, opts=[f"lr_scheduler.learning_rate={lr}"])
    assert "learning_rate must be a positive number" in msg
    assert "learning_rate must be a positive" in one_line_config_error(base_cfg, learning_rate=-1.0)


def test_components_come_from_the_expected_registry(tmp_path):
    """A transform entry naming a data set (or a dataset block naming a transform) is refused:
    each block is looked up in its own registry only."""
    from paddleseg.cvlibs.config import ConfigError
    path = tmp_path / "c.yml"
    path.write_text("model: {type: UNet, num_classes: 2}\n"
                    "train_dataset:\n  type: OpticDiscSeg\n  dataset_root: x\n  mode: train\n"
                    "  transforms: [{type: OpticDiscSeg, dataset_root: x}]\n"
                    "val_dataset: {type: Normalize}\n")
    cfg = Config(str(path))
    with pytest.raises(ConfigError, match="unknown transforms type 'OpticDiscSeg'"):
        cfg.train_dataset
    with pytest.raises(ConfigError, match="unknown datasets type 'Normalize'"):
        cfg.val_dataset
    with pytest.raises(ConfigError, match="unknown models type"):
        Config(str(path), opts=["model.type=CrossEntropyLoss"]).model
