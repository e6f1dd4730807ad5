"""Task registry. A task is a data module, a model builder and a config, registered here by name.

To add one: subclass `relation_networks.tasks.base.Task`, decorate it with `@register`, import its module
below, and add `configs/<name>.yaml`. The trainer, evaluator and exporter need no changes.
"""

_REGISTRY = {}


def register(cls):
    """Class decorator: register a `Task` subclass under its `name`."""
    if cls.name in _REGISTRY:
        raise ValueError(f"Task {cls.name!r} is registered twice.")
    _REGISTRY[cls.name] = cls()
    return cls


def get(name):
    if name not in _REGISTRY:
        raise KeyError(f"Unknown task {name!r}. Known tasks: {', '.join(names())}.")
    return _REGISTRY[name]


def names():
    return sorted(_REGISTRY)


# Built-in tasks register themselves on import.
from relation_networks.tasks import babi, clevr, nth_farthest, physics, sort_of_clevr  # noqa: E402,F401
