import os

from paddleseg.cvlibs import manager
from .dataset import DatasetError, LayoutDataset
from .fetched import root_or_fetch

URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"
SPLITS = ("train", "trainval", "trainaug", "val")


@manager.DATASETS.add_component
class PascalVOC(LayoutDataset):
    """Pascal VOC 2012 (21 classes, 255 ignored) in its own layout under ``dataset_root`` (the
    ``VOCdevkit`` folder): ``VOC2012/ImageSets/Segmentation/<split>.txt`` names the images,
    ``VOC2012/JPEGImages/<name>.jpg`` and ``VOC2012/SegmentationClass/<name>.png`` (palette PNGs).

    ``mode``: train, trainval, val, or trainaug: train plus the SBD images
    ``tools/voc_augment.py`` adds (as PaddleSeg's tool of that name does) (``aug.txt`` beside the split files, labels in
    ``SegmentationClassAug``). A missing root named VOCdevkit is filled from the 2 GB VOC tar.
    """
    NUM_CLASSES = 21

    def __init__(self, transforms=None, dataset_root=None, mode="train", edge=False):
        split = str(mode).lower()
        if split not in SPLITS:
            raise DatasetError(f"PascalVOC mode must be one of {', '.join(SPLITS)}, got {mode!r}")
        root = root_or_fetch(dataset_root, URL, ("VOCdevkit",), "PascalVOC")
        pairs = voc_pairs(os.path.join(root, "VOC2012"), split)
        # ``mode`` says how items are made (a train split's labels move with its images)
        super().__init__("val" if split == "val" else "train", root, transforms or [],
                         self.NUM_CLASSES, pairs, edge=edge)
        self.split = split   # PaddleSeg's mode


def voc_pairs(voc_dir, split):
    """(image, label) paths of a split; trainaug: train's, then aug.txt's with the SBD labels."""
    sets = os.path.join(voc_dir, "ImageSets", "Segmentation")
    if split == "trainaug" and not os.path.isfile(os.path.join(sets, "aug.txt")):
        raise DatasetError(f"PascalVOC mode trainaug needs {os.path.join(sets, 'aug.txt')} and "
                           "VOC2012/SegmentationClassAug: run tools/voc_augment.py "
                           "--voc_path on this VOCdevkit first, or use mode train")
    lists = [("train" if split == "trainaug" else split, "SegmentationClass")]
    if split == "trainaug":
        lists.append(("aug", "SegmentationClassAug"))
    pairs = []
    for list_name, label_dir in lists:
        list_path = os.path.join(sets, list_name + ".txt")
        if not os.path.isfile(list_path):
            raise DatasetError(f"PascalVOC {split} split not found: expected {list_path}")
        with open(list_path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        pairs += [(os.path.join(voc_dir, "JPEGImages", name + ".jpg"),
                   os.path.join(voc_dir, label_dir, name + ".png")) for name in names]
    for img, label in pairs:
        for path in (img, label):
            if not os.path.isfile(path):
                raise DatasetError(f"PascalVOC {split}: {path} is missing")
    if not pairs:
        raise DatasetError(f"PascalVOC {split} split names no images")
    return pairs
