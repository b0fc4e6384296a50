from paddleseg.cvlibs import manager
from .fetched import ListFileSet


@manager.DATASETS.add_component
class CHASEDB1(ListFileSet):
    """CHASE_DB1 retinal vessels (28 fundus images, 999x960; 2 classes), in the layout of
    PaddleSeg's archive: ``train_list.txt`` and ``val_list.txt`` in the root. A missing root
    named CHASE_DB1 (PaddleSeg's config says ``data/CHASE_DB1``) is filled from that archive."""
    URL = "https://bj.bcebos.com/paddleseg/dataset/chase_db1/chase_db1.zip"
    ROOT_NAMES = ("CHASE_DB1",)
