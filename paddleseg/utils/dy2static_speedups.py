"""Five costs of Paddle 2.6's static-program building, paid once instead of again and again.

Every export (``paddle.jit.save``) and every channel analysis (``paddle.jit.to_static``) turns
the model's Python into a static program. In Paddle 2.6 most of that time is bookkeeping that
gives the same answer each time; a profile of this project's test suite put it at about a third
of the suite's time. :func:`install` replaces five pieces with equivalents that remember:

- **Layer forwards are converted once per function, not once per layer instance per trace.**
  ``FunctionCache`` keys its cache weakly by the callable it is given; for a layer that is a bound
  method, made anew at every attribute access, so the entry is dropped as soon as it is stored and
  every sublayer's ``forward`` is parsed, rewritten, written to a temporary file and imported
  again on every trace. The converted function is a plain function of ``self`` (the caller binds
  it), so it is cached under the method's function.
- **The builtin-function check is a set lookup.** ``is_unsupported`` rebuilds a list of every
  callable in the builtin-like modules (thousands) and scans it for each call it converts.
- **The caller of a broadcast tensor operation is found without reading source files.** For an
  operand whose batch is dynamic, Paddle's ``+ - * /`` call ``inspect.stack()`` to name the line in
  a DeprecationWarning; that reads the source context of every frame on the stack. The shim gives
  the same (frame, file, line) of the caller.
- **The parameters a traced program uses are found in one pass over its ops.** The partial
  program keeps the parameters some op reads or writes by scanning every op's argument names
  once per parameter (an HRNet-W18 trace: 1,533 parameters x 1,197 ops).
- **The Python call stack each op records is read without checking every file again.** Every op
  created stores the stack that created it (``op_callstack``: Paddle prints it when the op
  fails, and dy2static maps it back to the model's source). ``traceback.extract_stack`` stats
  every file on the stack again for each op; the stand-in reads the same lines from the line
  cache.

The programs built are the same with and without them (tests/test_dy2static_speedups.py).
One side effect happens less often: each converted function's temporary module starts with
``warnings.filterwarnings('ignore', category=DeprecationWarning)``, so Paddle re-silenced
DeprecationWarnings on every trace. Converted once, it silences them once; the filter stays for
the process as before, but a test runner that resets the filters per test now shows Paddle's
own DeprecationWarnings from later traces.
They apply to Paddle 2.6 only (the version this project pins and checks); on any other version
:func:`install` leaves Paddle as it is.
"""
import contextlib
import inspect
import linecache
import sys
import traceback

import paddle

_saved = {}     # (owner, attribute): Paddle's own value, while ours is in place
_blocked = []   # non-empty inside paddles_own()


def _paddle_2_6():
    return paddle.__version__.split(".")[:2] == ["2", "6"]


def _convert_with_cache(self, func):
    """``FunctionCache.convert_with_cache``, keyed by a bound method's function (see the module
    doc): two instances of a layer class share one converted ``forward``."""
    key = getattr(func, "__func__", func)
    static_func = self._converted_static_func_caches.get(key)
    if static_func is None:
        static_func = self._convert(func)
        self._converted_static_func_caches[key] = static_func
    return static_func


def _set_lookup_is_unsupported(convert_call_func):
    """Paddle 2.6's ``is_unsupported`` with its builtin scan as a set lookup (same answers)."""
    from paddle.nn import Sequential
    known = {}

    def is_unsupported(func):
        # the builtin-like modules can grow (add_ignore_module): rebuild when their list does
        modules = tuple(convert_call_func.BUILTIN_LIKELY_MODULES)
        if known.get("modules") != modules:
            functions = [fn for module in modules
                         for fn in convert_call_func.get_module_functions(module)]
            known.update(modules=modules, functions=functions,   # kept alive: ids stay valid
                         ids={id(fn) for fn in functions})
        if id(func) in known["ids"]:
            return True
        if type(func) is Sequential:   # a Paddle layer whose forward is converted
            return False
        return bool(convert_call_func.is_paddle_func(func))
    return is_unsupported


def _prune_unused_params(self, program):
    """``PartialProgramLayer._prune_unused_params`` with the ops' argument names gathered once:
    the same parameters, in the same order."""
    used = set()
    for block in program.blocks:
        for op in block.ops:
            used.update(op.input_arg_names)
            used.update(op.output_arg_names)
    self._params = [param for param in self._params if param.name in used]


class _CallerOnlyInspect:
    """``inspect`` for Paddle's math_op_patch: ``stack()[1]`` is the caller's (frame, filename,
    lineno), what it reads to name the line of its warning; everything else is ``inspect``'s."""

    def __getattr__(self, name):
        return getattr(inspect, name)

    @staticmethod
    def stack(context=1):
        caller = sys._getframe(2)   # 0: this, 1: the operator's __impl__, 2: the line using it
        here = sys._getframe(1)
        return [(here, here.f_code.co_filename, here.f_lineno),
                (caller, caller.f_code.co_filename, caller.f_lineno)]


class _CachedLinesTraceback:
    """``traceback`` for Paddle's framework module: ``extract_stack()`` gives the same
    (filename, lineno, name, line) of each frame, outermost first, from the line cache without
    ``linecache.checkcache``'s stat of every file on the stack; everything else is
    ``traceback``'s."""

    def __getattr__(self, name):
        return getattr(traceback, name)

    @staticmethod
    def extract_stack(f=None, limit=None):
        if limit is not None:   # Paddle passes none; keep the standard one's handling
            return traceback.extract_stack(f or sys._getframe(1), limit)
        frame = sys._getframe(1) if f is None else f
        frames = []
        while frame is not None:
            code, lineno = frame.f_code, frame.f_lineno
            line = None if lineno is None else \
                linecache.getline(code.co_filename, lineno, frame.f_globals).strip()
            frames.append((code.co_filename, lineno, code.co_name, line))
            frame = frame.f_back
        frames.reverse()
        return frames


def _replacements():
    """(owner, attribute, Paddle 2.6's value there, ours) of each speed-up."""
    from paddle.base import framework
    from paddle.base.layers import math_op_patch
    from paddle.jit.dy2static import convert_call_func, partial_program, program_translator
    ours = [(program_translator.FunctionCache, "convert_with_cache", _convert_with_cache),
            (convert_call_func, "is_unsupported", _set_lookup_is_unsupported(convert_call_func)),
            (math_op_patch, "inspect", _CallerOnlyInspect()),
            (partial_program.PartialProgramLayer, "_prune_unused_params", _prune_unused_params),
            (framework, "traceback", _CachedLinesTraceback())]
    return [(owner, name, getattr(owner, name), value) for owner, name, value in ours]


def install():
    """Put the five speed-ups in place (see the module doc); idempotent. Returns whether they
    are in place (False on a Paddle other than 2.6)."""
    if _saved:
        return True
    if _blocked or not _paddle_2_6():
        return False
    for owner, name, paddles, ours in _replacements():
        _saved[(owner, name)] = paddles
        setattr(owner, name, ours)
    return True


@contextlib.contextmanager
def paddles_own():
    """Paddle's own functions inside the block, whatever calls :func:`install` there (for
    comparing the two); the speed-ups come back with the next install() after it."""
    uninstall()
    _blocked.append(True)
    try:
        yield
    finally:
        _blocked.pop()


def uninstall():
    """Paddle's own functions back."""
    for (owner, name), paddles in _saved.items():
        setattr(owner, name, paddles)
    _saved.clear()
