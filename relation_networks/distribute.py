"""The one place a `tf.distribute` strategy is built, from the config's `train.distribute` section."""

import json
import os
import tempfile

import tensorflow as tf

from relation_networks.errors import UserError


class ClusterConfigError(UserError):
    """TF_CONFIG is missing or malformed."""


def parse_tf_config(text):
    """Validate a `TF_CONFIG` JSON string; return `(cluster, task_type, task_index)`.

    Raises `ClusterConfigError` with one clear message for malformed JSON, a missing `cluster` or `task`, an
    unknown task type or an index outside the cluster.
    """
    if not text:
        raise ClusterConfigError(
            "train.distribute.strategy is 'multi_worker' but TF_CONFIG is not set. Set it on every host, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, "task": {"type": "worker", '
            '"index": 0}}\', or start local workers with tools/launch_local.py.'
        )
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ClusterConfigError(f"TF_CONFIG is not valid JSON ({e.msg} at character {e.pos}).") from None
    if not isinstance(tf_config, dict):
        raise ClusterConfigError("TF_CONFIG must be a JSON object with keys 'cluster' and 'task'.")
    cluster = tf_config.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        raise ClusterConfigError("TF_CONFIG has no 'cluster': expected {\"cluster\": {\"worker\": [\"host:port\", ...]}}.")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not all(isinstance(a, str) and ":" in a for a in addresses):
            raise ClusterConfigError(f"TF_CONFIG cluster.{job} must be a list of 'host:port' strings, got {addresses!r}.")
    task = tf_config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ClusterConfigError("TF_CONFIG has no valid 'task': expected {\"task\": {\"type\": \"worker\", \"index\": 0}}.")
    task_type, index = task["type"], task["index"]
    if task_type not in cluster:
        raise ClusterConfigError(
            f"TF_CONFIG task.type {task_type!r} is not a job of the cluster ({', '.join(sorted(cluster))})."
        )
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[task_type]):
        raise ClusterConfigError(
            f"TF_CONFIG task.index {index!r} is out of range: cluster.{task_type} has "
            f"{len(cluster[task_type])} address(es), so the index must be 0..{len(cluster[task_type]) - 1}."
        )
    return cluster, task_type, index


def make_strategy(distribute_config):
    """`tf.distribute.Strategy` for `default`, `mirrored` or `multi_worker` (from `TF_CONFIG`).

    Must be called before any other TensorFlow op in the process (a multi-worker requirement).
    """
    name = distribute_config.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    parse_tf_config(os.environ.get("TF_CONFIG", ""))
    implementation = {
        "auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
        "ring": tf.distribute.experimental.CommunicationImplementation.RING,
        "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
    }[distribute_config.communication]
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation)
    )


def worker_info(strategy):
    """`(task_type, task_id, is_chief, num_workers)` of this process under `strategy`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return None, 0, True, 1
    task_type, task_id = resolver.task_type, resolver.task_id
    cluster = resolver.cluster_spec().as_dict()
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
    return task_type, task_id, is_chief, workers


def write_dir(run_dir, strategy):
    """Where this process writes: the run directory on the chief, a temporary directory on other workers (they
    must still write checkpoints, which are collective, but their copies are thrown away)."""
    task_type, task_id, is_chief, _ = worker_info(strategy)
    if is_chief:
        return run_dir
    return tempfile.mkdtemp(prefix=f"rn-{task_type}-{task_id}-")
