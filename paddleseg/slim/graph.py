"""Trace a dygraph model into a static op list, and tie static names back to dygraph layers.

The channel analysis needs the data flow between layers, which only a static Program shows
(functional ops such as ``x + y`` and ``paddle.concat`` have no hooks). We build the Program
with ``paddle.jit.to_static`` (AST mode) on a throw-away wrapper, so the model itself is left
untouched, and we run one eval-mode forward with hooks to record what every conv computes
(its spatial sizes, for FLOPs).

A model is traced in eval mode and, when a train-mode forward calls layers the eval forward
does not, in train mode too: training-only branches (auxiliary heads) read feature maps that
pruning shrinks, so their convs must be in the analysis as consumers. The two traces share
parameters, which the analysis uses to tie them together. dy2static rebinds every sublayer's
``forward`` while it converts; that is undone afterwards, so the model stays a plain dygraph
model (``paddle.jit.save`` on it keeps working).
"""
import contextlib
from dataclasses import dataclass, field

import numpy as np
import paddle
import paddle.nn as nn

# The analysis reads Paddle 2.6's old-IR (ProgramDesc) op names and attributes ("conv2d",
# "Filter", "padding_algorithm", ...); the version check is shared with the structure replay.
from ..utils import dy2static_speedups
from ..utils.structure import SUPPORTED_PADDLE, UnsupportedPaddle, check_paddle_version  # noqa: F401

_SKIP_ATTRS = {"op_callstack", "op_namescope", "op_role", "op_role_var", "op_device",
               "with_quant_attr", "sub_block", "skip_eager_deletion_vars"}

CONV_TYPES = (nn.Conv2D, nn.Conv2DTranspose)
LINEAR_TYPES = (nn.Linear,)
STATEFUL_TYPES = (nn.layer.norm._BatchNormBase, nn.BatchNorm, nn.Dropout, nn.Dropout2D,
                  nn.Dropout3D, nn.AlphaDropout)


@dataclass
class OpInfo:
    """One static op: type, slot -> var names, and its plain attributes."""
    type: str
    inputs: dict
    outputs: dict
    attrs: dict

    def input(self, slot):
        return self.inputs.get(slot, [])

    def output(self, slot):
        return self.outputs.get(slot, [])

    def attr(self, name, default=None):
        return self.attrs.get(name, default)


@dataclass
class LayerCall:
    """One call of a conv/linear layer in the eval forward: tensor shapes in and out."""
    in_shape: tuple
    out_shape: tuple


@dataclass
class TracedModel:
    ops: list                      # OpInfo, in execution order (all traces, one after another)
    shapes: dict                   # var name -> static shape (tuple)
    params: dict                   # static parameter/buffer name -> (layer path, attribute name)
    layers: dict                   # layer path -> layer object ("" is the model)
    inputs: list                   # feed var names
    outputs: list                  # fetch var names
    calls: dict = field(default_factory=dict)   # layer path -> [LayerCall] (eval forward)
    input_shape: tuple = ()
    modes: tuple = ()              # the forward modes actually traced

    def layer_of(self, var_name):
        ref = self.params.get(var_name)
        return (ref[0], self.layers[ref[0]]) if ref else (None, None)


class _Wrapper(nn.Layer):
    """A throw-away parent for tracing: to_static replaces the traced layer's ``forward``.

    All outputs are kept (not just the first logit): every one of them is a model output whose
    channels (num_classes) must stay.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def param_map(model):
    """Static name of every parameter and buffer -> (dygraph layer path, attribute name)."""
    out = {}
    for path, layer in model.named_sublayers(include_self=True):
        for attr, p in list(layer._parameters.items()) + list(layer._buffers.items()):
            if p is not None and p.name not in out:
                out[p.name] = (path, attr)
    return out


@contextlib.contextmanager
def training_mode(model, training):
    """Set train/eval on the whole model, restoring every sublayer's own flag afterwards."""
    saved = [(layer, layer.training) for _, layer in model.named_sublayers(include_self=True)]
    model.train() if training else model.eval()
    try:
        yield model
    finally:
        for layer, flag in saved:
            layer.training = flag


@contextlib.contextmanager
def forwards_kept(model):
    """Undo what dy2static does to sublayers: it rebinds each ``forward`` to converted code."""
    saved = []
    for _, layer in model.named_sublayers(include_self=True):
        saved.append((layer, layer.__dict__.get("forward"), "forward" in layer.__dict__,
                      dict(layer._original_funcs)))
    try:
        yield
    finally:
        for layer, forward, had, originals in saved:
            if had:
                layer.__dict__["forward"] = forward
            else:
                layer.__dict__.pop("forward", None)
            layer._original_funcs.clear()
            layer._original_funcs.update(originals)


def _flatten(obj):
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _flatten(o)]
    if isinstance(obj, dict):
        return [v for o in obj.values() for v in _flatten(o)]
    return [obj]


def _op_attrs(op):
    attrs = {}
    for name in op.attr_names:
        if name in _SKIP_ATTRS:
            continue
        try:
            attrs[name] = op.attr(name)
        except Exception:  # block attributes and other non-plain values
            continue
    return attrs


def trace_program(model, input_shape, training=False, prefix=""):
    """Build the static Program of ``model`` for one input of ``input_shape``.

    Returns (ops, shapes, inputs, outputs) with every non-parameter var name prefixed by
    ``prefix`` so that several traces can live side by side.
    """
    dy2static_speedups.install()
    params = param_map(model)
    wrapper = _Wrapper(model)
    spec = [paddle.static.InputSpec(list(input_shape), "float32", name="x")]
    with training_mode(model, training), forwards_kept(model):
        static = paddle.jit.to_static(wrapper, input_spec=spec, full_graph=True)
        try:
            program = static.forward.concrete_program
        except Exception as e:
            mode = "train" if training else "eval"
            raise RuntimeError(
                f"cannot trace {type(model).__name__} in {mode} mode with paddle.jit.to_static "
                f"(needed for the channel analysis; paddle.jit.save would fail too): {e}") from e
    main = program.main_program

    def rename(name):
        return name if name in params else prefix + name

    ops, shapes = [], {}
    for block in main.blocks:
        for name, var in block.vars.items():
            try:
                shapes[rename(name)] = tuple(var.shape)
            except Exception:
                pass
        for op in block.ops:
            ops.append(OpInfo(
                type=op.type,
                inputs={s: [rename(n) for n in op.input(s)] for s in op.input_names},
                outputs={s: [rename(n) for n in op.output(s)] for s in op.output_names},
                attrs=_op_attrs(op)))
    inputs = [rename(v.name) for v in _flatten(program.inputs) if hasattr(v, "name")
              and not isinstance(v, nn.Layer)]
    outputs = [rename(v.name) for v in _flatten(program.outputs) if hasattr(v, "name")]
    return ops, shapes, inputs, outputs


def _frozen_statistics(model):
    """Put BatchNorm and Dropout layers in eval mode (inside a train-mode forward)."""
    for _, layer in model.named_sublayers(include_self=True):
        if isinstance(layer, STATEFUL_TYPES):
            layer.training = False


def record_calls(model, input_shape, layer_types=CONV_TYPES + LINEAR_TYPES, training=False):
    """Run one forward on zeros and record the in/out shapes of each layer call.

    ``training=True`` runs the training branches (auxiliary heads) but keeps batch-norm
    statistics and dropout as in eval mode, so the model's state is not changed.
    """
    calls = {}
    handles = []
    for path, layer in model.named_sublayers():
        if isinstance(layer, layer_types):
            def hook(layer, inputs, output, path=path):
                calls.setdefault(path, []).append(
                    LayerCall(tuple(inputs[0].shape), tuple(output.shape)))
            handles.append(layer.register_forward_post_hook(hook))
    try:
        with training_mode(model, training), paddle.no_grad():
            if training:
                _frozen_statistics(model)
            model(paddle.zeros(list(input_shape), dtype="float32"))
    finally:
        for h in handles:
            h.remove()
    return calls


def trace(model, input_shape=(1, 3, 64, 64), modes=("eval", "train")):
    """Trace ``model`` in the given modes and record its eval-mode layer calls.

    A train-mode trace is skipped when a train-mode forward calls no conv or linear layer
    that the eval forward does not (no training-only branch): tracing is the slow part.
    """
    check_paddle_version()
    input_shape = tuple(int(v) for v in input_shape)
    calls = record_calls(model, input_shape)
    if "train" in modes and "eval" in modes:
        train_calls = record_calls(model, input_shape, training=True)
        if set(train_calls) <= set(calls):
            modes = [m for m in modes if m != "train"]
    all_ops, all_shapes, inputs, outputs = [], {}, [], []
    for i, mode in enumerate(modes):
        ops, shapes, ins, outs = trace_program(model, input_shape, training=(mode == "train"),
                                               prefix=f"{mode}{i}/")
        all_ops += ops
        all_shapes.update(shapes)
        inputs += ins
        outputs += outs
    return TracedModel(ops=all_ops, shapes=all_shapes, params=param_map(model),
                       layers=dict(model.named_sublayers(include_self=True)),
                       inputs=inputs, outputs=outputs, calls=calls, input_shape=input_shape,
                       modes=tuple(modes))


def numel(shape):
    return int(np.prod(shape)) if len(shape) else 1
