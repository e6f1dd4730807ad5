"""Keras 3 layers of the library.

Backends: every layer is written with `keras.ops` and runs under Keras's TensorFlow and JAX backends (both tested:
tests/test_backends.py); the one exception is `RelationModule(pair_chunk_size=...)`, which recomputes blocks of
pairs with `tf.custom_gradient` and refuses other backends with a clear `ValueError`. The trainer, the tasks'
data pipelines and the export are TensorFlow (tf.data, tf.distribute, SavedModel, TFLite).
"""

from relation_networks.layers import physics_readouts  # noqa: F401  (registers the physics read-out layers)
from relation_networks.layers.conv_objects import ConvObjectExtractor, cell_coordinates
from relation_networks.layers.relation_module import POOLED_AGGREGATIONS, RelationModule
from relation_networks.layers.relational_memory import RelationalMemory
from relation_networks.layers.sentence_objects import SentenceObjects

__all__ = ["POOLED_AGGREGATIONS", "ConvObjectExtractor", "RelationModule", "RelationalMemory", "SentenceObjects", "cell_coordinates"]
