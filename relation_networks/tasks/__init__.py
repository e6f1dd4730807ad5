"""The built-in tasks. A task is a data module, a model builder and a config, registered here by name.

To add one: subclass `relation_networks.tasks.base.Task`, decorate it with `@register` (from
`relation_networks.registry`), import its module below, and add `configs/<name>.yaml`. The trainer, evaluator and exporter need no changes.
"""

from relation_networks.registry import get, names, register  # noqa: F401

# Built-in tasks register themselves on import.
from relation_networks.tasks import babi, clevr, nth_farthest, physics, sort_of_clevr  # noqa: F401
