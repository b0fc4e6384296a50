"""paddleseg.utils.dy2static_speedups: Paddle 2.6's dy2static with its repeated bookkeeping done
once gives the same programs, the same answers and the same warning, and converts each layer
forward once however many instances and traces there are."""
import contextlib
import warnings

import paddle
import pytest

from paddleseg.slim.graph import trace_program
from paddleseg.utils import dy2static_speedups
from test_models import build

pytestmark = pytest.mark.filterwarnings("ignore:When training, we now always track")


def op_list(ops):
    return [(op.type, sorted((k, repr(v)) for k, v in op.attrs.items())) for op in ops]


def test_the_traced_program_is_the_same_with_and_without():
    from paddle.jit.dy2static import program_translator
    paddle.seed(0)
    model = build("BiSeNetV2", 2)
    with dy2static_speedups.paddles_own():
        plain = trace_program(model, (1, 3, 64, 64))   # its install() does nothing here
        assert program_translator.FunctionCache.convert_with_cache.__module__ == \
            program_translator.__name__
    faster = trace_program(model, (1, 3, 64, 64))
    assert program_translator.FunctionCache.convert_with_cache.__module__ == \
        dy2static_speedups.__name__
    assert op_list(faster[0]) == op_list(plain[0]) and len(plain[0]) > 100
    assert faster[1] == plain[1]   # every variable's shape, by name


def test_each_layer_forward_is_converted_once_across_instances_and_traces(monkeypatch):
    from paddle.jit.dy2static import program_translator
    assert dy2static_speedups.install()
    converted = []
    real_convert = program_translator.FunctionCache._convert

    def counted(self, func):
        converted.append(getattr(func, "__func__", func))
        return real_convert(self, func)
    monkeypatch.setattr(program_translator.FunctionCache, "_convert", counted)
    # nothing converted yet, whatever ran before in this process
    import weakref
    monkeypatch.setattr(program_translator._FUNCTION_CACHE, "_converted_static_func_caches",
                        weakref.WeakKeyDictionary())
    for seed in (0, 1):   # two instances, each traced twice
        paddle.seed(seed)
        model = build("FastSCNN", 2)
        for _ in range(2):
            trace_program(model, (1, 3, 64, 64))
    assert len(converted) > 10, converted   # FastSCNN's layer forwards
    assert len(converted) == len(set(converted)), "a forward was converted twice"


def test_the_builtin_check_answers_as_paddle_s():
    import math

    import numpy as np
    from paddle.jit.dy2static import convert_call_func

    def user_function(x):
        return x
    samples = [len, math.sqrt, np.mean, paddle.concat, paddle.nn.functional.relu, user_function,
               paddle.nn.Sequential(paddle.nn.ReLU()), paddle.nn.Conv2D(1, 1, 1), print]
    with dy2static_speedups.paddles_own():
        paddles = [convert_call_func.is_unsupported(f) for f in samples]
    assert dy2static_speedups.install()
    assert [convert_call_func.is_unsupported(f) for f in samples] == paddles
    assert paddles[:3] == [True] * 3 and paddles[5] is False   # not all one answer


def broadcast_warning():
    """The DeprecationWarning Paddle gives for ``x * y`` with a dynamic batch in a static program,
    and the line of the expression."""
    import inspect
    main, startup = paddle.static.Program(), paddle.static.Program()
    paddle.enable_static()
    try:
        with paddle.static.program_guard(main, startup), warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            x = paddle.static.data("x", [-1, 3], "float32")
            y = paddle.static.data("y", [-1, 3], "float32")
            line = inspect.currentframe().f_lineno + 1
            x * y
    finally:
        paddle.disable_static()
    messages = [str(w.message) for w in seen if issubclass(w.category, DeprecationWarning)]
    return messages, line


def test_the_broadcast_warning_names_the_same_line():
    with dy2static_speedups.paddles_own():
        plain, line = broadcast_warning()
    assert dy2static_speedups.install()
    faster, _ = broadcast_warning()
    assert faster == plain and faster[0].startswith(f"{__file__}:{line}\n"), faster


def test_another_paddle_is_left_as_it_is(monkeypatch):
    from paddle.jit.dy2static import convert_call_func
    dy2static_speedups.uninstall()
    own = convert_call_func.is_unsupported
    monkeypatch.setattr(paddle, "__version__", "3.0.0")
    assert dy2static_speedups.install() is False
    assert convert_call_func.is_unsupported is own


def test_an_export_saves_the_same_parameters_with_and_without(tmp_path):
    from paddleseg.core.export import PARAMS_FILE, export_model
    paddle.seed(0)
    model = build("FastSCNN", 2)
    with dy2static_speedups.paddles_own():
        export_model(model, str(tmp_path / "plain"), val_transforms_config=[])
    export_model(model, str(tmp_path / "faster"), val_transforms_config=[])
    plain = (tmp_path / "plain" / PARAMS_FILE).read_bytes()
    assert (tmp_path / "faster" / PARAMS_FILE).read_bytes() == plain and len(plain) > 1e6


def op_callstacks():
    """The call stack each op of a small static program recorded as it was created."""
    main, startup = paddle.static.Program(), paddle.static.Program()
    paddle.enable_static()
    try:
        with paddle.static.program_guard(main, startup):
            x = paddle.static.data("x", [-1, 3], "float32")
            paddle.nn.functional.relu(x * 2.0)
    finally:
        paddle.disable_static()
    return [op.attr("op_callstack") for op in main.global_block().ops]


def test_each_op_records_the_same_call_stack():
    stacks = []
    for paddles in (True, False):   # one call site for both, so the stacks can be equal
        with dy2static_speedups.paddles_own() if paddles else contextlib.nullcontext():
            assert dy2static_speedups.install() is not paddles
            stacks.append(op_callstacks())
    assert stacks[1] == stacks[0] and len(stacks[0]) == 2
    assert any(__file__ in line and "relu" in text
               for line, text in zip(stacks[0][1][::2], stacks[0][1][1::2]))
