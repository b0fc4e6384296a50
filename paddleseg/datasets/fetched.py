"""Public data sets PaddleSeg downloads when their folder is missing, and the list-file sets
among them (a ``train_list.txt`` / ``val_list.txt`` in the root, as DRIVE's zip holds).

PaddleSeg 2.6 downloads into a missing ``dataset_root`` whatever its name. Here only a folder
meant for the set is filled (its name is one of the set's ``ROOT_NAMES``, any case: the name in
PaddleSeg's config, e.g. ``data/DRIVE``, and the archive's), so a mistyped path is an error
line, not a download into the wrong place. No ``dataset_root`` at all: the set is fetched into
``$SEG_HOME/dataset/<archive name>``, where PaddleSeg puts it.
"""
import os

from paddleseg.utils import logger
from paddleseg.utils.download import (DownloadError, download_and_unpack, folder_holding,
                                      paddleseg_cache_name, seg_home, single_top_folder)
from .dataset import Dataset, DatasetError


def fetch(url, dest, sha256=None, sha256_env=None, pick=single_top_folder, offline_hint=None,
          what="dataset_root"):
    """Unpack the archive at ``url`` so that the folder ``dest`` holds the set, checking its
    SHA-256 where one is known (``sha256``, else the environment variable ``sha256_env``);
    DatasetError with the way out when it cannot be downloaded (``what``: the folder's name in
    the message)."""
    sha256 = sha256 or (os.environ.get(sha256_env) if sha256_env else None)
    logger.info(f"downloading {url} to {dest}")
    try:
        digest = download_and_unpack(url, dest, sha256, pick=pick)
    except DownloadError as e:
        raise DatasetError(f"{what} {dest} is missing and {e}; offline, "
                           + (offline_hint or f"download {url} elsewhere and unpack it there"))\
            from None
    if not sha256:
        logger.info(f"{os.path.basename(url)} has SHA-256 {digest}, not checked (none is pinned)"
                    + (f"; {sha256_env}={digest} makes later downloads require it"
                       if sha256_env else ""))


def root_or_fetch(dataset_root, url, root_names, set_name, **fetch_options):
    """The folder of the set: ``dataset_root`` when it exists; fetched into it when it is
    missing and named for the set; fetched into ``$SEG_HOME/dataset/<archive name>`` (once)
    when not given. ``url`` None: the set is never downloaded (PaddleSeg names no archive)."""
    if dataset_root is None:
        if url is None:
            raise DatasetError(f"{set_name} needs dataset_root: PaddleSeg downloads no archive "
                               "of it")
        dataset_root = os.path.join(seg_home(), "dataset", paddleseg_cache_name(url))
    if os.path.isdir(dataset_root):
        return dataset_root
    name = os.path.basename(os.path.normpath(dataset_root))
    if url is None:
        raise DatasetError(f"dataset_root not found: {dataset_root}")
    if name.lower() not in {n.lower() for n in root_names} | {paddleseg_cache_name(url).lower()}:
        raise DatasetError(f"dataset_root not found: {dataset_root} ({set_name} downloads only "
                           f"into a folder named {' or '.join(root_names)})")
    fetch(url, dataset_root, **fetch_options)
    return dataset_root


class ListFileSet(Dataset):
    """A downloadable set whose root holds its list files (``LISTS``: one per mode), one
    ``image label`` pair per line, as PaddleSeg's archives of DRIVE, STARE, HRF and CHASE_DB1
    are laid out. Subclasses name ``NUM_CLASSES``, ``URL`` and ``ROOT_NAMES``."""
    NUM_CLASSES = 2
    URL = None
    ROOT_NAMES = ()
    LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}

    def __init__(self, dataset_root=None, transforms=None, mode="train", edge=False):
        root = root_or_fetch(dataset_root, self.URL, self.ROOT_NAMES, type(self).__name__,
                             pick=folder_holding(self.LISTS["train"]))
        super().__init__(mode, root, transforms or [], self.NUM_CLASSES, edge=edge,
                         **{f"{mode}_path": os.path.join(root, name)
                            for mode, name in self.LISTS.items()})
