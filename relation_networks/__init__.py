"""Relation Networks (Santoro et al. 2017) and the Relational Memory Core (Santoro et al. 2018) in Keras 3."""

from relation_networks.layers import ConvObjectExtractor, RelationalMemory, RelationModule, SentenceObjects

__version__ = "0.1.0"
__all__ = ["ConvObjectExtractor", "RelationModule", "RelationalMemory", "SentenceObjects"]
