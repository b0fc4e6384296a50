"""The component registries (``paddleseg.cvlibs.manager``)."""
import pytest

import paddleseg.datasets  # noqa: F401  (registers the components)
import paddleseg.models  # noqa: F401
import paddleseg.transforms  # noqa: F401
from paddleseg.cvlibs import manager
from paddleseg.cvlibs.manager import ComponentManager, UnknownComponentError


def test_add_component_as_decorator_registers_and_returns_the_class():
    mgr = ComponentManager("widgets")

    @mgr.add_component
    class Gadget:
        pass

    assert Gadget.__name__ == "Gadget" and isinstance(Gadget, type)  # the decorator kept it
    assert "Gadget" in mgr and len(mgr) == 1
    assert mgr["Gadget"] is Gadget
    assert mgr.components_dict == {"Gadget": Gadget}
    assert mgr.name == "widgets"


def test_add_component_takes_a_list_and_functions():
    mgr = ComponentManager("widgets")

    class A:
        pass

    def make_b():
        return "b"

    mgr.add_component([A, make_b])
    assert mgr["A"] is A and mgr["make_b"]() == "b"
    assert len(mgr) == 2


def test_duplicate_name_is_refused_and_first_kept():
    mgr = ComponentManager("widgets")

    class Thing:
        pass

    mgr.add_component(Thing)
    first = Thing

    class Thing:  # noqa: F811  (same name, another class)
        pass

    with pytest.raises(KeyError, match="Thing is already registered in widgets"):
        mgr.add_component(Thing)
    assert mgr["Thing"] is first and len(mgr) == 1


def test_not_callable_is_refused():
    mgr = ComponentManager("widgets")
    with pytest.raises(TypeError):
        mgr.add_component(42)
    assert len(mgr) == 0


def test_unknown_key_error_lists_the_registered_names():
    mgr = ComponentManager("widgets")
    for name in ("Zeta", "Alpha", "Mid"):
        mgr.add_component(type(name, (), {}))
    with pytest.raises(UnknownComponentError) as info:
        mgr["Nope"]
    msg = str(info.value)
    assert isinstance(info.value, KeyError)
    assert "unknown widgets type 'Nope'" in msg
    assert "Alpha, Mid, Zeta" in msg  # sorted, all of them
    assert not msg.startswith(("'", '"'))  # not KeyError's quoted repr


def test_global_managers_hold_the_packages_components():
    for name in ("BiSeNetV2", "UNet", "FastSCNN", "HarDNet", "FCN"):
        assert name in manager.MODELS, name
    for name in ("Dataset", "OpticDiscSeg", "Cityscapes"):
        assert name in manager.DATASETS, name
    for name in ("Resize", "ResizeStepScaling", "RandomPaddingCrop", "RandomHorizontalFlip",
                 "RandomVerticalFlip", "RandomDistort", "Normalize"):
        assert name in manager.TRANSFORMS, name
    for name in ("CrossEntropyLoss", "OhemCrossEntropyLoss", "DiceLoss"):
        assert name in manager.LOSSES, name
    assert "HRNet_W18" in manager.BACKBONES
    assert "Resize" not in manager.MODELS  # the tables are separate
