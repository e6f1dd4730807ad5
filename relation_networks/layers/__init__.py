"""Keras 3 layers of the library."""

from relation_networks.layers.conv_objects import ConvObjectExtractor, cell_coordinates
from relation_networks.layers.relation_module import POOLED_AGGREGATIONS, RelationModule
from relation_networks.layers.relational_memory import RelationalMemory
from relation_networks.layers.sentence_objects import SentenceObjects

__all__ = ["POOLED_AGGREGATIONS", "ConvObjectExtractor", "RelationModule", "RelationalMemory", "SentenceObjects", "cell_coordinates"]
