"""PaddleSeg-format YAML configs: ``_base_`` inheritance, ``--opts`` overrides and the
objects the config describes (model, datasets, transforms, losses, optimizer, schedule)."""
import codecs
import copy
import os

import yaml

from paddleseg.cvlibs import manager
from paddleseg.utils.errors import UserError

# managers searched, in order, when a config dict names a component by ``type``
_MANAGERS = (manager.MODELS, manager.BACKBONES, manager.DATASETS, manager.TRANSFORMS,
             manager.LOSSES)


class ConfigError(UserError):
    """A config file or override the user must fix."""


# the top-level keys PaddleSeg 2.6's Config reads; what lies under them (model, datasets, ...)
# is free-form, handed to the components
KNOWN_KEYS = ("batch_size", "iters", "model", "train_dataset", "val_dataset", "optimizer",
              "lr_scheduler", "learning_rate", "loss", "distill_loss", "export", "test_config",
              "to_static_training")
# the ones among them that hold a mapping
SECTION_KEYS = ("model", "train_dataset", "val_dataset", "optimizer", "lr_scheduler",
                "learning_rate", "loss", "distill_loss", "export", "test_config")


def _yaml_problem(e):
    """A YAML error's reason on one line (the reader's messages span several)."""
    text = getattr(e, "problem", None) or getattr(e, "reason", None) or str(e)
    return " ".join(str(text).split())


# a config is a few kB; reading one of many MB (or a _base_ pointing at a data file) would take
# minutes inside the YAML parser, so larger files are refused before any parsing
MAX_CONFIG_BYTES = 1 << 20


def check_config_size(path, what="config file", base_of=None):
    """ConfigError when ``path`` (the ``_base_`` of file ``base_of``, if given) is larger than
    MAX_CONFIG_BYTES (checked before parsing)."""
    size = os.path.getsize(path)
    if size > MAX_CONFIG_BYTES:
        named = f" (the _base_ of {base_of})" if base_of else ""
        raise ConfigError(f"{what} {path}{named} is {size} bytes; a config must be at most "
                          f"{MAX_CONFIG_BYTES} bytes ({MAX_CONFIG_BYTES >> 20} MiB): is it the "
                          "right file?")


def read_yaml(path, base_of=None):
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a folder; give the .yml file inside it")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    check_config_size(path, base_of=base_of)
    try:
        with codecs.open(path, "r", "utf-8") as f:
            dic = yaml.safe_load(f)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a YAML text file (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start} is not UTF-8)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {_yaml_problem(e)}") from None
    if dic is None:
        return {}
    if not isinstance(dic, dict):
        raise ConfigError(f"{path} must hold a YAML mapping (key: value), got {type(dic).__name__}")
    return dic


def merge_config(base, update):
    """Recursively lay ``update`` over ``base``; a dict with ``_inherited_: False`` replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) \
                and value.get("_inherited_", True):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
        if isinstance(out[key], dict):
            out[key].pop("_inherited_", None)
    return out


def _base_paths(dic, path):
    """The files named by ``dic``'s ``_base_`` (one path or a list), relative to ``path``."""
    base = dic.pop("_base_", None)
    if base is None:
        return []
    bases = base if isinstance(base, list) else [base]
    for b in bases:
        if not isinstance(b, str) or not b:
            raise ConfigError(f"{path}: _base_ must be a file path or a list of them, got {base!r}")
    return [os.path.join(os.path.dirname(path), b) for b in bases]


def load_config_dict(path, _chain=(), _base_of=None):
    """The config at ``path`` with its ``_base_`` chain resolved (paths relative to the file)."""
    here = os.path.realpath(path)
    if here in _chain:  # a file that is its own base, directly or through others
        cycle = [*_chain[_chain.index(here):], here]
        raise ConfigError("_base_ cycle: " + " -> ".join(os.path.relpath(p) for p in cycle))
    dic = read_yaml(path, _base_of)
    merged = {}
    for base_path in _base_paths(dic, path):
        named = os.path.relpath(base_path, os.path.dirname(path))
        if os.path.isdir(base_path):
            raise ConfigError(f"_base_ '{named}' named in {path} is a folder ({base_path}); "
                              "_base_ must name a config file")
        if not os.path.isfile(base_path):
            raise ConfigError(f"_base_ file '{named}' named in {path} not found: {base_path}")
        merged = merge_config(merged, load_config_dict(base_path, (*_chain, here), path))
    return merge_config(merged, dic)


def parse_opts(opts):
    """``['a.b=1', 'c=x']`` -> nested dict, values parsed as YAML scalars/lists.

    The first part of each key must be a top-level key PaddleSeg knows (KNOWN_KEYS), so a
    misspelt override fails instead of being ignored."""
    out = {}
    for item in opts or []:
        key, eq, value = item.partition("=")
        parts = key.split(".")
        if not eq or not all(parts):
            raise ConfigError(f"--opts item '{item}' must look like key.sub=value")
        if parts[0] not in KNOWN_KEYS:
            raise ConfigError(f"--opts item '{item}': unknown top-level key '{parts[0]}' "
                              f"(known: {', '.join(KNOWN_KEYS)})")
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
        node = out
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--opts item '{item}' conflicts with the earlier "
                                  f"'{'.'.join(parts[:depth + 1])}=...'")
        node[parts[-1]] = value
    return out


def _positive_int(value):
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _opts_text(value):
    """An --opts value as the user typed it (YAML's spelling of what it parsed to)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def check_opts_paths(dic, opts):
    """ConfigError for an ``--opts a.b.c=v`` whose ``a.b`` is a plain value in the config
    (``optimizer.momentum.x=1`` when momentum is 0.9): the override would replace the value by
    a mapping, which the component then rejects with a message that names neither."""
    for item in opts or []:
        key = item.partition("=")[0]
        parts = key.split(".")
        node = dic
        for depth, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
            if node is not None and not isinstance(node, dict):
                prefix = ".".join(parts[:depth + 1])
                raise ConfigError(f"--opts {item}: {prefix} is a value ({node!r}), not a mapping, "
                                  f"so it has no '{parts[depth + 1]}'; set it with --opts "
                                  f"{prefix}=VALUE")


def check_top_level(dic, path):
    """``dic`` without empty sections (``val_dataset:`` with nothing under it counts as
    absent); ConfigError when a section is not a mapping; a warning for top-level keys PaddleSeg
    does not read (ignored, as PaddleSeg does)."""
    dic = {k: v for k, v in dic.items() if not (k in SECTION_KEYS and v is None)}
    for key in SECTION_KEYS:
        if key in dic and not isinstance(dic[key], dict):
            raise ConfigError(f"{path}: '{key}' must be a mapping (key: value), got "
                              f"{type(dic[key]).__name__} {dic[key]!r}")
    unknown = [k for k in dic if k not in KNOWN_KEYS]
    if unknown:
        from paddleseg.utils import logger
        logger.warning(f"{path}: ignoring unknown top-level key(s) {', '.join(map(str, unknown))} "
                       f"(known: {', '.join(KNOWN_KEYS)})")
    return dic


def register_builtin_components():
    """Import the packages whose modules register our models, datasets, transforms and losses."""
    import paddleseg.datasets  # noqa: F401
    import paddleseg.models  # noqa: F401
    import paddleseg.transforms  # noqa: F401


# the registry a nested component is looked up in, by the key that holds it; other nested
# components come from their parent's registry
NESTED_REGISTRY = {"backbone": manager.BACKBONES, "transforms": manager.TRANSFORMS,
                   "losses": manager.LOSSES}


def component_class(type_name, registry=None):
    """The class registered as ``type_name`` in ``registry`` (a ComponentManager); without one,
    in any registry (for callers that only read a class attribute)."""
    register_builtin_components()
    registries = (registry,) if registry is not None else _MANAGERS
    for mgr in registries:
        if type_name in mgr:
            return mgr[type_name]
    what = f"{registry.name} type" if registry is not None else "type"
    names = sorted(n for mgr in registries for n in mgr.components_dict)
    raise ConfigError(f"unknown {what} '{type_name}'; registered: {', '.join(names)}")


def build_component(cfg, registry):
    """Instantiate a ``{type: Name, ...}`` dict from ``registry`` (so a transform entry can never
    build a data set), building nested component dicts first."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"expected a mapping with a 'type' key, got {cfg!r}")
    cfg = dict(cfg)
    cls = component_class(cfg.pop("type"), registry)
    kwargs = {}
    for key, value in cfg.items():
        nested = NESTED_REGISTRY.get(key, registry)
        if isinstance(value, dict) and "type" in value:
            value = build_component(value, nested)
        elif isinstance(value, list) and value and all(isinstance(v, dict) and "type" in v for v in value):
            value = [build_component(v, nested) for v in value]
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {cls.__name__}: {e}") from None


class Config:
    """A training configuration in PaddleSeg's format.

    >>> cfg = Config('configs/quick_start/bisenet_optic_disc_512x512_1k.yml')
    >>> model, train_dataset, loss = cfg.model, cfg.train_dataset, cfg.loss
    """

    def __init__(self, path, learning_rate=None, batch_size=None, iters=None, opts=None):
        if not path:
            raise ConfigError("please give a config file (--config)")
        self.path = path
        dic = load_config_dict(path)
        self.opts = parse_opts(opts)
        check_opts_paths(dic, opts)
        dic = check_top_level(merge_config(dic, self.opts), path)
        if learning_rate is not None:
            dic.setdefault("lr_scheduler", {})["learning_rate"] = learning_rate
        if batch_size is not None:
            dic["batch_size"] = batch_size
        if iters is not None:
            dic["iters"] = iters
        self.dic = dic
        self._model = None
        self._datasets = {}
        self._lr_scheduler = None
        self._optimizer = None
        self._check()

    def source(self, key):
        """Where the value at dotted ``key`` came from, for messages: ``--opts key=...`` when an
        override set it, else the config file."""
        node = self.opts
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return self.path
            node = node[part]
        return f"--opts {key}={_opts_text(node)}"

    def _check(self):
        for key in ("model",):
            if key not in self.dic:
                raise ConfigError(f"{self.path}: the config has no '{key}' section")
        if "iters" in self.dic and not _positive_int(self.dic["iters"]):
            raise ConfigError(f"{self.source('iters')}: iters must be a positive integer, got "
                              f"{self.dic['iters']!r}")
        if not _positive_int(self.batch_size):
            raise ConfigError(f"{self.source('batch_size')}: batch_size must be a positive integer, "
                              f"got {self.batch_size!r}")
        lr = (self.dic.get("lr_scheduler") or {}).get("learning_rate")
        if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
            raise ConfigError(f"{self.source('lr_scheduler.learning_rate')}: "
                              f"lr_scheduler.learning_rate must be a positive number, got {lr!r}")

    # -- plain values -------------------------------------------------------------------
    @property
    def batch_size(self):
        return self.dic.get("batch_size", 1)

    @property
    def test_config(self):
        """The evaluation options (PaddleSeg's ``test_config``: aug_eval, is_slide, auc_roc,
        ...), a copy; {} when the config has none."""
        section = self.dic.get("test_config") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{self.source('test_config')}: test_config must be a mapping of "
                              f"evaluation options, got {section!r}")
        return dict(section)

    @property
    def iters(self):
        if "iters" not in self.dic:
            raise ConfigError(f"{self.path}: no 'iters' in the config; add it or pass --iters")
        return self.dic["iters"]

    @property
    def model_config(self):
        return copy.deepcopy(self.dic["model"])

    @property
    def train_dataset_config(self):
        return copy.deepcopy(self.dic.get("train_dataset", {}))

    @property
    def val_dataset_config(self):
        return copy.deepcopy(self.dic.get("val_dataset", {}))

    @property
    def loss_config(self):
        return copy.deepcopy(self.dic.get("loss", {}))

    # -- built objects --------------------------------------------------------------------
    def _dataset(self, key):
        if key not in self._datasets:
            cfg = copy.deepcopy(self.dic.get(key))
            self._datasets[key] = build_component(cfg, manager.DATASETS) if cfg else None
        return self._datasets[key]

    @property
    def train_dataset(self):
        return self._dataset("train_dataset")

    @property
    def val_dataset(self):
        return self._dataset("val_dataset")

    @property
    def num_classes(self):
        """From the model block, else a dataset block's ``num_classes``, else the dataset
        class's ``NUM_CLASSES`` (Cityscapes 19, OpticDiscSeg 2), as PaddleSeg reads it; no
        dataset is opened, so a model builds on a machine without its data."""
        num = self.dic["model"].get("num_classes")
        if num is not None:
            return num
        blocks = [self.dic.get(key) or {} for key in ("train_dataset", "val_dataset")]
        for block in blocks:
            if isinstance(block, dict) and block.get("num_classes") is not None:
                return block["num_classes"]
        for block in blocks:
            if isinstance(block, dict) and "type" in block:
                num = getattr(component_class(block["type"], manager.DATASETS), "NUM_CLASSES", None)
                if num is not None:
                    return num
        raise ConfigError(f"{self.path}: cannot tell num_classes: set model.num_classes (or "
                          f"num_classes in the dataset block)")

    def build_model(self):
        """A fresh model from the config (``model`` is the cached one)."""
        cfg = self.model_config
        cfg.setdefault("num_classes", self.num_classes)
        if not _positive_int(cfg["num_classes"]):
            where = (self.source("model.num_classes") if "num_classes" in self.dic["model"]
                     else self.path)
            raise ConfigError(f"{where}: num_classes must be an integer >= 1 (the classes the "
                              f"model predicts, background included), got {cfg['num_classes']!r}")
        return build_component(cfg, manager.MODELS)

    @property
    def model(self):
        if self._model is None:
            self._model = self.build_model()
        return self._model

    @property
    def loss(self):
        cfg = self.loss_config
        if not cfg:
            raise ConfigError(f"{self.path}: the config has no 'loss' section")
        types = cfg.get("types") or []
        coef = cfg.get("coef") or []
        if len(types) == 1 and len(coef) > 1:  # PaddleSeg: one type serves every coef
            types = types * len(coef)
        if len(types) != len(coef):
            raise ConfigError(f"{self.path}: loss has {len(types)} types but {len(coef)} coef")
        return {"types": [build_component(t, manager.LOSSES) for t in types], "coef": list(coef)}

    @property
    def lr_scheduler(self):
        """The config's learning-rate schedule (one per config, as in PaddleSeg)."""
        if self._lr_scheduler is None:
            self._lr_scheduler = self.build_lr_scheduler()
        return self._lr_scheduler

    @property
    def optimizer(self):
        """The optimizer over ``self.model`` with ``self.lr_scheduler`` (PaddleSeg's API)."""
        if self._optimizer is None:
            self._optimizer = self.build_optimizer(self.model, self.lr_scheduler)
        return self._optimizer

    def build_lr_scheduler(self):
        """A fresh learning-rate schedule from the config."""
        import paddle
        cfg = copy.deepcopy(self.dic.get("lr_scheduler") or {})
        if not cfg:
            raise ConfigError(f"{self.path}: the config has no 'lr_scheduler' section")
        name = cfg.pop("type", "PolynomialDecay")
        warmup_iters = cfg.pop("warmup_iters", 0)
        warmup_start_lr = cfg.pop("warmup_start_lr", 1.0e-6)
        if name == "PolynomialDecay":
            cfg.setdefault("decay_steps", self.iters - warmup_iters)
            cfg.setdefault("end_lr", 0)
            cfg.setdefault("power", 1.0)
        cls = getattr(paddle.optimizer.lr, name, None)
        if cls is None or not isinstance(cls, type):
            raise ConfigError(f"{self.path}: unknown lr_scheduler type '{name}'")
        try:
            sched = cls(**cfg)
        except TypeError as e:
            raise ConfigError(f"{self.path}: cannot build lr_scheduler {name}: {e}") from None
        if warmup_iters > 0:
            sched = paddle.optimizer.lr.LinearWarmup(sched, warmup_iters, warmup_start_lr,
                                                     cfg.get("learning_rate"))
        return sched

    def build_optimizer(self, model, lr=None):
        """A fresh optimizer over ``model``'s parameters (``lr``: a scheduler or float; default
        a fresh schedule from the config)."""
        import paddle
        cfg = copy.deepcopy(self.dic.get("optimizer") or {"type": "sgd"})
        name = str(cfg.pop("type", "sgd")).lower()
        lr = self.build_lr_scheduler() if lr is None else lr
        wd = cfg.pop("weight_decay", None)
        if isinstance(wd, (int, float)):
            wd = paddle.regularizer.L2Decay(float(wd)) if name in ("sgd", "momentum") else float(wd)
        params = model.parameters()
        try:
            if name in ("sgd", "momentum"):
                return paddle.optimizer.Momentum(lr, parameters=params, momentum=cfg.pop("momentum", 0.9),
                                                 weight_decay=wd, **cfg)
            if name == "adam":
                return paddle.optimizer.Adam(lr, parameters=params, weight_decay=wd, **cfg)
            if name == "adamw":
                return paddle.optimizer.AdamW(lr, parameters=params, weight_decay=wd or 0.01, **cfg)
        except TypeError as e:  # e.g. momentum left over from a _base_ sgd optimizer
            raise ConfigError(f"{self.path}: cannot build optimizer {name}: {e}") from None
        raise ConfigError(f"{self.path}: unknown optimizer type '{name}' (use sgd, adam or adamw)")

    def __str__(self):
        return yaml.safe_dump(self.dic, sort_keys=False)
