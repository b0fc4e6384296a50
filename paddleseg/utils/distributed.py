"""Several processes, one job: who we are, how ranks wait for and exchange with each other, and
CPU threads.

``python -m paddle.distributed.launch --nproc_per_node N script.py`` starts N copies of a
script with PADDLE_TRAINER_ID / PADDLE_TRAINERS_NUM (and PADDLE_LOCAL_SIZE, the ranks on this
machine) in their environment; on GPUs each rank drives one card (NCCL), on CPUs they talk over
gloo. Everything here also works in a plain single process, where it does nothing. Paddle is
imported only where it is used, so that the logger can ask who we are without loading it.
"""
import itertools
import json
import os
import time


def world_size():
    """Number of ranks in the job (1 when not launched by paddle.distributed.launch)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1)


def rank():
    return int(os.environ.get("PADDLE_TRAINER_ID", "0") or 0)


def is_main():
    """Rank 0: the one that logs and writes the job's files."""
    return rank() == 0


def local_rank():
    """This rank's index among the ranks on its machine."""
    value = os.environ.get("PADDLE_LOCAL_RANK") or os.environ.get("PADDLE_RANK_IN_NODE")
    return int(value) if value else rank() % local_world_size()


def local_world_size():
    """Ranks on this machine (they share its CPU cores)."""
    return int(os.environ.get("PADDLE_LOCAL_SIZE", "0") or 0) or world_size()


def init():
    """Join the job's process group once (no-op in a single process)."""
    import paddle
    if world_size() > 1 and not paddle.distributed.is_initialized():
        paddle.distributed.init_parallel_env()


# Waiting for other ranks goes through the job's key-value store (a TCP server on rank 0), not
# through gloo collectives: on CPU a gloo collective fails when a peer is more than 30 s late
# (measured with Paddle 2.6.2), and a rank is often that late, e.g. while rank 0 alone evaluates
# or saves. Values travel as JSON, so nothing a peer sends is unpickled. Every rank must make the
# same calls in the same order: the calls are numbered to keep them apart.
_calls = itertools.count()


def _store():
    import paddle
    init()
    return paddle.base.core.create_or_get_global_tcp_store()


def _wait_until_all(store, key):
    """Poll counter ``key`` until every rank has added 1 (a late rank is waited for without
    limit; if it dies, the launcher stops the job)."""
    pause = 0.001
    while store.add(key, 0) < world_size():
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def barrier():
    """Wait until every rank has got here."""
    if world_size() == 1:
        return
    store, key = _store(), f"paddleseg/{next(_calls)}/arrived"
    store.add(key, 1)
    _wait_until_all(store, key)


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] on every rank; ``obj`` is plain JSON data (its dict
    keys strings). A single process gets ``[obj]`` untouched."""
    if world_size() == 1:
        return [obj]
    store, tag = _store(), f"paddleseg/{next(_calls)}"
    store.set(f"{tag}/{rank()}", json.dumps(obj))
    store.add(f"{tag}/ready", 1)
    _wait_until_all(store, f"{tag}/ready")
    return [json.loads(bytes(store.get(f"{tag}/{r}")).decode("utf-8"))
            for r in range(world_size())]


def mean(value):
    """The mean of a float over all ranks (the value itself in a single process)."""
    values = all_gather(float(value))
    return sum(values) / len(values)


def available_cores():
    """CPU cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_cpu_threads():
    """Every core of the machine, shared evenly between the ranks running on it."""
    return max(1, available_cores() // local_world_size())


_cpu_threads = None  # the last set_cpu_threads value (paddle has no getter for it)


def cpu_threads():
    """The math-library threads set by :func:`set_cpu_threads` (1, Paddle's own default on
    import, when it was never called)."""
    return _cpu_threads or 1


def restore_cpu_threads():
    """Set the math-library threads back to what :func:`set_cpu_threads` chose, if it was
    called. A Paddle Inference predictor's run leaves them at 1 (measured: libiomp5's
    ``omp_get_max_threads`` is 1 after ``predictor.run()``), so without this every dygraph op
    after a predictor (retraining after a latency search, evaluations after the sensitivity
    engine's probes) ran on one core, and computed differently from a process that never ran
    a predictor."""
    if _cpu_threads:
        import paddle
        paddle.base.core.set_num_threads(_cpu_threads)


def set_cpu_threads(threads=None):
    """Set the math-library threads of CPU kernels (``None``: :func:`default_cpu_threads`).

    Paddle sets OMP_NUM_THREADS=1 on import, and the launcher passes that on to every rank, so
    without this a CPU run uses one core whatever the machine has. Returns the number used."""
    import paddle
    global _cpu_threads
    threads = default_cpu_threads() if threads is None else max(1, int(threads))
    paddle.base.core.set_num_threads(threads)
    _cpu_threads = threads
    return threads
