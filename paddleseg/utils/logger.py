"""A small stdout logger with PaddleSeg's look (timestamp, level, message)."""
import sys
import time

LEVELS = {"DEBUG": 0, "INFO": 1, "WARNING": 2, "ERROR": 3}
level = LEVELS["INFO"]


def log(lvl, msg):
    if LEVELS[lvl] >= level:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{stamp} [{lvl}] {msg}", file=sys.stdout, flush=True)


def debug(msg):
    log("DEBUG", msg)


def info(msg):
    log("INFO", msg)


def warning(msg):
    log("WARNING", msg)


def error(msg):
    log("ERROR", msg)
