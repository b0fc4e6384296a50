import os

from paddleseg.cvlibs import manager
from .dataset import Dataset, DatasetError


@manager.DATASETS.add_component
class PPHumanSeg14K(Dataset):
    """PP-HumanSeg14K portraits (2 classes) in its release layout: ``train.txt``, ``val.txt`` and
    ``test.txt`` in the root list ``image label`` pairs (test: images alone allowed). PaddleSeg
    names no archive of it, so nothing is downloaded."""
    NUM_CLASSES = 2

    def __init__(self, dataset_root=None, transforms=None, mode="train", edge=False):
        if dataset_root is None:
            raise DatasetError("PPHumanSeg14K needs dataset_root (the PP-HumanSeg14K folder "
                               "holding train.txt, val.txt and test.txt)")
        super().__init__(mode, dataset_root, transforms or [], self.NUM_CLASSES, edge=edge,
                         **{f"{split}_path": os.path.join(dataset_root, f"{split}.txt")
                            for split in ("train", "val", "test")})
