import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import paddleseg  # noqa: E402,F401  (import order and log levels first)
import paddle  # noqa: E402
import pytest  # noqa: E402

paddle.set_device("cpu")

SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")


def shared_dataset(name):
    """Path of a development data set beside the project, or skip the test."""
    path = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(path):
        pytest.skip(f"{path} is absent (development data, not in a fresh clone)")
    return path
