"""The generic list-file dataset every other dataset builds on."""
import os

import numpy as np
import paddle

from paddleseg.cvlibs import manager
from paddleseg.transforms import Compose
from paddleseg.utils.errors import UserError
from paddleseg.utils.image_io import read_label

IGNORE_INDEX = 255


class DatasetError(UserError):
    pass


def check_same_size(img, label, img_path, label_path):
    """DatasetError naming the pair when a label's size is not its image's: the transforms
    would resize both silently in training, and evaluation would compare unlike pixels."""
    if img.shape[:2] != label.shape[:2]:
        raise DatasetError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its image "
                           f"{img_path} is {img.shape[1]}x{img.shape[0]} (width x height)")


@manager.DATASETS.add_component
class Dataset(paddle.io.Dataset):
    """Images and labels named in list files, one ``image_path label_path`` pair per line,
    relative to ``dataset_root`` (or absolute).

    Labels are single-channel PNGs with class ids; 255 is ignored.
    """

    def __init__(self, mode, dataset_root, transforms, num_classes, img_channels=3,
                 train_path=None, val_path=None, test_path=None, separator=" ",
                 ignore_index=IGNORE_INDEX, edge=False):
        self.mode = str(mode).lower()
        if self.mode not in ("train", "val", "test"):
            raise DatasetError(f"mode must be train, val or test, got {mode!r}")
        self.dataset_root = dataset_root
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.edge = edge
        self.transforms = Compose(transforms, img_channels=img_channels)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise DatasetError(f"num_classes must be a positive integer, got {num_classes!r}")
        if dataset_root is None or not os.path.isdir(dataset_root):
            raise DatasetError(f"dataset_root not found: {dataset_root}")
        list_path = {"train": train_path, "val": val_path, "test": test_path}[self.mode]
        if list_path is None:
            raise DatasetError(f"no {self.mode}_path given for the {self.mode} split of {dataset_root}")
        self.file_list = self.read_list_file(list_path, separator)

    def resolve(self, path):
        return path if os.path.isabs(path) else os.path.join(self.dataset_root, path)

    def read_list_file(self, list_path, separator):
        if not os.path.isfile(list_path):
            list_path_in_root = self.resolve(list_path)
            if not os.path.isfile(list_path_in_root):
                raise DatasetError(f"list file not found: {list_path}")
            list_path = list_path_in_root
        if not isinstance(separator, str) or not separator:
            raise DatasetError(f"separator must be a non-empty string, got {separator!r}")
        pairs = []
        with open(list_path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8").strip()
                except UnicodeDecodeError as e:
                    raise DatasetError(f"{list_path}:{lineno}: not UTF-8 text (byte "
                                       f"{raw[e.start]:#04x} at column {e.start + 1}); list "
                                       "files must be saved as UTF-8") from None
                if not line:
                    continue
                items = line.split(separator)
                if len(items) == 1 and self.mode == "test":
                    items = [items[0], None]
                if len(items) != 2:
                    raise DatasetError(self._line_error(list_path, lineno, line, items, separator))
                pairs.append(tuple(self.resolve(p) if p else None for p in items))
        if not pairs:
            raise DatasetError(f"list file {list_path} names no images")
        for img, label in pairs:
            for p in (img, label):
                if p is not None and not os.path.isfile(p):
                    raise DatasetError(f"{list_path} names a missing file: {p}")
        return pairs

    def _line_error(self, list_path, lineno, line, items, separator):
        """Why a list-file line does not split into image and label (PaddleSeg 2.6 splits at
        every ``separator`` too, so a name that contains it cannot be listed with it)."""
        sep = "a space" if separator == " " else repr(separator)
        want = f"'image{separator}label'" + (" or 'image'" if self.mode == "test" else "")
        msg = (f"{list_path}:{lineno}: expected {want} (fields separated by {sep}), got "
               f"{len(items)} fields in {line!r}")
        if len(items) > 2:
            msg += (f"; file names containing {sep} are not supported with this separator: "
                    "rename them, or use the generic Dataset type with another separator "
                    "(e.g. separator: '|') in the config and in the list file")
        return msg

    def read_label(self, path):
        """The label's class ids, read as PaddleSeg reads them (a palette PNG's indices)."""
        try:
            label = read_label(path)
        except UserError as e:
            raise DatasetError(str(e)) from None
        if label.ndim == 3:
            raise DatasetError(f"label {path} has {label.shape[2]} channels; labels must be "
                               "single-channel PNGs of class ids")
        bad = (label >= self.num_classes) & (label != self.ignore_index)
        if bad.any():
            raise DatasetError(f"label {path} has value {int(label[bad].max())} but num_classes is "
                               f"{self.num_classes} (valid: 0..{self.num_classes - 1} and {self.ignore_index})")
        return label

    def __getitem__(self, idx):
        img_path, label_path = self.file_list[idx]
        data = {"img": img_path, "img_path": img_path, "label_path": label_path,
                "trans_info": [], "gt_fields": []}
        if label_path is not None:
            data["img"] = self.transforms.read_image(img_path)
            data["label"] = self.read_label(label_path)
            check_same_size(data["img"], data["label"], img_path, label_path)
            # in val/test the label stays at its original size; predictions are mapped back
            if self.mode == "train":
                data["gt_fields"].append("label")
        data = self.transforms(data)
        if "label" in data:
            data["label"] = data["label"].astype(np.int64)
        return data

    def __len__(self):
        return len(self.file_list)


class LayoutDataset(Dataset):
    """A data set in its own folder layout, not list files: the subclass finds its (image,
    label) ``pairs`` and hands them over; everything else is Dataset's."""

    def __init__(self, mode, dataset_root, transforms, num_classes, pairs, edge=False):
        self._pairs = pairs
        mode = str(mode).lower()
        split = {f"{mode}_path": "<layout>"} if mode in ("train", "val", "test") else {}
        super().__init__(mode, dataset_root, transforms, num_classes, edge=edge, **split)

    def read_list_file(self, list_path, separator):
        return self._pairs
