"""Shared command-line plumbing: one-line errors, --debug, --opts, device selection."""
import argparse
import os
import signal
import sys
import time
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


def printable_streams():
    """Let stdout and stderr print any text: a file name that is not UTF-8 (surrogate escapes)
    prints as ``\\udcNN`` instead of raising UnicodeEncodeError in the middle of a run (our own
    messages show such names as ``\\xNN`` through ``image_io.shown``)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream.errors == "strict":
                stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a reconfigurable text stream
            pass


def run(main, argv=None):
    """Call ``main(argv)``; bad input -> one line on stderr and exit 2, unless --debug."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    printable_streams()
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
        exit_with_error(f"error: {shown(e)}", 2)
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
        exit_with_error(f"error: {shown(message)} (see --help)", 2)


# -- errors under paddle.distributed.launch ---------------------------------------------------------
# Every rank checks its arguments and config before the ranks' collective starts, so bad input
# fails on all of them alike. Left alone, the launcher then sees a rank exit non-zero and
# (Paddle 2.6.2, launch/controllers/controller.py Controller.watch) logs "Container failed !!!"
# with the failed rank's whole environment (launch/job/container.py Container.__str__), prints
# the rank's log a second time, and exits with the first rank's code: -15 & 255 = 241 when
# rank 0 was still running and got the SIGTERM that stops the others. No exit code avoids that
# branch. What does is the launcher's own SIGINT handler (the Ctrl-C path): it stops every rank
# with SIGTERM and exits with the signal's number, 2, printing neither. So before the collective,
# rank 0 prints the line, the first rank on each machine lets the launcher copy that line to its
# console (it copies rank 0's log every ~2 s) and sends it SIGINT, and every rank waits for the
# launcher's SIGTERM and exits 2 quietly.
LAUNCHER_ECHO_S = 4.0  # Controller.watch copies rank 0's output at least every 2-3 s
LAUNCHER_STOP_S = 30.0  # a rank the launcher never stops reports its own error after this


def launcher_pid():
    """The pid of the ``paddle.distributed.launch`` that started this process as a rank (one
    rank of one, too: the launcher dumps the environment all the same), or None (no launcher,
    another launcher, not Linux)."""
    if "PADDLE_TRAINER_ID" not in os.environ:
        return None
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return None
    return ppid if b"paddle.distributed.launch" in argv else None


def collective_started():
    """Whether this rank has joined the job's process group (after that, ranks fail apart)."""
    paddle = sys.modules.get("paddle")
    try:
        return bool(paddle and paddle.distributed.is_initialized())
    except Exception:  # noqa: BLE001  (a half-imported paddle: treat as not started)
        return False


def exit_with_error(line, code):
    """Print ``line`` on stderr and exit ``code``; under paddle.distributed.launch before the
    collective starts, once for the whole job (see the comment above)."""
    from .distributed import local_rank, rank
    launcher = None if collective_started() else launcher_pid()
    if launcher is None:
        print(line, file=sys.stderr, flush=True)
        sys.exit(code)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(code))
    if rank() == 0:
        print(line, file=sys.stderr, flush=True)
    sys.stdout.flush()
    if local_rank() == 0:
        time.sleep(LAUNCHER_ECHO_S)
        os.kill(launcher, signal.SIGINT)
    time.sleep(LAUNCHER_STOP_S)
    if rank() != 0:  # the launcher did not stop us: the error may be this rank's alone
        print(f"{line} [rank {rank()}]", file=sys.stderr, flush=True)
    sys.exit(code)
