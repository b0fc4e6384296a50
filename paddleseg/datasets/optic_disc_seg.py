import os

from paddleseg.cvlibs import manager
from paddleseg.utils.download import folder_holding
from .dataset import Dataset, DatasetError
from .fetched import fetch

URL = "https://paddleseg.bj.bcebos.com/dataset/optic_disc_seg.zip"
# PaddleSeg publishes no digest for the zip, and none was found stated anywhere: until one is
# pinned here (or given as SEG_OPTIC_DISC_SHA256 / --sha256), the digest is logged, not checked.
SHA256 = None
SHA256_ENV = "SEG_OPTIC_DISC_SHA256"
DEFAULT_ROOT = os.path.join("data", "optic_disc_seg")
GENERATOR_HINT = ("python tools/make_synthetic_optic_disc.py --save_dir {root} "
                  "writes a synthetic set in the same layout")


def download_optic_disc(dataset_root, url=URL, sha256=None):
    """Fetch and unpack optic_disc_seg.zip so that ``dataset_root`` holds its contents, checking
    the archive's SHA-256 when one is known (``sha256``, $SEG_OPTIC_DISC_SHA256 or SHA256)."""
    fetch(url, dataset_root, sha256 or os.environ.get(SHA256_ENV) or SHA256, SHA256_ENV,
          pick=folder_holding("train_list.txt"),
          offline_hint=GENERATOR_HINT.format(root=dataset_root))


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
