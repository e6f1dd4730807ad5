"""Relation Networks (Santoro et al. 2017) and the Relational Memory Core (Santoro et al. 2018) in Keras 3.

The layers load on first use (`relation_networks.RelationModule`), so that importing a light module of the
package (`relation_networks.errors`, `relation_networks.config`) does not start TensorFlow; the built-in tasks
register themselves when the registry is first asked for one (`relation_networks.registry`).
"""

__version__ = "0.1.0"
__all__ = ["ConvObjectExtractor", "RelationModule", "RelationalMemory", "SentenceObjects"]


def __getattr__(name):
    if name in __all__:
        from relation_networks import layers

        return getattr(layers, name)
    raise AttributeError(f"module 'relation_networks' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
