"""Relation Networks (Santoro et al. 2017) and the Relational Memory Core (Santoro et al. 2018) in Keras 3."""

from relation_networks.layers import ConvObjectExtractor, RelationalMemory, RelationModule, SentenceObjects
from relation_networks import tasks  # noqa: F401,E402  (registers the built-in tasks)

__version__ = "0.1.0"
__all__ = ["ConvObjectExtractor", "RelationModule", "RelationalMemory", "SentenceObjects"]
