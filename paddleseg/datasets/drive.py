from paddleseg.cvlibs import manager
from .fetched import ListFileSet


@manager.DATASETS.add_component
class DRIVE(ListFileSet):
    """DRIVE retinal vessels (40 fundus images, 565x584; 2 classes), in the layout of PaddleSeg's
    archive: ``train_list.txt`` and ``val_list.txt`` in the root. A missing root named DRIVE
    (PaddleSeg's config says ``data/DRIVE``) is filled from that archive."""
    URL = "https://bj.bcebos.com/paddleseg/dataset/drive/drive.zip"
    ROOT_NAMES = ("DRIVE",)
