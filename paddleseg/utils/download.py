"""Downloads a later run can trust: PaddleSeg's pretrained weights and data-set archives.

A download lands under a temporary name in its destination folder, is fsync'ed and only then
renamed into place, so a killed or broken transfer never leaves a file under the final name.
Archives are unpacked only when every member stays inside the target folder.

Pretrained weights are cached where PaddleSeg caches them (``$SEG_HOME/pretrained_model/<name>/
model.pdparams``, ``SEG_HOME`` defaulting to ``~/.paddleseg``), so either tool reuses the
other's downloads, and a cached file is used without touching the network.
"""
import hashlib
import os
import re
import shutil
import sys
import tarfile
import time
import zipfile
from contextlib import contextmanager
from urllib.parse import unquote, urlparse

from . import logger
from .errors import UserError
from .fileio import atomic_path, remove_stale_temporaries

CONNECT_TIMEOUT_S = 15
READ_TIMEOUT_S = 60  # longest silence mid-transfer before giving up
CHUNK_BYTES = 1 << 18
PARAMS_NAME = "model.pdparams"
SOURCE_NOTE = "source_url.txt"  # which URL a cache folder came from (PaddleSeg writes none)
OFFLINE_HINT = ("download it elsewhere and pass the local path: "
                "pretrained: /path/to/model.pdparams")


class DownloadError(UserError):
    pass


def is_url(text):
    return isinstance(text, str) and text.lower().startswith(("http://", "https://"))


def seg_home():
    """PaddleSeg's cache root: ``$SEG_HOME``, else ``~/.paddleseg``."""
    return os.path.expanduser(os.environ.get("SEG_HOME") or os.path.join("~", ".paddleseg"))


def pretrained_home():
    return os.path.join(seg_home(), "pretrained_model")


# --- one file over HTTP --------------------------------------------------------------------------

def download_file(url, path, sha256=None):
    """Fetch ``url`` to ``path`` atomically; returns the SHA-256 (hex) of what was written.

    The transfer must deliver the length the server announced, and ``sha256`` when given;
    otherwise nothing is left at ``path`` and :class:`DownloadError` says why in one line.
    """
    folder = os.path.dirname(os.path.abspath(path))
    _make_dirs(folder)
    with atomic_path(path) as tmp:
        digest = _stream_to_file(url, tmp)
        if sha256 and digest != sha256.lower():
            raise DownloadError(f"{url} has SHA-256 {digest}, expected {sha256.lower()}; "
                                "the download was discarded")
    _fsync_dir(folder)
    return digest


def _stream_to_file(url, tmp):
    import requests  # only a download needs it: keep import time off every other command
    try:
        # identity: a server gzip-encoding on the fly would break the length check below
        response = requests.get(url, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
                                headers={"Accept-Encoding": "identity"})
    except requests.RequestException as e:
        raise DownloadError(f"cannot download {url} ({_reason(e)})") from None
    with response:
        if response.status_code != 200:
            raise DownloadError(f"cannot download {url} (HTTP {response.status_code} "
                                f"{response.reason})")
        total = int(response.headers.get("Content-Length") or 0) or None
        progress = _Progress(_url_filename(url) or url, total)
        digest = hashlib.sha256()
        done = 0
        with open(tmp, "wb") as f:
            try:
                for chunk in response.iter_content(CHUNK_BYTES):
                    f.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    progress.update(done)
            except requests.RequestException as e:
                progress.finish(done)
                raise DownloadError(f"cannot download {url} ({_broken_transfer(e, total)})") from None
            f.flush()
            os.fsync(f.fileno())
        progress.finish(done)
    if total is not None and done != total:
        raise DownloadError(f"cannot download {url} (got {done} of the {total} bytes announced)")
    return digest.hexdigest()


def _broken_transfer(error, total):
    import requests
    if isinstance(error, requests.exceptions.ChunkedEncodingError):  # closed before the end
        return (f"the connection closed before the {total} bytes announced had arrived"
                if total else "the connection closed mid-transfer")
    return f"the transfer broke off: {_reason(error)}"


def _reason(error):
    """A short cause for a requests exception (its own text repeats the URL and the pool)."""
    import requests
    if isinstance(error, requests.ConnectTimeout):
        return f"no connection within {CONNECT_TIMEOUT_S} s"
    if isinstance(error, requests.Timeout):
        return f"no data for {READ_TIMEOUT_S} s"
    text = str(error)
    if "Read timed out" in text:  # mid-transfer, requests reports it as a ConnectionError
        return f"no data for {READ_TIMEOUT_S} s"
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno_text:
        return errno_text.group(1).strip()
    if isinstance(error, requests.ConnectionError):
        return "connection failed"
    return f"{type(error).__name__}: {text[:120]}"


class _Progress:
    """Bytes, percent and rate of a transfer: one self-updating line on a terminal; in a log,
    a line every 10 s and one at the end."""

    def __init__(self, name, total):
        self.name, self.total = name, total
        self.start = self.last = time.time()
        self.tty = sys.stderr.isatty()

    def update(self, done):
        now = time.time()
        if now - self.last >= (0.2 if self.tty else 10.0):
            self.last = now
            self._write(done, end="")

    def finish(self, done):
        self._write(done, end="\n")

    def _write(self, done, end):
        rate = done / max(time.time() - self.start, 1e-6)
        size = f"{_size(done)} / {_size(self.total)} ({100 * done / self.total:.0f}%)" \
            if self.total else _size(done)
        line = f"downloading {self.name}: {size}, {_size(rate)}/s"
        sys.stderr.write(f"\r{line}\033[K{end}" if self.tty else line + "\n")
        sys.stderr.flush()


def _size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


# --- archives ------------------------------------------------------------------------------------

def archive_kind(name):
    """'zip', 'tar' or None, from a file name (PaddleSeg's archives are .tar.gz, .tgz and .zip)."""
    name = name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    return None


def safe_extract(archive, dest, kind, source=None):
    """Unpack ``archive`` into ``dest``, refusing it whole if any member would land outside
    ``dest`` (absolute path, ``..``) or is a link or device. ``source`` names it in errors."""
    source = source or archive
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                for name in z.namelist():
                    _check_member(name, source)
                z.extractall(dest)
        else:
            with tarfile.open(archive, "r:*") as t:
                members = t.getmembers()
                for m in members:
                    _check_member(m.name, source)
                    if not (m.isfile() or m.isdir()):
                        raise DownloadError(f"refusing to unpack {source}: member {m.name!r} "
                                            "is a link or special file")
                t.extractall(dest, members=members, **_tar_filter())
    except (tarfile.TarError, zipfile.BadZipFile, EOFError):
        raise DownloadError(f"{source} is not a readable {kind} archive (damaged, or an error "
                            "page instead of the file?)") from None


def _tar_filter():
    # Python >= 3.11.4 can also strip odd permissions; the member check above is what guards
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def _check_member(name, source):
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DownloadError(f"refusing to unpack {source}: member {name!r} would land outside "
                            "the target folder")


def single_top_folder(root):
    """The one folder an archive wraps its content in, else ``root`` itself."""
    entries = os.listdir(root)
    if len(entries) == 1 and os.path.isdir(os.path.join(root, entries[0])):
        return os.path.join(root, entries[0])
    return root


def folder_holding(filename):
    """A ``pick`` for :func:`download_and_unpack`: the shallowest folder holding ``filename``,
    else the archive's single top folder."""
    def pick(root):
        found = _folders_holding(root, filename)
        return found[0] if found else single_top_folder(root)
    return pick


def _folders_holding(root, filename):
    return sorted((d for d, _, files in os.walk(root) if filename in files),
                  key=lambda d: (d.count(os.sep), d))


def download_and_unpack(url, dest, sha256=None, pick=single_top_folder):
    """Make folder ``dest`` hold what ``url`` serves: an archive unpacked (``pick(root)``
    chooses the folder inside it to keep), any other file as ``dest/<its name>``.

    ``dest`` appears in one rename once everything is in place; if another process published
    it meanwhile, that copy is kept. Returns the SHA-256 (hex) of the download.
    """
    if os.path.isfile(dest) or (os.path.isdir(dest) and os.listdir(dest)):
        raise DownloadError(f"{dest} already exists and is not empty; not downloading {url} "
                            "over it (move it away first)")
    parent = os.path.dirname(os.path.abspath(dest))
    _make_dirs(parent)
    remove_stale_temporaries(parent)  # left by killed runs: never trusted, only cleaned
    try:
        with _scratch_dir(parent, os.path.basename(dest)) as work:
            name = _url_filename(url) or "download"
            downloaded = os.path.join(work, name)
            digest = download_file(url, downloaded, sha256)
            unpacked = os.path.join(work, "unpacked")
            kind = archive_kind(name)
            if kind:
                safe_extract(downloaded, unpacked, kind, source=url)
                os.remove(downloaded)
            else:
                os.makedirs(unpacked)
                os.rename(downloaded, os.path.join(unpacked, name))
            keep = pick(unpacked)
            _write_note(keep, url)
            _publish_dir(keep, dest)
    except OSError as e:  # disk full, permissions, dest is a file...
        raise DownloadError(f"cannot store {url} in {dest} ({e.strerror or e})") from None
    return digest


@contextmanager
def _scratch_dir(parent, name):
    # named like fileio's temporaries so that remove_stale_temporaries cleans a killed run's
    path = os.path.join(parent, f".tmp.{name}.{os.getpid()}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _publish_dir(src, dest):
    try:
        os.rename(src, dest)  # fails on a non-empty dest: never replaces what is there
    except OSError:
        if not os.path.isdir(dest):
            raise
        logger.info(f"{dest} appeared meanwhile (another process?); keeping that copy")
    _fsync_dir(os.path.dirname(os.path.abspath(dest)))


def _write_note(folder, url):
    with open(os.path.join(folder, SOURCE_NOTE), "w", encoding="utf-8") as f:
        f.write(url + "\n")
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory; the rename still holds
        pass
    finally:
        os.close(fd)


def _make_dirs(folder):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create folder {folder} ({e.strerror or e}); "
                            "set SEG_HOME to a writable folder") from None


# --- pretrained weights ----------------------------------------------------------------------------

def split_sha256(url):
    """``URL#sha256=HEX`` -> (URL, HEX); a plain URL -> (URL, None)."""
    base, _, fragment = url.partition("#")
    match = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
    return (base, match.group(1).lower()) if match else (url, None)


def paddleseg_cache_name(url):
    """The cache folder name PaddleSeg gives a URL: an archive's name without extensions, else
    the name of the folder the file sits in (``.../bisenet/model.pdparams`` -> ``bisenet``)."""
    parts = unquote(urlparse(url).path).rstrip("/").split("/")
    if archive_kind(parts[-1]):
        name = parts[-1].split(".")[0]
    else:
        name = parts[-2] if len(parts) >= 2 and parts[-2] else os.path.splitext(parts[-1])[0]
    return _safe_name(name) or "pretrained"


def _url_filename(url):
    return _safe_name(unquote(urlparse(url).path).rstrip("/").split("/")[-1])


def _safe_name(name):
    # a URL path may hold '..' or odd characters; a cache name must stay one plain folder name
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".")


def pretrained_cache_folder(url):
    """PaddleSeg's folder for ``url``, unless it holds another URL's weights (PaddleSeg's names
    collide: many of its URLs end in ``<model>/model.pdparams``); then a folder of its own."""
    plain = os.path.join(pretrained_home(), paddleseg_cache_name(url))
    if not os.path.exists(plain) or _cached_from(plain, url):
        return plain
    return f"{plain}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"


def _cached_from(folder, url):
    note = os.path.join(folder, SOURCE_NOTE)
    if os.path.isfile(note):
        with open(note, encoding="utf-8") as f:
            return f.read().strip() == url
    # PaddleSeg's own cache writes no note: trust it for its name, as PaddleSeg would
    return os.path.isfile(os.path.join(folder, PARAMS_NAME))


def fetch_pretrained(url):
    """Local path of ``model.pdparams`` for a pretrained-weights URL: the cached copy when there
    (no network), else downloaded and unpacked into the cache first.

    ``URL#sha256=HEX`` also checks the download's digest. Offline or failing:
    :class:`DownloadError`, one line that names the URL, the reason and the local-path way out.
    """
    url, sha256 = split_sha256(url)
    folder = pretrained_cache_folder(url)
    params = os.path.join(folder, PARAMS_NAME)
    if os.path.isfile(params):
        logger.info(f"pretrained weights for {url} from the cache: {params}")
        return params
    logger.info(f"downloading pretrained weights {url} to {folder}")
    try:
        download_and_unpack(url, folder, sha256, pick=lambda root: _params_folder(root, url))
    except DownloadError as e:
        raise DownloadError(f"{e}; {OFFLINE_HINT}") from None
    return params


def _params_folder(root, url):
    """The folder of an unpacked download that holds the weights, with them named
    ``model.pdparams`` (PaddleSeg's archives wrap that file in one folder)."""
    found = _folders_holding(root, PARAMS_NAME)
    if found:
        return found[0]
    others = [os.path.join(d, f) for d, _, files in os.walk(root) for f in files
              if f.endswith(".pdparams")]
    if len(others) == 1:
        os.rename(others[0], os.path.join(os.path.dirname(others[0]), PARAMS_NAME))
        return os.path.dirname(others[0])
    raise DownloadError(f"{url} holds no {PARAMS_NAME}"
                        + (f" (and {len(others)} other .pdparams files)" if others else ""))
