"""Conv outputs kept between forward passes that compute the same prefix again.

The refit (:mod:`paddleseg.slim.reconstruct`) runs the pruned model on the same batches once
per conv it refits, each pass stopping at that conv. Between two passes only the conv refitted
last has changed, and nothing a pass calls before that conv can depend on it (its output does
not exist yet), so every conv call before it returns exactly what it returned in the previous
pass. Handing those outputs back instead of computing them makes all the passes together cost
about one forward pass per batch instead of one per refitted conv: on HarDNet (37 refitted
convs) conv2d took 266 of the refit's 341 seconds on one thread.

The cache is exact, not an approximation: a kept output is only reused for the same batch, at
the same call number, by the same layer, when nothing has written into it since.
"""
from paddle import nn

from .sensitivity.reuse import default_budget

# what the kept outputs may take, in bytes, on the device they were computed on; None: the
# sensitivity analysis's budget (a quarter of the memory, at most 4 GiB, 1 GiB on a GPU).
# HarDNet's conv outputs for one training batch (8 x 3 x 192 x 256) are 260 MiB, so its 8 refit
# batches fit; past the budget the passes compute what does not fit, as without a cache
CACHE_BYTES = None


class ConvOutputCache:
    """Within ``with cache:``, the conv layers of ``model`` hand back their kept outputs for
    calls numbered below :meth:`keep_calls_before`'s boundary. Call :meth:`start_pass` before
    each forward pass with the batch's index."""

    def __init__(self, model, budget_bytes=None):
        self.convs = [layer for layer in model.sublayers(include_self=True)
                      if isinstance(layer, (nn.Conv2D, nn.Conv2DTranspose))]
        if budget_bytes is None:
            budget_bytes = default_budget() if CACHE_BYTES is None else CACHE_BYTES
        self.budget = budget_bytes
        self.kept = {}       # (batch, call number) -> (layer, output, its in-place version)
        self.bytes = 0
        self.valid_calls = 0
        self.batch = None
        self.calls = 0       # conv calls made so far in the current pass
        self.reused = 0      # calls answered from the cache (what the tests check)

    def __enter__(self):
        for layer in self.convs:
            layer.forward = self._caching(layer, layer.forward)
        return self

    def __exit__(self, *exc):
        for layer in self.convs:
            del layer.forward     # the instance attribute: the class's forward again
        self.kept.clear()
        self.bytes = 0

    def start_pass(self, batch):
        self.batch, self.calls = batch, 0

    def keep_calls_before(self, boundary):
        """Outputs of calls numbered ``boundary`` and later are stale (a layer called there was
        changed): drop them, and reuse only the earlier ones."""
        self.valid_calls = boundary
        for key in [key for key in self.kept if key[1] >= boundary]:
            self.bytes -= _size(self.kept.pop(key)[1])

    def _caching(self, layer, compute):
        def forward(*args, **kwargs):
            key = (self.batch, self.calls)
            self.calls += 1
            entry = self.kept.get(key)
            if (entry is not None and key[1] < self.valid_calls and entry[0] is layer
                    and entry[1]._inplace_version() == entry[2]):
                self.reused += 1
                return entry[1]
            output = compute(*args, **kwargs)
            if entry is not None:
                self.bytes -= _size(self.kept.pop(key)[1])
            if self.bytes + _size(output) <= self.budget:
                self.kept[key] = (layer, output, output._inplace_version())
                self.bytes += _size(output)
            return output
        return forward


def _size(tensor):
    return tensor.size * tensor.element_size()
