import glob
import os

from paddleseg.cvlibs import manager
from .dataset import DatasetError, LayoutDataset


@manager.DATASETS.add_component
class Cityscapes(LayoutDataset):
    """Cityscapes in its own layout: ``leftImg8bit/<mode>/<city>/*_leftImg8bit.png`` and
    ``gtFine/<mode>/<city>/*_gtFine_labelTrainIds.png`` (19 classes, 255 ignored).

    Make the labelTrainIds files with cityscapesscripts' createTrainIdLabelImgs.
    """
    NUM_CLASSES = 19

    def __init__(self, transforms, dataset_root, mode="train", edge=False):
        mode = str(mode).lower()
        img_dir = os.path.join(dataset_root or "", "leftImg8bit", mode)
        label_dir = os.path.join(dataset_root or "", "gtFine", mode)
        if not os.path.isdir(img_dir) or not os.path.isdir(label_dir):
            raise DatasetError(f"Cityscapes {mode} split not found: expected {img_dir} and {label_dir}")
        labels = sorted(glob.glob(os.path.join(label_dir, "*", "*_gtFine_labelTrainIds.png")))
        if not labels:
            raise DatasetError(f"no *_gtFine_labelTrainIds.png under {label_dir} "
                               "(run cityscapesscripts' createTrainIdLabelImgs)")
        pairs = []
        for label in labels:
            city = os.path.basename(os.path.dirname(label))
            stem = os.path.basename(label)[:-len("_gtFine_labelTrainIds.png")]
            img = os.path.join(img_dir, city, stem + "_leftImg8bit.png")
            if not os.path.isfile(img):
                raise DatasetError(f"label {label} has no image {img}")
            pairs.append((img, label))
        super().__init__(mode, dataset_root, transforms, self.NUM_CLASSES, pairs, edge=edge)
