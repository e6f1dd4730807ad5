"""Dynamic physical systems (paper section 5.5, appendix F): connection inference and counting systems."""

import dataclasses
import os
import typing

import keras
import numpy as np
import tensorflow as tf

from relation_networks import tasks
from relation_networks.config import ConfigError, bounded, choice, positive, seed_field
from relation_networks.data import physics
from relation_networks.errors import DataError
from relation_networks.evaluation import grouped_accuracy
from relation_networks.layers import POOLED_AGGREGATIONS, RelationModule
from relation_networks.layers.physics_readouts import BallIdentity, PairContext, PairLogits, SystemCount
from relation_networks.models import logits_model, mlp
from relation_networks.tasks.base import Task


@dataclasses.dataclass
class PhysicsData:
    dir: str = "data/physics"
    target: str = choice("connections", ("connections", "count"))
    seed: int = seed_field(0)
    num_balls: int = positive(10)
    frames: int = positive(16)
    train_scenes: int = positive(50000)
    val_scenes: int = positive(2000)
    test_scenes: int = positive(5000)
    frame_stride: int = physics.FRAME_STRIDE  # simulation steps (5 ms each) between observed frames
    burn_in: int = physics.BURN_IN  # simulation steps before the first observed frame
    stiffness: float = physics.STIFFNESS  # springs (unit masses)
    spring_damping: float = physics.SPRING_DAMPING
    workers: int = bounded(0, low=0)  # simulation processes (0: one per core)
    # Training only: each scene is shown under a random symmetry of the simulation that keeps its labels -- one of
    # the square table's 8 reflections/rotations (x -> -x, y -> -y, swap x and y), and a random renaming of the
    # balls (rows and the connection matrix permuted alike; each row keeps the colour of its position), since which
    # ball is linked to which is drawn independently of its index.
    augment: bool = False


@dataclasses.dataclass
class PhysicsModel:
    type: str = choice("rn", ("rn", "mlp"))
    g_units: typing.List[int] = positive([1000, 1000, 1000, 500], nonempty=True)
    f_units: typing.List[int] = positive([500, 100], nonempty=True)  # + linear outputs
    mlp_units: typing.List[int] = positive([1000, 1000, 1000, 500, 100], nonempty=True)
    aggregation: str = choice("sum", POOLED_AGGREGATIONS)
    # How the model reads each ball's colour value: "one_hot" expands it to a one-hot ball identity (the
    # connection logits are indexed by ball, so the model must tell the balls apart; a single scalar makes every
    # identity a narrow interval that the first layer has to carve out); "scalar" feeds the value as it is.
    identity: str = choice("one_hot", ("one_hot", "scalar"))
    # Under mixed precision, compute g_theta's first layer in float32 (RelationModule(precise_first_layer=True)):
    # a rigid link keeps its pair's distance to ~0.01%, a spring to ~0.3%, far below bfloat16's ~0.4% rounding of
    # each coordinate. The ball rows then reach the relation module unrounded.
    precise_first_layer: bool = False
    # How the connection logits are read out. "aggregate" (the paper): f_phi on the sum of all pair relations
    # outputs all num_balls**2 logits at once, so g_theta has to write each pair's link into a direction of the sum
    # reserved for that pair. "pairs": no sum; f_phi reads each pair's relation and outputs that pair's logit
    # (RelationModule(aggregation="none")), symmetrised over (i, j) and (j, i). Connections only.
    # "components" (counting only; not the paper's architecture): the same per-pair logits are link
    # probabilities, and a fixed read-out counts the connected systems they imply (`SystemCount`: transitive
    # closure by the most probable path, then the sum over balls of 1 / the size of each ball's system). Trained
    # on the count labels alone, like the paper's counter: which pairs are linked is never shown.
    readout: str = choice("aggregate", ("aggregate", "pairs", "components"))
    # A first relation stage that gives every ball the context of its relations to all the others before the read-out
    # (0: none; RN only, either read-out). Its g_theta (`context_g_units`) and a linear layer map each pair to a
    # `context_units`-wide message; each ball's row gets the mean of the messages of its pairs with the other balls
    # appended (`PairContext`). A pair's relation then also sees how each of its two balls relates to the rest --
    # e.g. that both are linked to a third ball, which keeps an unlinked pair's distance nearly constant too, or
    # that a link closes a cycle (the number of systems is not ten minus the links then: a cycle's last link joins
    # no new ball).
    context_units: int = bounded(0, low=0)
    context_g_units: typing.List[int] = positive([128, 128], nonempty=True)


def augment(balls, connections, seed, frames):
    """A random symmetry of each scene of a batch (`PhysicsData.augment`): `balls [B, n, 2 * frames + 1]`,
    `connections [B, n * n]` -> the same scenes, each reflected/rotated and with its balls renamed. `seed` is a
    `[2]` stateless seed. Vectorised over a block of scenes: applied scene by scene, its dozen small ops took
    about 40 s of every 50,000-scene epoch on one core."""
    flip_seed, order_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    batch, n = tf.shape(balls)[0], balls.shape[1]
    flips = tf.random.stateless_uniform((batch, 3, 1, 1), flip_seed) < 0.5
    x, y, colour = balls[..., :frames], balls[..., frames:2 * frames], balls[..., 2 * frames:]
    x = tf.where(flips[:, 0], -x, x)
    y = tf.where(flips[:, 1], -y, y)
    x, y = tf.where(flips[:, 2], y, x), tf.where(flips[:, 2], x, y)
    order = tf.argsort(tf.random.stateless_uniform((batch, n), order_seed), axis=-1)
    renamed = tf.concat([tf.gather(tf.concat([x, y], -1), order, batch_dims=1), colour], axis=-1)
    matrix = tf.reshape(connections, (batch, n, n))
    matrix = tf.gather(tf.gather(matrix, order, axis=1, batch_dims=1), order, axis=2, batch_dims=1)
    return renamed, tf.reshape(matrix, (batch, n * n))


def table_symmetry(flip_x, flip_y, swap, frames):
    """One of the eight symmetries of the square table (`Physics.symmetries`) as `fn(features) -> features`:
    negate x, negate y, then swap x and y, in every frame of every ball. Connections and systems are unchanged."""
    def view(features):
        balls = features["balls"]
        x, y, colour = balls[..., :frames], balls[..., frames:2 * frames], balls[..., 2 * frames:]
        x, y = (-x if flip_x else x), (-y if flip_y else y)
        if swap:
            x, y = y, x
        return {**features, "balls": np.concatenate([x, y, colour], axis=-1)}
    return view


def simulation_settings(data_config):
    """The keyword arguments of `physics.simulate_scene` that a data config sets, checked (`ConfigError`)."""
    d = data_config
    for name, value, low in (("frame_stride", d.frame_stride, 1), ("burn_in", d.burn_in, 0),
                             ("stiffness", d.stiffness, 0), ("spring_damping", d.spring_damping, 0)):
        if value < low:
            raise ConfigError(f"data.{name} must be at least {low}, got {value}.")
    return {"num_balls": d.num_balls, "frames": d.frames, "frame_stride": d.frame_stride, "burn_in": d.burn_in,
            "stiffness": d.stiffness, "spring_damping": d.spring_damping}


def check_readout(model_config, data_config):
    """`ConfigError` unless the read-out, and the context stage before it, suit the model and target (checked
    before any data is simulated)."""
    if model_config.readout == "pairs" and (model_config.type != "rn" or data_config.target != "connections"):
        raise ConfigError("model.readout=pairs reads one connection logit per pair: it needs model.type=rn and "
                          f"data.target=connections (got {model_config.type} and {data_config.target}).")
    if model_config.readout == "components" and (model_config.type != "rn" or data_config.target != "count"):
        raise ConfigError("model.readout=components counts the systems that per-pair link logits imply: it needs "
                          f"model.type=rn and data.target=count (got {model_config.type} and {data_config.target}).")
    if model_config.context_units and model_config.type != "rn":
        raise ConfigError("model.context_units adds a relation stage before the read-out: it needs model.type=rn "
                          f"(got {model_config.type}).")


def build_model(model_config, data_config):
    """Input `balls` float32 `[B, num_balls, 2 * frames + 1]`; output logits: `num_balls**2` connection logits
    (row-major pairs) or `num_balls` system-count logits (count k = class k - 1)."""
    n = data_config.num_balls
    balls = keras.Input((n, 2 * data_config.frames + 1), name="balls")
    outputs = n * n if data_config.target == "connections" else n
    # float32: the layer only rearranges features, and must not round the coordinates under a mixed policy.
    objects = (BallIdentity(n, name="ball_identity", dtype="float32")(balls) if model_config.identity == "one_hot"
               else balls)
    check_readout(model_config, data_config)
    if model_config.context_units:
        messages = RelationModule(model_config.context_g_units, [model_config.context_units], aggregation="none",
                                  precise_first_layer=model_config.precise_first_layer,
                                  name="context_module")(objects)
        objects = PairContext(name="pair_context", dtype="float32")(objects, messages)
    if model_config.readout in ("pairs", "components"):
        pair_logits = RelationModule(model_config.g_units, list(model_config.f_units) + [1], aggregation="none",
                                     precise_first_layer=model_config.precise_first_layer,
                                     name="relation_module")(objects)
        logits = PairLogits(name="pair_logits", dtype="float32")(pair_logits)
        if model_config.readout == "components":
            logits = SystemCount(name="system_count", dtype="float32")(logits)
    elif model_config.type == "rn":
        logits = RelationModule(model_config.g_units, list(model_config.f_units) + [outputs],
                                aggregation=model_config.aggregation, precise_first_layer=model_config.precise_first_layer,
                                name="relation_module")(objects)
    else:
        h = mlp(keras.layers.Flatten(name="flatten")(objects), model_config.mlp_units, "mlp")
        logits = keras.layers.Dense(outputs, name="mlp_logits")(h)
    return logits_model({"balls": balls}, logits, f"physics_{data_config.target}_{model_config.type}")


_SPLITS = {}  # (path, modification time, size, num_balls, frames) -> the split's arrays


def _read_split(path, num_balls, frames):
    """A split's `(balls, connections, systems)` arrays, read from its TFRecord file once per process.

    The trainer builds a new input pipeline every epoch; re-reading and re-parsing the file each time cost up to
    half a minute per epoch where the page cache does not keep it (50,000 scenes are 86 MB in memory)."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size, num_balls, frames)
    if key not in _SPLITS:
        records = tf.data.TFRecordDataset(path).map(lambda r: physics.parse_example(r, num_balls, frames))
        try:
            parts = list(records.batch(4096).as_numpy_iterator())
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path} is damaged ({first}). Delete its directory {os.path.dirname(path)} and run the "
                            "same command again: the scenes are simulated again, identically, from their seed.") from None
        if parts:
            arrays = tuple(np.concatenate([part[k] for part in parts]) for k in range(3))
        else:
            arrays = (np.zeros((0, num_balls, 2 * frames + 1), np.float32),
                      np.zeros((0, num_balls * num_balls), np.float32), np.zeros((0,), np.int64))
        _SPLITS[key] = arrays
    return _SPLITS[key]


@tasks.register
class Physics(Task):
    name = "physics"
    data_config = PhysicsData
    model_config = PhysicsModel

    def _sizes(self, d):
        return {"train": d.train_scenes, "val": d.val_scenes, "test": d.test_scenes}

    def _directory(self, config, log=print):
        d = config.data
        return physics.prepare(d.dir, d.seed, self._sizes(d), log=log, workers=d.workers or None,
                               **simulation_settings(d))

    def prepare(self, config, log=print):
        check_readout(config.model, config.data)
        self._directory(config, log=log)

    def num_examples(self, config, split):
        if split not in self._sizes(config.data):
            raise DataError(f"Unknown physics split {split!r}; expected train, val or test.")
        return self._sizes(config.data)[split]

    def arrays(self, config, split):
        """A split's scenes as arrays, simulated first if needed: `balls [S, n, 2 * frames + 1]`, `connections
        [S, n * n]` (0/1, row-major) and `systems [S]` (the number of connected systems)."""
        d = config.data
        self.num_examples(config, split)
        path = os.path.join(self._directory(config, log=lambda *_: None), f"{split}.tfrecord")
        return _read_split(path, d.num_balls, d.frames)

    def dataset(self, config, split, *, training=False, shuffle=None, seed=0, input_context=None):
        d = config.data
        ds = tf.data.Dataset.from_tensor_slices(self.arrays(config, split))
        if training if shuffle is None else shuffle:
            ds = ds.shuffle(100_000, seed=seed, reshuffle_each_iteration=False)
        ds = self.shard(ds, input_context)
        if training and d.augment:  # in blocks of scenes (see `augment`), each block with its own seed
            def augmented(index, block):
                balls, connections, systems = block
                balls, connections = augment(balls, connections, tf.stack([tf.cast(seed, tf.int64), index]), d.frames)
                return balls, connections, systems

            ds = ds.batch(256).enumerate().map(augmented).unbatch()
        if d.target == "connections":
            return ds.map(lambda o, c, s: ({"balls": o}, c))
        return ds.map(lambda o, c, s: ({"balls": o}, tf.cast(s - 1, tf.int32)))

    def build_model(self, config):
        return build_model(config.model, config.data)

    def loss(self, config, labels, logits):
        if config.data.target == "connections":  # 100 independent yes/no outputs
            per_pair = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)
            return tf.reduce_mean(per_pair, axis=-1)
        return super().loss(config, labels, logits)

    def correct(self, config, labels, logits):
        if config.data.target == "connections":  # a scene counts when every pair is right
            return tf.cast(tf.reduce_all(tf.equal(logits > 0, labels > 0.5), axis=-1), tf.float32)
        return super().correct(config, labels, logits)

    def multilabel(self, config):
        return config.data.target == "connections"

    def symmetries(self, config):
        return [table_symmetry(flip_x, flip_y, swap, config.data.frames)
                for flip_x in (False, True) for flip_y in (False, True) for swap in (False, True)]

    def paper_results(self, config):
        if config.model.type != "rn":
            return {}
        return {"scenes_all_correct": 0.93} if config.data.target == "connections" else {"accuracy": 0.95}

    def metric_names(self, config):
        if config.data.target == "connections":
            return ["scenes_all_correct", "pair_accuracy", "count_from_connections"]
        return ["accuracy"]

    def evaluate(self, predict_fn, config, split, batch_size=256):
        _, labels, logits = self.predictions(predict_fn, config, split, batch_size)
        n = config.data.num_balls
        if config.data.target == "connections":
            predicted = logits > 0
            truth = labels > 0.5
            off_diagonal = ~np.eye(n, dtype=bool).reshape(-1)
            pair_correct = (predicted == truth)[:, off_diagonal]
            scene_correct = pair_correct.all(axis=1)
            systems = np.array([physics.components(t.reshape(n, n)) for t in truth])
            # The counting question answered from the predicted links (connected components; a link predicted
            # in one direction only counts): every scene with all connections right is counted right.
            counted = np.array([physics.components(p | p.T) for p in predicted.reshape(-1, n, n)])
            groups = grouped_accuracy(scene_correct, systems - 1, [f"{k}_systems" for k in range(1, n + 1)])
            metrics = {"scenes_all_correct": float(scene_correct.mean()), "pair_accuracy": float(pair_correct.mean()),
                       "count_from_connections": float((counted == systems).mean())}
            return self.report(config, split, len(labels), metrics, groups, labels=labels, logits=logits)
        predicted = logits.argmax(-1)
        correct = predicted == labels
        confusion = np.zeros((n, n), int)
        np.add.at(confusion, (labels, predicted), 1)
        groups = grouped_accuracy(correct, labels, [f"{k}_systems" for k in range(1, n + 1)])
        return self.report(config, split, len(labels), {"accuracy": float(correct.mean())}, groups,
                           extra={"confusion (rows: true count 1..n, columns: predicted)": confusion.tolist()},
                           labels=labels, logits=logits)
