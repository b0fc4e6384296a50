from paddleseg.cvlibs import manager
from .fetched import ListFileSet


@manager.DATASETS.add_component
class STARE(ListFileSet):
    """STARE retinal vessels (20 fundus images, 700x605; 2 classes), in the layout of PaddleSeg's
    archive: ``train_list.txt`` and ``val_list.txt`` in the root. A missing root named STARE
    (PaddleSeg's config says ``data/STARE``) is filled from that archive."""
    URL = "https://bj.bcebos.com/paddleseg/dataset/stare/stare.zip"
    ROOT_NAMES = ("STARE",)
