"""The task registry: task objects by name. Imports nothing, so that any module may use it.

`relation_networks.tasks` registers the built-in tasks when the package is imported; a task of one's own is a
`relation_networks.tasks.base.Task` subclass decorated with `@register`.
"""

_TASKS = {}


def register(cls):
    """Class decorator: register an instance of a `Task` subclass under its `name`."""
    if cls.name in _TASKS:
        raise ValueError(f"Task {cls.name!r} is registered twice.")
    _TASKS[cls.name] = cls()
    return cls


def get(name):
    """The registered task called `name` (`KeyError` naming the known tasks if there is none)."""
    if name not in _TASKS:
        raise KeyError(f"Unknown task {name!r}. Known tasks: {', '.join(names())}.")
    return _TASKS[name]


def names():
    """The names of the registered tasks, sorted."""
    return sorted(_TASKS)
