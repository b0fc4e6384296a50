"""Progress lines with a rate-based ETA for long loops."""
import time

from . import logger


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Logs ``label k/n ... ETA`` at most every ``every_seconds`` (and at the end)."""

    def __init__(self, total, label, every_seconds=10.0, start_at=0):
        self.total = total
        self.label = label
        self.every = every_seconds
        self.start = time.time()
        self.start_at = start_at
        self.last = 0.0

    def eta(self, done):
        work = done - self.start_at
        if work <= 0:
            return float("nan")
        return (time.time() - self.start) / work * (self.total - done)

    def step(self, done, extra=""):
        now = time.time()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        logger.info(f"{self.label} {done}/{self.total} {extra}ETA {format_seconds(self.eta(done))}")


class Phase:
    """Times a named phase of a run into ``timings`` (seconds) and logs its start and end."""

    def __init__(self, timings, name):
        self.timings, self.name = timings, name

    def __enter__(self):
        logger.info(f"== {self.name}")
        self.start = time.time()

    def __exit__(self, *exc):
        # a phase entered again (pruning: allocation, then the cut) adds to its time
        self.timings[self.name] = round(self.timings.get(self.name, 0) + time.time() - self.start, 2)
        if exc[0] is None:
            logger.info(f"== {self.name} done in {format_seconds(self.timings[self.name])}")
