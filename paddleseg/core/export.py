"""Export a trained (or pruned) model for deployment, and read an export back.

Export writes PaddleSeg's inference layout into one directory, atomically::

    model.pdmodel  model.pdiparams  deploy.yaml

``deploy.yaml`` is PaddleSeg's format (``Deploy: model, params, transforms, input_shape,
output_op, output_dtype``) plus ``model_type`` (the config's model class) and, for a pruned
model, ``pruned: true`` and ``pruning:`` (criterion, ratio, target, FLOPs before/after... as the
pruned checkpoint recorded them), which the benchmark uses to pair a pruned model with its
unpruned baseline. The export is self-describing: nothing is read from files around it.

Reading an export (:func:`load_deploy_config`, :func:`read_model_info`) lives here too, next to
the writer of the same format. Running an export is :mod:`paddleseg.deploy.predictor`; timing
it is :mod:`paddleseg.deploy.benchmark`.
"""
import copy
import os

import yaml

from paddleseg.utils import dy2static_speedups, logger
from paddleseg.utils.errors import UserError
from paddleseg.utils.fileio import atomic_dir, check_replaceable_folder
from paddleseg.utils.structure import pruned_info

OUTPUT_OPS = ("argmax", "softmax", "none")
DEPLOY_FILE = "deploy.yaml"
MODEL_FILE = "model.pdmodel"
PARAMS_FILE = "model.pdiparams"
INPUT_NAME = "x"  # the InputSpec name; PaddleSeg exports use the same, TRT shape info keys on it
# everything an export folder holds (paddle.jit.save adds the .info file): a folder with only
# these is a previous export, which a new one may replace; any other folder is left alone
EXPORT_FILES = (MODEL_FILE, PARAMS_FILE, PARAMS_FILE + ".info", DEPLOY_FILE)
IMAGE_CHANNELS = 3  # every model here takes RGB images


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
def parse_input_shape(shape, what="--input_shape"):
    """``None`` or four positive ints ``N C H W`` -> list of ints; anything else -> UserError."""
    if shape is None:
        return None
    try:
        values = [int(v) for v in shape]
        ok = len(values) == 4 and all(v > 0 for v in values) \
            and all(float(v) == int(float(v)) for v in shape)
    except (TypeError, ValueError):
        ok = False
    shown = " ".join(str(v) for v in shape) if isinstance(shape, (list, tuple)) else repr(shape)
    if not ok:
        raise UserError(f"{what} needs four positive integers N C H W (e.g. 1 3 512 512), got: {shown}")
    if values[1] != IMAGE_CHANNELS:
        raise UserError(f"{what} needs C = {IMAGE_CHANNELS} (the models take RGB images), got: {shown}")
    return values


def check_export_target(save_dir, what="--save_dir"):
    """UserError unless ``save_dir`` is absent, empty or a previous export (which is replaced)."""
    check_replaceable_folder(save_dir, EXPORT_FILES, kind="an export (deploy.yaml and model files)",
                             what=what)


def _export_wrapper(model, output_op):
    import paddle

    class ExportedSegmentationNet(paddle.nn.Layer):
        """The model's first logit map followed by the deploy-time output op."""

        def __init__(self, net, op):
            super().__init__()
            self.net = net
            self.op = op

        def forward(self, x):
            outs = self.net(x)
            logit = outs[0] if isinstance(outs, (list, tuple)) else outs
            if self.op == "argmax":
                return paddle.argmax(logit, axis=1, dtype="int32")  # [N, H, W]
            if self.op == "softmax":
                return paddle.nn.functional.softmax(logit, axis=1)  # [N, C, H, W]
            return logit  # [N, C, H, W] logits

    return ExportedSegmentationNet(model, output_op)


def check_transforms(transforms):
    """Build each ``{type: ...}`` transform once, so a bad deploy.yaml fails at export time."""
    from paddleseg.cvlibs import manager
    from paddleseg.cvlibs.config import build_component
    if not isinstance(transforms, list):
        raise UserError(f"transforms must be a list of {{type: ...}} mappings, got {transforms!r}")
    return [build_component(copy.deepcopy(t), manager.TRANSFORMS) for t in transforms]


def _plain(value):
    """``value`` with numpy scalars and tuples turned into plain YAML types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def export_model(model, save_dir, input_shape=None, output_op="argmax", val_transforms_config=None,
                 model_type=None, extra_deploy_info=None):
    """Save ``model`` as a Paddle inference model plus ``deploy.yaml`` in ``save_dir``.

    Args:
        model (paddle.nn.Layer): a segmentation model whose eval-mode forward returns a list of
            logits; the first is exported.
        save_dir (str): output directory, written under a temporary name and then renamed (an
            existing directory is replaced only once the new one is complete, and only when it is
            empty or a previous export: any other folder raises UserError and is left alone).
        input_shape (list[int] | None): fixed ``[N, C, H, W]``; None exports ``[None, 3, None,
            None]`` (any batch and size).
        output_op (str): ``argmax`` (int32 ``[N, H, W]`` labels), ``softmax`` or ``none``
            (float32 ``[N, C, H, W]`` probabilities / logits).
        val_transforms_config (list[dict] | None): the config's ``val_dataset.transforms``,
            copied into deploy.yaml for the deploy-side preprocessing. None writes an empty list
            (the image then goes in unnormalised) and logs a warning.
        model_type (str | None): stored as ``model_type``; default: the model's class name.
        extra_deploy_info (dict | None): more keys for the ``Deploy`` section.

    Returns:
        str: ``save_dir``.
    """
    import paddle

    if output_op not in OUTPUT_OPS:
        raise UserError(f"output_op must be one of {', '.join(OUTPUT_OPS)}, got {output_op!r}")
    shape = parse_input_shape(input_shape) or [None, IMAGE_CHANNELS, None, None]
    check_export_target(save_dir, what=None)
    if val_transforms_config is None:
        logger.warning("no val transforms given: deploy.yaml gets an empty transforms list")
        transforms = []
    else:
        transforms = copy.deepcopy(list(val_transforms_config))
    check_transforms(transforms)

    deploy = {
        "model": MODEL_FILE,
        "params": PARAMS_FILE,
        "transforms": transforms,
        "input_shape": [-1 if v is None else v for v in shape],  # as PaddleSeg writes it
        "output_op": output_op,
        "output_dtype": "int32" if output_op == "argmax" else "float32",
        "model_type": model_type or type(model).__name__,
    }
    pruning = pruned_info(model)
    deploy["pruned"] = pruning is not None
    if pruning is not None:
        deploy["pruning"] = _plain(pruning)
    deploy.update(extra_deploy_info or {})

    dy2static_speedups.install()
    was_training = model.training
    model.eval()
    try:
        wrapped = _export_wrapper(model, output_op)
        wrapped.eval()
        spec = [paddle.static.InputSpec(shape=list(shape), dtype="float32", name=INPUT_NAME)]
        with atomic_dir(save_dir, own_names=EXPORT_FILES) as tmp:
            paddle.jit.save(wrapped, os.path.join(tmp, os.path.splitext(MODEL_FILE)[0]), input_spec=spec)
            for name in (MODEL_FILE, PARAMS_FILE):
                if not os.path.isfile(os.path.join(tmp, name)):
                    raise RuntimeError(f"paddle.jit.save wrote no {name}")
            with open(os.path.join(tmp, DEPLOY_FILE), "w", encoding="utf-8") as f:
                yaml.safe_dump({"Deploy": deploy}, f, default_flow_style=False, sort_keys=False)
    finally:
        if was_training:
            model.train()
    return save_dir


# --------------------------------------------------------------------------------------------
# reading an export
# --------------------------------------------------------------------------------------------
def deploy_yaml_path(path):
    """``path`` itself when it is a file, else ``path/deploy.yaml``; UserError when missing."""
    if not path:
        raise UserError("no exported model given (a deploy.yaml or the directory holding it)")
    yml = os.path.join(path, DEPLOY_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(yml):
        where = f"{path} has no {DEPLOY_FILE}" if os.path.isdir(path) else f"{DEPLOY_FILE} not found: {path}"
        raise UserError(f"{where} (export the model first with export.py)")
    return yml


def export_folder(path):
    """The folder of an export given as its folder or its deploy.yaml (absolute)."""
    return os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path))


def check_input_shape_fits(deploy, shape):
    """UserError when the export was saved for a fixed input size that ``shape`` (N C H W)
    differs from: its program would be run, or timed, on inputs it was not built for."""
    exported = deploy.get("input_shape")
    if not isinstance(exported, (list, tuple)) or len(exported) != 4:
        return  # not recorded (e.g. an export by other tools): the predictor decides
    fixed = [v if isinstance(v, int) and v > 0 else None for v in exported]
    if any(f is not None and f != int(v) for f, v in zip(fixed, shape)):
        want = " ".join("?" if f is None else str(f) for f in fixed)
        raise UserError(f"{deploy['model_dir']} was exported for input shape {want} (deploy.yaml), "
                        f"not {' '.join(map(str, shape))}; use that shape or export again "
                        f"without --input_shape")


def load_deploy_config(path):
    """The ``Deploy`` section of an export (``path``: deploy.yaml or its directory), with
    ``model_dir``, ``model_path`` and ``params_path`` added as real paths."""
    from paddleseg.cvlibs.config import check_config_size
    yml = deploy_yaml_path(path)
    check_config_size(yml, "deploy config")
    try:
        with open(yml, "r", encoding="utf-8") as f:
            dic = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise UserError(f"malformed YAML in {yml}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{yml} is not a YAML text file (byte {e.object[e.start]:#04x} at offset "
                        f"{e.start} is not UTF-8)") from None
    if not isinstance(dic, dict) or not isinstance(dic.get("Deploy"), dict):
        raise UserError(f"{yml} has no 'Deploy' section (not a PaddleSeg deploy.yaml)")
    deploy = dict(dic["Deploy"])
    model_dir = os.path.dirname(os.path.abspath(yml))
    deploy["model_dir"] = model_dir
    for key, default in (("model", MODEL_FILE), ("params", PARAMS_FILE)):
        full = os.path.join(model_dir, deploy.get(key) or default)
        if not os.path.isfile(full):
            raise UserError(f"{yml} names {key} file {deploy.get(key) or default}, which is missing "
                            f"in {model_dir}")
        deploy[f"{key}_path"] = full
    deploy.setdefault("transforms", [])
    deploy.setdefault("output_op", "argmax")
    return deploy


def read_model_info(model_dir):
    """``{'model_name', 'pruning_ratio', 'pruning'}`` of an export, from its deploy.yaml alone:
    ``model_type`` names it, and a pruned export's ``pruning`` facts give the ratio (None for an
    unpruned model)."""
    deploy = load_deploy_config(model_dir)
    pruning = deploy.get("pruning") if deploy.get("pruned") else None
    pruning = pruning if isinstance(pruning, dict) else ({} if deploy.get("pruned") else None)
    ratio = None if pruning is None else pruning.get("pruning_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        logger.warning(f"{model_dir}: deploy.yaml's pruning_ratio {ratio!r} is not a number; ignored")
        ratio = None
    name = deploy.get("model_type") or os.path.basename(deploy["model_dir"])
    return {"model_name": str(name), "pruning_ratio": None if ratio is None else float(ratio),
            "pruning": pruning}
