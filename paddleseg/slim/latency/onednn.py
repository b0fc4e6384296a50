"""Per-primitive execution times of a Paddle Inference CPU predictor, from oneDNN's own timer.

oneDNN (``libdnnl.so.3`` in Paddle's wheel) can log every primitive it executes with the time
the execution took (its "verbose" mode). We switch that on around a few predictor runs through
oneDNN's C API (``dnnl_set_verbose``, on the very library instance Paddle loaded), send the
process's stdout (where oneDNN prints) to a file meanwhile, and parse the ``exec`` lines.

This times every layer *inside* the real, optimised program: the fused kernels Paddle's passes
chose, the memory layouts between them, the cache state a real run sees. Timing layers one by
one in tiny exported models would instead add copies and layout reorders of whole feature maps
(hundreds of MB at 512x1024) that dwarf a 1x1 or depthwise conv.
"""
import contextlib
import ctypes
import os
import re
import sys
import tempfile
from dataclasses import dataclass

CONV_KINDS = ("convolution", "deconvolution")
_MARK = "@@paddleseg-latency-run@@"
_TOKEN = re.compile(r"([a-z]+)(\d+)")


@dataclass
class Primitive:
    """One executed oneDNN primitive: kind (convolution, binary, ...), problem text, ms."""
    kind: str
    problem: str
    ms: float

    def conv_shape(self):
        """(mb, groups, ic, oc, ih, iw, oh, ow, kh, kw, sh, sw) of a (de)convolution."""
        return parse_conv_problem(self.problem)


def parse_conv_problem(text):
    """The sizes in oneDNN's problem text, e.g. ``mb1_g64ic64oc64_ih128oh128kh3sh1dh0ph1_iw256
    ow256kw3sw1dw0pw1``; missing width terms default to the height ones (oneDNN's shorthand)."""
    v = {k: int(n) for k, n in _TOKEN.findall(text)}
    if "ic" not in v or "oc" not in v or "ih" not in v:
        return None
    ih = v["ih"]
    oh = v.get("oh", ih)
    kh, sh = v.get("kh", 1), v.get("sh", 1)
    return (v.get("mb", 1), v.get("g", 1), v["ic"], v["oc"], ih, v.get("iw", ih), oh,
            v.get("ow", oh), kh, v.get("kw", kh), sh, v.get("sw", sh))


def parse_runs(text):
    """[[Primitive, ...] per run] from a verbose log whose runs are separated by marks."""
    runs, current = [], None
    for line in text.splitlines():
        if line.startswith(_MARK):
            current = []
            runs.append(current)
            continue
        parts = line.split(",")
        if current is None or len(parts) < 5 or parts[1] != "exec" or "verbose" not in parts[0]:
            continue
        try:
            ms = float(parts[-1])
        except ValueError:
            continue
        current.append(Primitive(parts[3], parts[-2], ms))
    return runs


def _library():
    import paddle
    path = os.path.join(os.path.dirname(paddle.__file__), "libs", "libdnnl.so.3")
    if not os.path.isfile(path):
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.dnnl_set_verbose.argtypes = [ctypes.c_int]
        return lib
    except (OSError, AttributeError):
        return None


def available():
    """Whether this Paddle build's oneDNN can report primitive times."""
    return _library() is not None


@contextlib.contextmanager
def _stdout_to(path):
    """Point file descriptor 1 (C's stdout, where oneDNN prints) at ``path`` meanwhile."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    with open(path, "w") as f:
        os.dup2(f.fileno(), 1)
    try:
        yield lambda: libc.fflush(None)
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def profile_runs(run, runs):
    """Call ``run()`` ``runs`` times with oneDNN's verbose timer on; returns the primitives
    of each run (a list per run), or None where this Paddle has no oneDNN to ask."""
    lib = _library()
    if lib is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "onednn.log")
        with _stdout_to(log) as flush:
            try:
                lib.dnnl_set_verbose(1)
                for _ in range(int(runs)):
                    flush()
                    os.write(1, (_MARK + "\n").encode())
                    run()
                flush()
            finally:
                lib.dnnl_set_verbose(0)
        with open(log, encoding="utf-8", errors="replace") as f:
            return parse_runs(f.read())
