"""Keras 3 layers of the library."""

from relation_networks.layers.conv_objects import ConvObjectExtractor, cell_coordinates
from relation_networks.layers.relation_module import RelationModule

__all__ = ["ConvObjectExtractor", "RelationModule", "cell_coordinates"]
