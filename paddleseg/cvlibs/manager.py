"""Component registries: a config names a model, dataset, transform or loss by ``type``."""


class UnknownComponentError(KeyError):
    """Raised when a config asks for a ``type`` nobody registered."""

    def __str__(self):  # KeyError would quote the message
        return self.args[0]


class ComponentManager:
    """A name -> class (or function) table filled by the ``add_component`` decorator."""

    def __init__(self, name):
        self._name = name
        self._components = {}

    def __len__(self):
        return len(self._components)

    def __contains__(self, key):
        return key in self._components

    def __repr__(self):
        return f"ComponentManager({self._name}: {sorted(self._components)})"

    @property
    def name(self):
        return self._name

    @property
    def components_dict(self):
        return dict(self._components)

    def __getitem__(self, key):
        if key not in self._components:
            raise UnknownComponentError(
                f"unknown {self._name} type '{key}'; registered {self._name}: "
                f"{', '.join(sorted(self._components))}")
        return self._components[key]

    def _add_single(self, component):
        if not callable(component):
            raise TypeError(f"{component!r} is not a class or function")
        name = component.__name__
        if name in self._components:
            raise KeyError(f"{name} is already registered in {self._name}")
        self._components[name] = component

    def add_component(self, components):
        """Register one component or a list of them; usable as a decorator."""
        if isinstance(components, (list, tuple)):
            for c in components:
                self._add_single(c)
        else:
            self._add_single(components)
        return components


MODELS = ComponentManager("models")
BACKBONES = ComponentManager("backbones")
DATASETS = ComponentManager("datasets")
TRANSFORMS = ComponentManager("transforms")
LOSSES = ComponentManager("losses")
