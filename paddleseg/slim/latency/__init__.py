"""Latency-targeted pruning: a measured latency model of a network on its deploy backend.

- :mod:`.onednn`: per-primitive times from oneDNN's own timer inside a Paddle Inference run;
- :mod:`.sites`: the conv calls at the latency shape, their widths under a plan, and the
  matching of measured primitives to them;
- :mod:`.measure`: the backend (device, threads, shape), exports of plans, timing in turn;
- :mod:`.table`: the latency table (measured sample plans + fitted per-layer model), cached;
- :mod:`.allocate`: channel counts under a latency budget (loss, or squared loss, per
  millisecond saved);

- :mod:`.profile`: each layer's share of the measured time.

Typical use::

    from paddleseg.slim import build_groups
    from paddleseg.slim.latency import Backend, obtain
    analysis = build_groups(model, (1, 3, 256, 256))
    table, path = obtain(model, analysis.groups, Backend(cpu_threads=2, shape=(1, 3, 512, 1024)),
                         channel_step=8, max_ratio=0.6)
    cost = table.model(analysis.groups)
    cost.ms(cost.vector({"backbone.stem.conv": 16}))     # predicted ms of a plan
"""
from .allocate import (LatencyTargetUnreachable, allocate_balanced, allocate_equal_loss,  # noqa: F401
                       allocate_latency)
from .measure import Backend  # noqa: F401
from .profile import format_profile, profile_model  # noqa: F401
from .table import LatencyModel, LatencyTable, LatencyTableMismatch, obtain  # noqa: F401
