"""A small stdout logger with PaddleSeg's look (timestamp, level, message).

In a job of several ranks (paddle.distributed.launch) only rank 0 prints information, as in
PaddleSeg; warnings and errors come from every rank, tagged with it, and so does a message
logged with ``every_rank=True``."""
import sys
import time

from .distributed import rank as _rank, world_size as _world_size
from .image_io import shown

LEVELS = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3}
level = LEVELS["INFO"]


def log(lvl, msg, every_rank=False):
    if LEVELS[lvl] < level:
        return
    rank, size = _rank(), _world_size()
    if rank and not every_rank and LEVELS[lvl] < LEVELS["WARNING"]:
        return
    tag = f" [rank {rank}]" if size > 1 and (rank or every_rank) else ""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    # shown: a file name that is not UTF-8 prints as \xNN instead of raising UnicodeEncodeError
    print(f"{stamp} [{lvl}]{tag} {shown(msg)}", file=sys.stdout, flush=True)


def debug(msg):
    log("DEBUG", msg)


def info(msg, every_rank=False):
    log("INFO", msg, every_rank)


def warning(msg):
    log("WARNING", msg)


def error(msg):
    log("ERROR", msg)
