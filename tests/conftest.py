import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddleseg  # noqa: E402,F401  (import order and log levels first)
import paddle  # noqa: E402
import pytest  # noqa: E402

paddle.set_device("cpu")

SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shared_dataset(name):
    """Path of a development data set beside the project, or skip the test."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.skip(f"{path} is absent (development data, not in a fresh clone)")
    return path


# --- a tiny synthetic optic-disc set and config (test_datasets/test_cli/test_train) ------------
TINY_SIZE = 64

TINY_CONFIG = """\
batch_size: 2
iters: 5

train_dataset:
  type: OpticDiscSeg
  dataset_root: {root}
  transforms:
    - type: Resize
      target_size: [64, 64]
{extra_train}    - type: Normalize
  mode: train

val_dataset:
  type: OpticDiscSeg
  dataset_root: {root}
  transforms:
    - type: Resize
      target_size: [64, 64]
    - type: Normalize
  mode: val

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

model:
  type: {model}
  num_classes: 2
"""


def make_tiny_optic(save_dir, num_train=4, num_val=2, seed=0):
    """Write a synthetic OpticDiscSeg-layout set of TINY_SIZE images; returns its path."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_optic_disc", os.path.join(ROOT, "tools", "make_synthetic_optic_disc.py"))
    syn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(syn)
    return syn.make_dataset(str(save_dir), num_train=num_train, num_val=num_val, size=TINY_SIZE,
                            seed=seed)


def write_tiny_config(path, dataset_root, flip=True, model="BiSeNetV2"):
    """A hand-written PaddleSeg-format config: OpticDiscSeg at 64x64, BiSeNetV2 with 2 classes.

    ``flip=False`` leaves out RandomHorizontalFlip (no randomness in the data)."""
    extra = "    - type: RandomHorizontalFlip\n" if flip else ""
    with open(path, "w") as f:
        f.write(TINY_CONFIG.format(root=dataset_root, extra_train=extra, model=model))
    return str(path)


@pytest.fixture(scope="session")
def tiny_optic_root(tmp_path_factory):
    """A synthetic OpticDiscSeg set (4 train + 2 val, 64x64), shared: do not modify it."""
    return make_tiny_optic(tmp_path_factory.mktemp("tiny_optic") / "optic_disc_seg")


@pytest.fixture(scope="session")
def tiny_config(tiny_optic_root, tmp_path_factory):
    """Path of the tiny config (with RandomHorizontalFlip) over ``tiny_optic_root``."""
    return write_tiny_config(tmp_path_factory.mktemp("tiny_config") / "tiny.yml", tiny_optic_root)


@pytest.fixture(scope="session")
def optic_configs(tiny_optic_root, tmp_path_factory):
    """{model name: config path}: each of the five models (test_prune.MODELS, built as
    test_models.SPECS builds it, with its configs/*_optic_disc loss coefs) at 64x64 over
    ``tiny_optic_root``, 2 iterations. Shared: do not modify."""
    from test_prune import COEFS, MODELS, model_config
    folder = tmp_path_factory.mktemp("optic_configs")
    return {name: write_optic_config(folder / f"{name}.yml", tiny_optic_root, model_config(name),
                                     COEFS[name]) for name in MODELS}


@pytest.fixture(scope="session")
def trained_checkpoint(optic_configs, tmp_path_factory):
    """trained_checkpoint(name): model.pdparams of ``optic_configs[name]``'s model trained 2
    iterations (seed 0), made on first use, once per session. Shared: do not modify."""
    from paddleseg.core.train import train
    from paddleseg.cvlibs import Config
    folder = tmp_path_factory.mktemp("trained")
    cache = {}

    def get(name):
        if name not in cache:
            cfg = Config(optic_configs[name])
            model = cfg.model
            save_dir = str(folder / f"train_{name}")
            train(model, cfg.train_dataset, optimizer=cfg.build_optimizer(model), save_dir=save_dir,
                  iters=2, batch_size=2, save_interval=2, log_iters=1, losses=cfg.loss,
                  keep_checkpoint_max=1, seed=0)
            path = os.path.join(save_dir, "iter_2", "model.pdparams")
            assert os.path.isfile(path)
            cache[name] = path
        return cache[name]
    return get


def write_optic_config(path, root, model, coef, flip=False):
    """A 64x64 OpticDiscSeg config over ``root`` for ``model`` (a type name, or a model block),
    with one CrossEntropyLoss per ``coef`` entry and 2 iterations; returns its path."""
    import yaml

    def dataset(mode):
        transforms = [{"type": "Resize", "target_size": [64, 64]}]
        if flip and mode == "train":
            transforms.append({"type": "RandomHorizontalFlip"})
        return {"type": "OpticDiscSeg", "dataset_root": str(root), "mode": mode,
                "transforms": transforms + [{"type": "Normalize"}]}
    cfg = {"batch_size": 2, "iters": 2,
           "train_dataset": dataset("train"), "val_dataset": dataset("val"),
           "optimizer": {"type": "sgd", "momentum": 0.9, "weight_decay": 4.0e-5},
           "lr_scheduler": {"type": "PolynomialDecay", "learning_rate": 0.01, "end_lr": 0,
                            "power": 0.9},
           "loss": {"types": [{"type": "CrossEntropyLoss"}] * len(coef), "coef": list(coef)},
           "model": {"type": model, "num_classes": 2} if isinstance(model, str) else model}
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return str(path)


def tiny_model(seed):
    """A small real model (Fast-SCNN, 2 classes) in eval mode, for export and deploy tests."""
    from paddleseg.models import FastSCNN
    paddle.seed(seed)
    model = FastSCNN(num_classes=2)
    model.eval()
    return model


def coarse_latency_checks(patch):
    """Time the closing loop's cuts for as few rounds as it allows (``patch``: a pytest
    MonkeyPatch). Tests that run a latency target end to end check what the loop does with its
    measurements, not how precise they are (test_slim_latency's paired-timing tests check that):
    at full precision a 64x64 model's cuts on busy cores take up to 200 rounds each."""
    from paddleseg.slim.latency import measure
    patch.setattr(measure, "CUT_PRECISION", 1.0)
    patch.setattr(measure, "MIN_PAIRED_ROUNDS", 5)


# --- the command lines, run in this process ---------------------------------------------------
# A CLI run as `python script.py` pays Paddle's import (2-3 s) each time. Error paths and most
# end-to-end checks call the script's ``main(argv)`` here instead, through the same
# ``cli.run`` wrapper its ``__main__`` uses (one `error: ...` line, exit 2 or 1, --debug
# re-raising); each CLI keeps one subprocess smoke test of its own.
class CliResult:
    """What ``subprocess.run(..., capture_output=True, text=True)`` gives: returncode, stdout,
    stderr."""

    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def load_script(script):
    """The module of a CLI script (a path relative to the repository root), imported once."""
    import importlib.util
    path = os.path.join(ROOT, script)
    name = "cli_" + os.path.relpath(path, ROOT).replace(os.sep, "_")[:-len(".py")]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


class _Timeout(BaseException):
    pass


# what `python script.py` starts with (Python's defaults, the last applied first), then
# paddleseg.env's filter
PROGRAM_WARNING_FILTERS = [
    ("ignore", ResourceWarning, ""), ("ignore", ImportWarning, ""),
    ("ignore", PendingDeprecationWarning, ""), ("ignore", DeprecationWarning, ""),
    ("ignore", Warning, ".*always track global mean.*"),
]


def _show_on_stderr(message, category, filename, lineno, file=None, line=None):
    import warnings
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_cli(script, *args, env=None, timeout=None):
    """``python script *args`` in this process (cwd ROOT, ``env`` added to the environment):
    its exit code, stdout and stderr as a :class:`CliResult`. An exception that escapes
    ``cli.run`` (with --debug) is printed as the interpreter prints an uncaught one, exit 1.
    Process-wide state the run changes is put back: the working directory, the environment, the
    math threads (``cli.set_device``) and the warning filters. ``timeout``: seconds, after which
    the run is interrupted and the test fails (SIGALRM: main thread only)."""
    import contextlib
    import io
    import signal
    import traceback
    import warnings
    from paddleseg.utils import cli, distributed
    main = load_script(script).main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    cwd, threads = os.getcwd(), distributed._cpu_threads
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    alarm = timeout is not None and hasattr(signal, "SIGALRM")
    code = None
    try:
        os.chdir(ROOT)
        os.environ.update({k: str(v) for k, v in (env or {}).items()})
        if alarm:
            def expire(signum, frame):
                raise _Timeout()
            previous = signal.signal(signal.SIGALRM, expire)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        with warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            # warnings as the program would show them on its stderr: a fresh interpreter's
            # filters and paddleseg.env's, not pytest's (cli.run adds its own on top)
            warnings.resetwarnings()
            for action, category, message in PROGRAM_WARNING_FILTERS:
                warnings.filterwarnings(action, message=message, category=category)
            warnings.showwarning = _show_on_stderr
            try:
                cli.run(main, argv)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, (int, type(None))):
                    print(e.code, file=sys.stderr)
            except _Timeout:
                raise
            except BaseException:
                traceback.print_exc()
                code = 1
    except _Timeout:
        pytest.fail(f"{script} {' '.join(argv)} ran past {timeout} s\nstdout:\n"
                    f"{out.getvalue()[-3000:]}\nstderr:\n{err.getvalue()[-3000:]}")
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        os.chdir(cwd)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if distributed._cpu_threads != threads:
            paddle.base.core.set_num_threads(threads or 1)
            distributed._cpu_threads = threads
    return CliResult(code, out.getvalue(), err.getvalue())
