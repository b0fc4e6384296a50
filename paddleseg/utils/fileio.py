"""Writes that never leave a half-written file or directory under the final name."""
import json
import os
import shutil
from contextlib import contextmanager


@contextmanager
def atomic_path(path):
    """Yield a temporary sibling path; on success rename it onto ``path`` (file or dir).

    An existing ``path`` is replaced only after the new one is complete, so a crash or kill
    leaves either the old content or the new, never a mix.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp.{os.path.basename(path)}.{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            old = tmp + ".old"
            _remove(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale_temporaries(folder):
    """Delete ``.staging.PID`` / ``.tmp.NAME.PID`` entries whose process is gone (left by a
    killed run), so that a resumed run leaves the folder clean; live runs' entries stay."""
    for name in os.listdir(folder):
        pid = name.rsplit(".", 1)[-1]
        if name.startswith((".staging.", ".tmp.")) and pid.isdigit() \
                and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            _remove(os.path.join(folder, name))


def _remove(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path):
    """Build a directory under a temporary name, then move it into place."""
    with atomic_path(path) as tmp:
        os.makedirs(tmp)
        yield tmp
