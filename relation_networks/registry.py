"""The task registry: task objects by name. Imports nothing at import time, so that any module may use it.

The built-in tasks (`relation_networks.tasks`) are imported, and so registered, the first time a task is looked
up; a task of one's own is a `relation_networks.tasks.base.Task` subclass decorated with `@register`.
"""

import importlib

_TASKS = {}


def _load_builtin_tasks():
    importlib.import_module("relation_networks.tasks")


def register(cls):
    """Class decorator: register an instance of a `Task` subclass under its `name`."""
    if cls.name in _TASKS:
        raise ValueError(f"Task {cls.name!r} is registered twice.")
    _TASKS[cls.name] = cls()
    return cls


def get(name):
    """The registered task called `name` (`KeyError` naming the known tasks if there is none)."""
    _load_builtin_tasks()
    if name not in _TASKS:
        raise KeyError(f"Unknown task {name!r}. Known tasks: {', '.join(names())}.")
    return _TASKS[name]


def names():
    """The names of the registered tasks, sorted."""
    _load_builtin_tasks()
    return sorted(_TASKS)
