"""Faster evaluations for the sensitivity analysis, with the metric unchanged to the bit.

Where one evaluation's time went (BiSeNetV2, 3 val images at 256x256, one CPU thread): about
90% in the model's forward pass, 5% decoding and transforming the images, the rest in resizing
the logits back and counting areas. Pruning one group changes the parameters of a few layers
only; every layer that runs before them computes exactly what it computed for the unpruned
model. So :class:`SensitivityEvaluator`

- decodes and transforms the eval images once and keeps them;
- records, in one reference pass over the unpruned model, every layer call's inputs and output
  per image;
- in a later evaluation lets a layer return its recorded output instead of running when its
  parameters and buffers (and those of all its sublayers) are the original objects and its
  inputs are the recorded ones: the same tensor objects (a recorded output handed on) or equal
  bit for bit. An input that some layer produced by running in this evaluation is taken as
  changed without a comparison (downstream of a pruned layer, comparing every input cost about
  a tenth of an evaluation).

Everything after the first changed layer runs as usual, so the metric is the one a plain
evaluation gives; the first pruned evaluation is checked against a plain one anyway, and reuse
is switched off (with a warning) should they ever differ. Recording stops at a memory budget
(images first, then layer outputs in forward order); layers beyond it simply run.
"""
import os
import weakref

import numpy as np
import paddle

from ...core import metrics as M
from ...core.infer import reverse_transform
from ...core.val import accumulate_areas
from ...utils import distributed, logger
from .protocol import Evaluator

# up to this many classes a label map is taken by comparing the classes' planes in numpy, above
# it by Paddle's argmax (measured, one thread: 2 classes at 512x512 1.7 ms against 6.2 ms;
# 11 classes at 360x480 6.8 ms against 5.1 ms)
FEW_CLASSES = 4
DEFAULT_BUDGET_CAP = 4 << 30
GPU_BUDGET_CAP = 1 << 30  # recorded outputs stay on the card, beside the model and its work


def default_budget():
    """A quarter of the machine's memory shared by the ranks on it, at most 4 GiB each (1 GiB
    on a GPU)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    cap = DEFAULT_BUDGET_CAP if paddle.get_device() == "cpu" else GPU_BUDGET_CAP
    return min(cap, ram // 4 // distributed.local_world_size())


def first_max_labels(scores):
    """The argmax over the classes of ``scores`` ``[1, C, H, W]`` (a tensor) as a numpy
    ``[H, W]``, ties to the first class, exactly as Paddle's argmax gives it (no arithmetic:
    only comparisons). With few classes, Paddle's argmax along a strided axis was 14% of a
    reused Fast-SCNN evaluation on 2-class membrane images; comparing whole planes is 4x
    faster there."""
    if scores.shape[1] > FEW_CLASSES:
        return scores.argmax(axis=1).numpy()[0]
    planes = scores.numpy()[0]
    best, labels = planes[0].copy(), np.zeros(planes.shape[1:], np.int64)
    for c in range(1, len(planes)):
        labels[planes[c] > best] = c   # strictly greater: a tie keeps the earlier class
        np.maximum(best, planes[c], out=best)
    return labels


def predicted_labels(logit, trans_info=()):
    """``core.infer.predicted_labels`` to the bit: Paddle's resize of the logits, the argmax
    by :func:`first_max_labels`."""
    return first_max_labels(reverse_transform(logit, trans_info))


def _tensors(obj):
    if isinstance(obj, paddle.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _nbytes(t):
    return int(np.prod(t.shape)) * t.element_size()


def same_value(a, b):
    """``a`` and ``b`` are the same object or hold the same values bit for bit (paddle's own
    ``equal_all`` is not exact for floats: it treats values within 1e-8 as equal)."""
    if a is b:
        return True
    if isinstance(a, paddle.Tensor) or isinstance(b, paddle.Tensor):
        return (isinstance(a, paddle.Tensor) and isinstance(b, paddle.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype
                and np.array_equal(a.numpy(), b.numpy()))
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict):
        return type(b) is dict and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001  (values that do not compare are not reused)
        return False


class KeptSamples:
    """The eval images after their transforms, kept; reading sample i starts image i's pass."""

    def __init__(self, dataset, n, on_read):
        self.samples = [dataset[i] for i in range(n)]
        self.num_classes, self.ignore_index = dataset.num_classes, dataset.ignore_index
        self.on_read = on_read

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        self.on_read(i)
        return self.samples[i]

    def nbytes(self):
        return sum(v.nbytes for s in self.samples for v in s.values() if isinstance(v, np.ndarray))


class SensitivityEvaluator(Evaluator):
    """``evaluator()`` is the mIoU of ``model`` as it is now on the first ``max_images`` of
    ``dataset``, as ``evaluate_metrics`` gives it. Use it as a context manager around the
    analysis (``with SensitivityEvaluator(model, ds, n) as ev: analyze(..., ev, ...)``), entered
    with the model unpruned; leaving gives the model its own forward methods back (while it is
    entered, the wrapped layers act only in its own passes: any other forward is plain). The
    reference pass is the first evaluation of the unpruned model, or ``prepare()`` (which
    ``sensitivity.analyze`` calls before it prunes anything). ``budget_bytes``: memory for
    kept images and recorded outputs."""

    def __init__(self, model, dataset, max_images=None, budget_bytes=None):
        self.model = model
        self.n = len(dataset) if max_images is None else min(max_images, len(dataset))
        self.dataset = dataset
        self.budget = default_budget() if budget_bytes is None else budget_bytes
        self.samples = None
        self.entries = {}        # (image, layer path, call number) -> (args, kwargs, output)
        self.recording = False
        self._evaluating = False  # inside one of this evaluator's own passes
        self.reuse = True
        self.checked = False
        self.hits = 0
        self._image, self._calls = 0, {}
        # this image's outputs of layers that ran instead of being reused, by id; weakly, so
        # they are freed as usual and a freed one's id, given to a new tensor, does not match
        self._ran = weakref.WeakValueDictionary()
        self._room, self._used, self._counted = 0, 0, set()
        self._wrapped = []
        self.reference_miou = None

    # -- set-up and tear-down ------------------------------------------------------------------
    def __enter__(self):
        layers = list(self.model.named_sublayers(include_self=True))
        self._originals = {id(layer): self._own_state(layer) for _, layer in layers}
        self._subtrees = {path: [id(s) for s in layer.sublayers(include_self=True)]
                          for path, layer in layers}
        self._layers = layers
        for path, layer in layers:
            self._wrap(path, layer)
        return self

    def prepare(self):
        """Keep the eval images and record the reference pass, once; the model must be as it
        was on entering. Returns its mIoU (None when reuse is off)."""
        if self.reference_miou is not None or not self.reuse:
            return self.reference_miou
        self._refresh_clean()
        if not all(self._clean.values()):
            raise RuntimeError("the reference pass needs the model as it was when the "
                               "evaluator was entered (unpruned)")
        samples = KeptSamples(self.dataset, self.n, self._start_image)
        if samples.nbytes() > self.budget:
            logger.info("sensitivity: the eval images do not fit the memory budget; evaluating "
                        "without reusing layer outputs")
            self.reuse = False
            return None
        self.samples = samples
        self._room = (self.budget - samples.nbytes()) // max(self.n, 1)
        self.recording = True
        try:
            self.reference_miou = self._miou()
        finally:
            self.recording = False
        return self.reference_miou

    def __exit__(self, *exc):
        for layer, had, old in reversed(self._wrapped):
            if had:
                layer.__dict__["forward"] = old
            else:
                layer.__dict__.pop("forward", None)
        self._wrapped = []
        self.entries, self.samples = {}, None
        return False

    def _wrap(self, path, layer):
        had, old = "forward" in layer.__dict__, layer.__dict__.get("forward")
        forward = layer.forward

        def reusing_forward(*args, **kwargs):
            if not self._evaluating:   # someone else's forward (a plain evaluation): plain
                return forward(*args, **kwargs)
            n = self._calls[path] = self._calls.get(path, -1) + 1
            key = (self._image, path, n)
            if self.recording:
                out = forward(*args, **kwargs)
                self._record(key, args, kwargs, out)
                return out
            entry = self.entries.get(key) if self.reuse else None
            if entry is not None and self._clean[path] and not self._from_a_run((args, kwargs)) \
                    and same_value(entry[0], args) and same_value(entry[1], kwargs):
                self.hits += 1
                return entry[2]
            out = forward(*args, **kwargs)
            if entry is not None:
                # a container's output can hold its reused sublayers' recorded tensors: not new
                self._ran.update((id(t), t) for t in _tensors(out) if id(t) not in self._counted)
            return out

        layer.__dict__["forward"] = reusing_forward
        self._wrapped.append((layer, had, old))

    def _start_image(self, i):
        self._image, self._calls, self._ran = i, {}, weakref.WeakValueDictionary()
        if self.recording:
            self._used = 0

    def _from_a_run(self, inputs):
        """Some input is the output of a layer that ran instead of being reused. It differs
        from the recorded value (the layer ran because its weights or inputs did), so there is
        no need to compare it element by element, which downstream of a pruned layer would be
        most of the evaluation's overhead. Identity, not value: an output equal to the
        recorded one by chance (a ReLU of inputs that differ below zero) only runs what it
        feeds, which is never wrong."""
        return bool(self._ran) and any(self._ran.get(id(t)) is t for t in _tensors(inputs))

    def _record(self, key, args, kwargs, out):
        new = [t for t in _tensors((args, kwargs, out)) if id(t) not in self._counted]
        size = sum(_nbytes(t) for t in new)
        if self._used + size > self._room:
            return
        self._used += size
        self._counted.update(id(t) for t in new)
        self.entries[key] = (args, kwargs, out)

    # -- which layers are as recorded ------------------------------------------------------------
    @staticmethod
    def _own_state(layer):
        return tuple((name, t) for name, t in list(layer._parameters.items())
                     + list(layer._buffers.items()))

    def _refresh_clean(self):
        dirty = set()
        for _, layer in self._layers:
            now, then = self._own_state(layer), self._originals[id(layer)]
            if len(now) != len(then) or any(a[0] != b[0] or a[1] is not b[1]
                                            for a, b in zip(now, then)):
                dirty.add(id(layer))
        self._clean = {path: not dirty.intersection(ids) for path, ids in self._subtrees.items()}

    # -- evaluation ------------------------------------------------------------------------------
    def _miou(self):
        source = self.samples if self.samples is not None else self.dataset
        self._evaluating = True
        try:
            return M.summarize(*accumulate_areas(self.model, source, self.n,
                                                 labels_of=predicted_labels))["mIoU"]
        finally:
            self._evaluating = False

    facts = {"name": "dygraph"}

    def evaluate(self, group_id=None):
        return self()

    def __call__(self):
        if self.reference_miou is None and self.reuse:
            self._refresh_clean()
            if all(self._clean.values()):  # the unpruned model: this is the reference pass
                reference = self.prepare()
                if reference is not None:
                    return reference
            else:  # pruned before prepare(): nothing recorded to reuse
                self.reuse = False
        if self.samples is None:
            return self._miou()  # a plain evaluation
        self._refresh_clean()
        fast = self._miou()
        if not self.checked and not all(self._clean.values()):
            self.checked = True
            self.reuse = False
            plain = self._miou()
            self.reuse = plain == fast
            if not self.reuse:
                logger.warning(f"sensitivity: reusing layer outputs changed the metric ({fast} vs "
                               f"{plain}); evaluating without reuse from here on")
            return plain
        return fast
