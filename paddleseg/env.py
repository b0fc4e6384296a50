"""Process-wide set-up that must happen before paddle is imported.

cv2 goes first: paddle 2.6's libpaddle exports an old zlib, and importing cv2 after it has
segfaulted (see the stack notes). Paddle's C++ logging is noisy at INFO.
"""
import logging
import os
import warnings

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("FLAGS_call_stack_level", "0")
# CPU runs use every core (utils.distributed.set_cpu_threads); OpenMP threads that finish early
# then sleep at once instead of spinning for 200 ms, which on a machine other jobs keep busy
# made two threads 1.4-2.1x slower than one (0.9-1.5x with this; measured, see commit 26216dd)
os.environ.setdefault("KMP_BLOCKTIME", "0")

import cv2  # noqa: E402,F401

warnings.filterwarnings("ignore", message=".*always track global mean.*")
for _name in ("paddleslim", "paddle2onnx"):
    logging.getLogger(_name).setLevel(logging.WARNING)
