"""Each task's data: generators (Sort-of-CLEVR, physics, Nth-farthest) and readers of the official formats (bAbI,
CLEVR), one module per task. The tasks in `relation_networks.tasks` turn them into `tf.data` pipelines."""
