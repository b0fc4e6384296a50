"""Shared command-line plumbing: one-line errors, --debug, --opts, device selection."""
import argparse
import os
import sys
import warnings

from .errors import UserError
from .image_io import shown


def add_common_args(parser):
    parser.add_argument("--opts", nargs="+", default=None, metavar="KEY=VALUE",
                        help="override config entries, e.g. --opts train_dataset.dataset_root=data/x")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    return parser


def set_device(name, cpu_threads=None):
    """Select the device; on CPU also the math threads (default: every core of the machine,
    shared between the ranks a launcher started on it; Paddle alone would use one)."""
    import paddle
    if name == "gpu" and not paddle.is_compiled_with_cuda():
        raise UserError("--device gpu asked, but this Paddle build has no CUDA; "
                        "install paddlepaddle-gpu==2.6.2 or use --device cpu")
    if name == "gpu":  # one card per rank, as paddle.distributed.launch assigns them
        from .distributed import world_size
        name = f"gpu:{paddle.distributed.ParallelEnv().device_id}" if world_size() > 1 else name
    paddle.set_device(name)
    if name == "cpu":
        from .distributed import set_cpu_threads
        set_cpu_threads(cpu_threads)


def quiet_library_deprecations():
    """Paddle 2.6 and its dependencies emit DeprecationWarnings on every run that a user of our
    command lines cannot act on. Silenced here, in the CLIs' process only: importing
    ``paddleseg`` as a library leaves the caller's warning filters alone."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def run(main, argv=None):
    """Call ``main(argv)``; bad input -> one line on stderr and exit 2, unless --debug."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        quiet_library_deprecations()
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except UserError as e:
        if debug:
            raise
        print(f"error: {shown(e)}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # an unexpected failure still gets one line first
        if debug:
            raise
        msg = str(e).strip().splitlines()
        print(f"error: {type(e).__name__}: {shown(msg[-1]) if msg else ''} (run with --debug for "
              "the traceback)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code or 0)


def existing_file(path, what):
    if not path or not os.path.exists(path):
        raise UserError(f"{what} not found: {path}")
    return path


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line through UserError-style exit 2."""

    def error(self, message):
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
