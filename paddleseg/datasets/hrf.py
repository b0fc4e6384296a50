from paddleseg.cvlibs import manager
from .fetched import ListFileSet


@manager.DATASETS.add_component
class HRF(ListFileSet):
    """HRF retinal vessels (45 fundus images, 3504x2336; 2 classes), in the layout of PaddleSeg's
    archive: ``train_list.txt`` and ``val_list.txt`` in the root. A missing root named HRF
    (PaddleSeg's config says ``data/HRF``) is filled from that archive."""
    URL = "https://bj.bcebos.com/paddleseg/dataset/hrf/hrf.zip"
    ROOT_NAMES = ("HRF",)
