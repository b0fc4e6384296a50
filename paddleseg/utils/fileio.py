"""Writes that never leave a half-written file or directory under the final name, and never
delete what the user had: an existing folder is replaced only when it is a previous output of
the same kind (every entry a plain file the new output rewrites or names as its own)."""
import json
import os
import shutil
from contextlib import contextmanager

from .errors import UserError


class OutputPathError(UserError):
    """An output path that would overwrite or delete something the user had."""


def _shown(path, what):
    return f"{what} {path}" if what else str(path)


def check_folder_target(path, what="--save_dir"):
    """OutputPathError when ``path`` exists and is not a folder (files are to go inside it)."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{_shown(path, what)} is an existing file, not a folder")


def check_file_target(path, what=None):
    """OutputPathError when ``path`` is an existing folder (a file is to be written there)."""
    if os.path.isdir(path):
        raise OutputPathError(f"{_shown(path, what)} is an existing folder, not a file path")


def not_a_readable_file(path, flag, remedy):
    """Why ``path`` (an existing path given as ``flag``) cannot be read as a file, or None: a
    folder, or a FIFO or device, which open() could block on forever. ``remedy``: what to name
    instead."""
    if os.path.isdir(path):
        return f"{flag} {path} is a folder, not a file"
    if not os.path.isfile(path):
        return f"{flag} {path} is not a regular file (a FIFO, device or socket); {remedy}"
    return None


def check_parent_folder(path, what=None):
    """OutputPathError when ``path`` cannot be made because one of the folders above it is an
    existing file (``notes.txt/table.json``); checked before any work, not when writing."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputPathError(f"{_shown(path, what)} cannot be made: {parent} is an existing "
                              "file, not a folder; choose a path under a folder")


def foreign_entries(folder, own_names):
    """Entries of ``folder`` that are not plain files named in ``own_names`` (sorted)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries
                      if e.name not in own_names or not e.is_file(follow_symlinks=False))


def check_replaceable_folder(path, own_names, kind="this output", what=None):
    """OutputPathError unless ``path`` is absent, or a folder holding only plain files named in
    ``own_names``: a previous output of the same kind, which replacing loses nothing else."""
    if not os.path.lexists(path):
        return
    check_folder_target(path, what)
    foreign = foreign_entries(path, set(own_names))
    if foreign:
        listed = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        verb = "is" if len(foreign) == 1 else "are"
        raise OutputPathError(f"{_shown(path, what)} already holds {listed}, which {verb} not part "
                              f"of {kind}; refusing to replace it (choose a new or empty folder)")


@contextmanager
def atomic_path(path, own_names=()):
    """Yield a temporary sibling path; on success rename it onto ``path`` (file or dir).

    An existing ``path`` is replaced only after the new one is complete, so a crash or kill
    leaves either the old content or the new, never a mix. An existing folder is replaced only
    when all its entries are plain files named in the new folder or in ``own_names`` (the
    names a previous output of this kind may hold); anything else raises OutputPathError and
    leaves ``path`` as it was. A file never replaces a folder, nor a folder a file.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".tmp.{os.path.basename(path)}.{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        _move_into_place(tmp, path, own_names)
    finally:
        _remove(tmp)


def _move_into_place(tmp, path, own_names):
    if not os.path.isdir(tmp):
        check_file_target(path)
        os.replace(tmp, path)
        return
    if not os.path.lexists(path):
        os.rename(tmp, path)
        return
    check_replaceable_folder(path, set(own_names) | set(os.listdir(tmp)))
    old = tmp + ".old"
    _remove(old)
    os.rename(path, old)
    os.rename(tmp, path)
    _remove(old)


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
    if os.path.islink(path):  # a link is removed, never what it points to
        os.remove(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.remove(path)


def _missing_folders(path):
    """``path`` and its parents that do not exist yet, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


@contextmanager
def removed_if_left_empty(folder):
    """On failure, remove ``folder`` and the parents made since entry while they are empty, so
    that a failed run leaves no empty folder it created (what it did write stays)."""
    created = _missing_folders(folder)
    try:
        yield
    except BaseException:
        for path in created:
            try:
                os.rmdir(path)
            except FileNotFoundError:  # never made after all; a parent may have been
                continue
            except OSError:  # not empty: keep it and everything above it
                break
        raise


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path, own_names=()):
    """Build a directory under a temporary name, then move it into place (see atomic_path)."""
    # fail before the work when we can tell already (the full check runs again at the end)
    check_folder_target(path, None)
    if own_names:
        check_replaceable_folder(path, own_names)
    with atomic_path(path, own_names) as tmp:
        os.makedirs(tmp)
        yield tmp


# -- durability: what must survive a power cut, not only a kill ----------------------------------
def fsync_path(path):
    """Flush a file's data, or a folder's entries (renames into it), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root):
    """fsync every file and folder under ``root`` (before it is renamed into place)."""
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


def write_durably(path, data):
    """Like write_text (``str``) or its bytes twin, and durable: the data is on disk before the
    rename, and the rename before this returns, so even a power cut leaves old or new."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
    fsync_path(os.path.dirname(os.path.abspath(path)))


_RENAME_EXCHANGE = 2  # linux/fs.h


def exchange_paths(a, b):
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): a reader sees either the
    old or the new one, never neither. OSError where the system or file system cannot."""
    import ctypes
    import errno
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), a, None, b)


def left_by_dead_process(name, prefix):
    """True when ``name`` is ``PREFIX.PID`` and that process is gone (a killed run left it)."""
    pid = name[len(prefix) + 1:]
    return (name.startswith(prefix + ".") and pid.isdigit() and int(pid) != os.getpid()
            and not _pid_alive(int(pid)))
