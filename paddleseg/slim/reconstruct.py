"""Least-squares reconstruction after pruning (``--reconstruct N``): every dense conv that lost
input channels is refitted so that, on the pruned model's own features, it outputs what the
unpruned model's conv output on its features.

Why: removing a group's channels takes terms out of every sum its consumers compute, so a
consumer's output drifts from what the layers after it (and its batch norm's running
statistics) were trained on; after a latency-target cut the benchmark's pruned models score
0.02-0.24 mIoU before retraining, against 0.37-0.44 unpruned, and a short retraining has to
repair that drift before it can improve anything. The remaining input channels can absorb much
of the loss: refit the consumer's weights by least squares against the unpruned output (the
reconstruction step of He et al., ICCV 2017, and of ThiNet, Luo et al., ICCV 2017; the channel
choice stays the criterion's). Done one conv at a time in forward order on the pruned model's
features, each refit also absorbs the error the convs before it leave.

How: ``N`` training batches (the config's batch size and training transforms, drawn with a
fixed seed, :data:`SAMPLE_SEED`).
The unpruned copy runs once per batch and keeps, at a fixed random sample of output positions,
what each consumer outputs (its kept output channels only). Then for each consumer, in the
order the forward pass calls them, the pruned model runs up to that conv (a pre-hook stops the
pass there; the conv outputs the previous refit left unchanged come from a
:class:`~paddleseg.slim.conv_cache.ConvOutputCache`) and its input patches at the same
positions give the regression:
``W = argmin ||patches @ W - unpruned output||^2 + ridge ||W - pruned W||^2``, plus the bias
where the conv has one (the ridge pulls towards the weights pruning left, see :data:`RIDGE`).
Depthwise convs (pruned with their producer, channel for channel), grouped convs, transposed
convs and convs the eval forward pass does not call (training-only heads) are left as they are;
the retraining repairs them.
"""
import time

import numpy as np
import paddle
from paddle import nn

from ..utils import logger
from ..utils.errors import UserError
from ..utils.progress import format_seconds
from . import prune_model
from .apply import choose_channels, layer_removals
from .bn_calibration import calibration_batches
from .conv_cache import ConvOutputCache
from .dependency import IN, OUT

# positions sampled per consumer, at least this many and at least 4 per unknown weight
MIN_SAMPLES = 4096
SAMPLES_PER_UNKNOWN = 4
# the ridge towards the pruned weights, as a share of the normal matrix's mean diagonal. Plain
# least squares (towards zero, 1e-3) made Fast-SCNN's classifier weights 40x larger than
# trained ones, which no 150-iteration retraining recovered from (0.20 mIoU against 0.35 without
# the refit). Towards the pruned weights, one retraining seed on Fast-SCNN's latency-0.3 row
# (plain: 0.348) gave 0.351 (1e-4), 0.376 (1e-3), 0.380 (1e-2), 0.369 (1e-1)
RIDGE = 1e-2
# the seed of the refit's batches and sampled positions: fixed, not --seed, so that the refitted
# model is a function of the plan alone, like the channels the criterion removes, and retraining
# seeds vary the retraining only (the benchmark's seeds retrain the row's very model)
SAMPLE_SEED = 0


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass once it reaches the conv being refitted."""


def refittable(layer):
    """Whether least squares can refit ``layer``: a plain dense NCHW Conv2D with explicit or
    "same" padding (the patch layout of its weight is then what ``F.unfold`` gives)."""
    return (type(layer) is nn.Conv2D and layer._groups == 1 and layer._data_format == "NCHW"
            and layer._padding_algorithm in ("EXPLICIT", "SAME")
            and len(layer._updated_padding) == 2)


def unfold_padding(layer, height, width):
    """[top, left, bottom, right] padding of ``layer`` on a ``height`` x ``width`` input: its
    explicit padding, or what "same" pads (Paddle's rule: the output is ceil(input / stride),
    the odd pixel of the padding at the bottom or right, and the dilation ignored)."""
    if layer._padding_algorithm == "EXPLICIT":
        pad_h, pad_w = layer._updated_padding
        return [pad_h, pad_w, pad_h, pad_w]
    pads = []
    for size, kernel, stride in zip((height, width), layer._kernel_size, layer._stride):
        out = -(-size // stride)
        pads.append(max((out - 1) * stride + kernel - size, 0))
    return [pads[0] // 2, pads[1] // 2, pads[0] - pads[0] // 2, pads[1] - pads[1] // 2]


def unfold_dilation(layer):
    """The dilation ``layer`` computes with: Paddle's "same" padding runs a dilated conv
    undilated (phi's UpdatePaddingAndDilation)."""
    return (1, 1) if layer._padding_algorithm == "SAME" else tuple(layer._dilation)


def consumers_to_refit(reference, groups, plan, criterion):
    """{conv path: kept output channels (indices into the unpruned conv's)} of the convs that
    ``plan`` takes input channels from and that :func:`refittable` accepts. The channels are
    chosen on ``reference`` (the unpruned model) exactly as pruning chose them."""
    layers = dict(reference.named_sublayers(include_self=True))
    removals = layer_removals(groups, choose_channels(layers, groups, plan, criterion))
    out = {}
    for path, removed in removals.items():
        layer = layers[path]
        if removed[IN] is None or not refittable(layer):
            continue
        out[path] = np.setdiff1d(np.arange(layer._out_channels),
                                 removed[OUT] if removed[OUT] is not None else [])
    return out


def forward_order(model, paths, batch):
    """``paths`` in the order a forward pass of ``model`` first calls them, less those it never
    calls or calls more than once (a shared conv has no single input to fit)."""
    layers = dict(model.named_sublayers(include_self=True))
    calls = {}

    def counter(path):
        def hook(layer, inputs):
            calls[path] = calls.get(path, 0) + 1
        return hook
    hooks = [layers[p].register_forward_pre_hook(counter(p)) for p in paths]
    try:
        with paddle.no_grad():
            model(batch)
    finally:
        for h in hooks:
            h.remove()
    return [p for p in calls if calls[p] == 1]


def _positions(rng, total, wanted):
    """Sorted sample of ``wanted`` flat output positions out of ``total`` (all if fewer)."""
    return np.arange(total) if wanted >= total else np.sort(rng.choice(total, wanted, False))


def _output_rows(output, positions):
    """[P, C] rows of an N C H W output at flat (n, h, w) ``positions``."""
    n, _, h, w = output.shape
    images, rows, cols = np.unravel_index(positions, (n, h, w))
    # float32 while kept for every consumer: half the memory
    return output.numpy()[images, :, rows, cols]


def _patch_rows(layer, inputs, positions):
    """[P, C*kh*kw] input patches of ``layer`` at flat output ``positions``, in F.unfold's
    channel-major layout (the weight's), gathered at those positions only: unfolding the whole
    input first cost more than the sampled rows (HarDNet's decoder, 8 x 64 x 48 outputs)."""
    top, left, bottom, right = unfold_padding(layer, *inputs.shape[2:])
    padded = np.pad(inputs.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kernel_h, kernel_w), (stride_h, stride_w), (dilation_h, dilation_w) = (
        layer._kernel_size, layer._stride, unfold_dilation(layer))
    out_h = (padded.shape[2] - (kernel_h - 1) * dilation_h - 1) // stride_h + 1
    out_w = (padded.shape[3] - (kernel_w - 1) * dilation_w - 1) // stride_w + 1
    images, rows, cols = np.unravel_index(positions, (inputs.shape[0], out_h, out_w))
    tops = rows[:, None] * stride_h + np.arange(kernel_h) * dilation_h       # P, kh
    lefts = cols[:, None] * stride_w + np.arange(kernel_w) * dilation_w      # P, kw
    channels = np.arange(inputs.shape[1])
    patches = padded[images[:, None, None, None], channels[None, :, None, None],
                     tops[:, None, :, None], lefts[:, None, None, :]]        # P, C, kh, kw
    return patches.reshape(len(positions), -1).astype(np.float64)


def unpruned_targets(reference, kept_out, batches, seed):
    """({consumer: [sampled positions, per batch]}, {consumer: [the unpruned outputs there, its
    kept channels only, per batch]}) from one forward pass of ``reference`` per batch."""
    layers = dict(reference.named_sublayers(include_self=True))
    rng = np.random.default_rng(seed)
    positions = {p: [] for p in kept_out}
    outputs = {p: [] for p in kept_out}

    def keeper(path):
        layer = layers[path]
        unknowns = layer._in_channels * int(np.prod(layer._kernel_size)) + 1
        per_batch = -(-max(MIN_SAMPLES, SAMPLES_PER_UNKNOWN * unknowns) // len(batches))

        def hook(layer, inputs, output):
            n, _, h, w = output.shape
            pos = _positions(rng, n * h * w, per_batch)
            positions[path].append(pos)
            outputs[path].append(_output_rows(output, pos)[:, kept_out[path]])
        return hook
    hooks = [layers[p].register_forward_post_hook(keeper(p)) for p in kept_out]
    try:
        with paddle.no_grad():
            for batch in batches:
                reference(batch)
    finally:
        for h in hooks:
            h.remove()
    return positions, outputs


def _solve(gram, cross, current):
    """argmin ||A W - Y||^2 + ridge ||W - current||^2 from ``gram`` = A'A and ``cross`` = A'Y:
    pulled towards the pruned weights, not towards zero, so that inputs the sample cannot tell
    apart keep the weights they had instead of large ones that cancel each other out."""
    ridge = RIDGE * max(float(np.mean(np.diag(gram))), 1e-12)
    return np.linalg.solve(gram + ridge * np.eye(gram.shape[0]), cross + ridge * current)


def refit_conv(model, layer, batches, positions, outputs, cache):
    """Refit ``layer``, a conv of ``model``, in place; returns (error before, error after): the
    mean squared difference from the unpruned outputs over the sampled positions (equal where
    the fit would not lower it and the conv keeps the weights pruning left). ``cache``, the
    :class:`~paddleseg.slim.conv_cache.ConvOutputCache` installed on ``model``, answers the
    conv calls before ``layer`` that the previous refit left unchanged."""
    captured = []

    def stop(layer, inputs):
        captured.append((inputs[0], cache.calls))
        raise _StopForward()
    hook = layer.register_forward_pre_hook(stop)
    has_bias = layer.bias is not None
    weight = layer.weight.numpy()
    current = weight.reshape([weight.shape[0], -1]).T.astype(np.float64)
    if has_bias:
        current = np.vstack([current, layer.bias.numpy()[None, :].astype(np.float64)])
    gram = cross = None
    count, before = 0, 0.0
    try:
        for index, (batch, pos, target) in enumerate(zip(batches, positions, outputs)):
            captured.clear()
            cache.start_pass(index)
            try:
                with paddle.no_grad():
                    model(batch)
            except _StopForward:
                pass
            patches = _patch_rows(layer, captured[0][0], pos)
            if has_bias:
                patches = np.hstack([patches, np.ones((len(patches), 1))])
            if gram is None:
                gram, cross = np.zeros((patches.shape[1],) * 2), np.zeros((patches.shape[1],
                                                                          target.shape[1]))
            target = target.astype(np.float64)
            gram += patches.T @ patches
            cross += patches.T @ target
            before += float(np.sum((patches @ current - target) ** 2))
            count += target.size
    finally:
        hook.remove()
    # this conv is about to change: later passes may reuse only the calls made before it
    cache.keep_calls_before(captured[0][1])
    solved = _solve(gram, cross, current)
    total_sq = sum(float(np.sum(np.square(target, dtype=np.float64))) for target in outputs)
    # ||A W - Y||^2 from the normal equations' sums: no second pass over the batches
    after = float(np.sum(solved * (gram @ solved)) - 2 * np.sum(solved * cross) + total_sq)
    after = max(after, 0.0)
    if after >= before:      # the ridge can make a near-exact fit no better: keep what it had
        return before / count, before / count
    n_weights = current.shape[0] - (1 if has_bias else 0)
    layer.weight.set_value(solved[:n_weights].T.reshape(weight.shape).astype(weight.dtype))
    if has_bias:
        layer.bias.set_value(solved[n_weights].astype(layer.bias.numpy().dtype))
    return before / count, after / count


def reconstruct(model, reference, groups, plan, criterion, dataset, num_batches, batch_size,
                seed=0):
    """Refit, in forward order, every conv of the pruned ``model`` that ``plan`` took input
    channels from (see the module's docstring); ``reference`` is the unpruned model it was
    pruned from (same layer paths), ``groups`` the analysis the plan was pruned with. Returns
    {"convs": refitted, "kept": convs the fit would not improve (they keep the weights pruning
    left), "not_called_once": candidates the eval forward pass calls never or more than once
    (left as they are), "batches", "error_before"/"error_after": the summed mean squared output
    errors, "seconds"}."""
    start = time.time()
    kept_out = consumers_to_refit(reference, groups, plan, criterion)
    batches = calibration_batches(dataset, num_batches, batch_size, seed)
    was_training, ref_training = model.training, reference.training
    model.eval()
    reference.eval()
    try:
        candidates = len(kept_out)
        order = forward_order(model, list(kept_out), batches[0])
        kept_out = {p: kept_out[p] for p in order}
        positions, outputs = unpruned_targets(reference, kept_out, batches, seed)
        layers = dict(model.named_sublayers(include_self=True))
        total_before = total_after = 0.0
        unchanged = 0
        with ConvOutputCache(model) as cache:
            for k, path in enumerate(order, 1):
                before, after = refit_conv(model, layers[path], batches, positions[path],
                                           outputs[path], cache)
                total_before, total_after = total_before + before, total_after + after
                unchanged += after == before
                if k == 1 or k == len(order) or k % 10 == 0:
                    elapsed = time.time() - start
                    logger.info(f"reconstruction: conv {k} of {len(order)} ({path}) output "
                                f"error {before:.4g} -> {after:.4g}, ETA "
                                f"{format_seconds(elapsed / k * (len(order) - k))}")
    finally:
        if was_training:
            model.train()
        if ref_training:
            reference.train()
    return {"convs": len(order) - unchanged, "kept": unchanged,
            "not_called_once": candidates - len(order),
            "batches": num_batches,
            "error_before": round(total_before, 6), "error_after": round(total_after, 6),
            "seconds": round(time.time() - start, 1)}


def prune_for_retraining(o, cfg, model, analysis, plan, reference):
    """Prune ``model`` to ``plan`` and, with --reconstruct, refit its consumers to
    ``reference`` (the unpruned copy, :func:`paddleseg.slim.distill.teacher_of`); returns the
    refit's record or None."""
    prune_model(model, analysis, plan, o.criterion)
    if not o.reconstruct:
        return None
    if cfg.train_dataset is None:
        raise UserError(f"--reconstruct refits on training images, but {cfg.path} has no "
                        "train_dataset")
    record = reconstruct(model, reference, analysis.by_id(), plan, o.criterion, cfg.train_dataset,
                         o.reconstruct, cfg.batch_size, SAMPLE_SEED)
    logger.info(f"reconstruction: {summary(record)} (in {format_seconds(record['seconds'])})")
    return record


def summary(record):
    """One sentence of what a refit did (:func:`reconstruct`'s record), for the log and
    report.md."""
    kept = (f", {record['kept']} kept as pruned (the fit did not improve them)"
            if record["kept"] else "")
    return (f"{record['convs']} convs refitted{kept} on {record['batches']} training batches, "
            f"summed output error {record['error_before']:.4g} -> {record['error_after']:.4g}")
