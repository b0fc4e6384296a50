import os
import shutil
import urllib.request
import zipfile

from paddleseg.cvlibs import manager
from paddleseg.utils import logger
from paddleseg.utils.fileio import atomic_path
from .dataset import Dataset, DatasetError

URL = "https://paddleseg.bj.bcebos.com/dataset/optic_disc_seg.zip"
DEFAULT_ROOT = os.path.join("data", "optic_disc_seg")
GENERATOR_HINT = ("python tools/make_synthetic_optic_disc.py --save_dir {root} "
                  "writes a synthetic set in the same layout")


def download_optic_disc(dataset_root, url=URL):
    """Fetch and unpack optic_disc_seg.zip so that ``dataset_root`` holds its contents."""
    parent = os.path.dirname(os.path.abspath(dataset_root))
    os.makedirs(parent, exist_ok=True)
    logger.info(f"downloading {url} to {dataset_root}")
    try:
        with atomic_path(os.path.join(parent, "optic_disc_seg.zip")) as tmp_zip:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp_zip, "wb") as f:
                shutil.copyfileobj(r, f)
            with atomic_path(dataset_root) as tmp_dir:
                with zipfile.ZipFile(tmp_zip) as z:
                    z.extractall(tmp_dir)
                inner = os.path.join(tmp_dir, "optic_disc_seg")
                if os.path.isdir(inner):  # the zip holds one top-level folder
                    os.rename(inner, tmp_dir + ".inner")
                    os.rmdir(tmp_dir)
                    os.rename(tmp_dir + ".inner", tmp_dir)
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetError(f"dataset_root {dataset_root} is missing and downloading {url} failed "
                           f"({type(e).__name__}); offline, " + GENERATOR_HINT.format(root=dataset_root)) from None


@manager.DATASETS.add_component
class OpticDiscSeg(Dataset):
    """The optic-disc segmentation set PaddleSeg's quick start uses (2 classes).

    ``dataset_root`` not given, or a missing folder named ``optic_disc_seg`` -> the public zip
    is downloaded there.
    """
    NUM_CLASSES = 2

    def __init__(self, dataset_root=None, transforms=None, mode="train", edge=False):
        root = dataset_root or DEFAULT_ROOT
        if not os.path.isdir(root):
            # only a folder meant for this data set is filled by downloading
            if os.path.basename(os.path.normpath(root)) != os.path.basename(DEFAULT_ROOT):
                raise DatasetError(f"dataset_root not found: {root} (OpticDiscSeg downloads "
                                   f"only into a folder named {os.path.basename(DEFAULT_ROOT)})")
            download_optic_disc(root)
        super().__init__(mode, root, transforms or [], self.NUM_CLASSES,
                         train_path=os.path.join(root, "train_list.txt"),
                         val_path=os.path.join(root, "val_list.txt"),
                         test_path=os.path.join(root, "test_list.txt"), edge=edge)
