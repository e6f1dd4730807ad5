"""Dynamic physical systems (paper section 3.4, appendix F), simulated with MuJoCo.

`num_balls` coloured balls move on a table top inside four walls, colliding with each other and the walls.
Randomly chosen pairs are joined by invisible springs (spatial tendons with stiffness, rest length = the initial
distance) or rigid connections (a tendon equality fixing the pair's distance). Each ball slides on the table
(two slide joints, no gravity, no friction): the table-top world of the paper in two dimensions.

Observation per scene: `[num_balls, 2 * frames + 1]` = the x coordinates of the `frames` observed frames, the y
coordinates, and the ball's colour value (its index scaled to [0, 1]). Labels: the symmetric
`[num_balls, num_balls]` connection matrix (0 diagonal) and the number of connected systems (components of the
connection graph, singletons included).

Scenes are generated deterministically from `(seed, scene index)` (so any number of worker processes gives the
same data) and stored as TFRecord files per split.
"""

import json
import os
import shutil

import numpy as np

from relation_networks.errors import DataError
from relation_networks.io import work_directory

BALL_RADIUS = 0.08
ARENA = 1.0  # walls at +-ARENA
TIMESTEP = 0.005
# Default simulation settings (the physics task's data config uses the same values): stiff, near-critically damped
# springs, observed frames FRAME_STRIDE steps apart after BURN_IN steps; see `simulate_scene`.
FRAME_STRIDE = 24
BURN_IN = 100
STIFFNESS = 2000.0
SPRING_DAMPING = 60.0


def scene_xml(positions, links, stiffness=STIFFNESS, spring_damping=SPRING_DAMPING):
    """MJCF of a scene: balls at `positions` `[n, 2]`, `links` a list of `(i, j, kind)`, kind 'spring' | 'rigid'."""
    balls, tendons, equalities = [], [], []
    for k, (x, y) in enumerate(positions):
        balls.append(
            f'<body name="b{k}" pos="{x:.6f} {y:.6f} {BALL_RADIUS}">'
            f'<joint name="x{k}" type="slide" axis="1 0 0" damping="0"/>'
            f'<joint name="y{k}" type="slide" axis="0 1 0" damping="0"/>'
            f'<geom type="sphere" size="{BALL_RADIUS}" mass="1" condim="1" contype="1" conaffinity="1"/>'
            f'<site name="s{k}" pos="0 0 0" size="0.01"/></body>'
        )
    for i, j, kind in links:
        rest = float(np.linalg.norm(np.asarray(positions[i]) - np.asarray(positions[j])))
        spring = f' stiffness="{stiffness}" springlength="{rest:.6f}" damping="{spring_damping}"' if kind == "spring" else ""
        tendons.append(f'<spatial name="t{i}_{j}"{spring}><site site="s{i}"/><site site="s{j}"/></spatial>')
        if kind == "rigid":
            equalities.append(f'<tendon tendon1="t{i}_{j}" polycoef="{rest:.6f} 0 0 0 0" solref="0.01 1"/>')
    half = 0.5  # thick walls: fast balls cannot tunnel through in one time step
    wall = ARENA + half
    walls = "".join(
        f'<geom type="box" pos="{x} {y} 0.1" size="{sx} {sy} 0.2" contype="1" conaffinity="1" condim="1"/>'
        for x, y, sx, sy in ((wall, 0, half, wall + half), (-wall, 0, half, wall + half),
                             (0, wall, wall + half, half), (0, -wall, wall + half, half))
    )
    return (
        f'<mujoco><option timestep="{TIMESTEP}" gravity="0 0 0"/>'
        f'<worldbody><geom type="plane" size="2 2 0.1" contype="0" conaffinity="0"/>{walls}{"".join(balls)}'
        f'</worldbody><tendon>{"".join(tendons)}</tendon>'
        f'<equality>{"".join(equalities)}</equality></mujoco>'
    )


def component_labels(connections):
    """`[n]` int: the connected component of each node of a symmetric 0/1 adjacency matrix, numbered from 0."""
    n = len(connections)
    labels = np.full(n, -1)
    count = 0
    for start in range(n):
        if labels[start] >= 0:
            continue
        stack = [start]
        while stack:
            k = stack.pop()
            if labels[k] >= 0:
                continue
            labels[k] = count
            stack.extend(j for j in range(n) if connections[k][j] and labels[j] < 0)
        count += 1
    return labels


def components(connections):
    """Number of connected components of a symmetric 0/1 adjacency matrix (singletons count)."""
    return int(component_labels(connections).max()) + 1 if len(connections) else 0


def simulate_scene(seed, index, num_balls=10, frames=16, frame_stride=FRAME_STRIDE, burn_in=BURN_IN, max_links=None,
                   min_motion=0.05, stiffness=STIFFNESS, spring_damping=SPRING_DAMPING):
    """One scene: `(observation [n, 2*frames+1], connections [n, n], trajectories [frames, n, 2], links)`.

    `frame_stride` simulation steps of `TIMESTEP` seconds separate two observed frames; `burn_in` steps run before
    the first, so that the impulses that reconcile the random initial velocities with the rigid constraints have
    settled. Springs have `stiffness` (N/m, unit masses) and `spring_damping`: stiff and near-critically damped by
    default, so that a spring-linked pair's distance "remains similar across frames" (the paper's description),
    within a few per cent, while a rigid pair's is constant and an unlinked pair's varies freely.
    """
    import mujoco

    rng = np.random.default_rng([seed, index])
    max_links = num_balls - 1 if max_links is None else max_links
    for _ in range(100):
        positions = []
        while len(positions) < num_balls:
            p = rng.uniform(-ARENA + 2 * BALL_RADIUS, ARENA - 2 * BALL_RADIUS, size=2)
            if all(np.linalg.norm(p - q) > 3 * BALL_RADIUS for q in positions):
                positions.append(p)
        positions = np.array(positions)
        pairs = [(i, j) for i in range(num_balls) for j in range(i + 1, num_balls)]
        chosen = rng.choice(len(pairs), size=int(rng.integers(0, max_links + 1)), replace=False)
        links = [(pairs[c][0], pairs[c][1], "spring" if rng.uniform() < 0.5 else "rigid") for c in sorted(chosen)]
        model = mujoco.MjModel.from_xml_string(scene_xml(positions, links, stiffness, spring_damping))
        data = mujoco.MjData(model)
        data.qvel[:] = rng.uniform(-1.0, 1.0, size=model.nv)
        for _ in range(burn_in):
            mujoco.mj_step(model, data)
        trajectory = []
        for f in range(frames):
            trajectory.append(data.qpos.reshape(num_balls, 2).copy() + positions)
            for _ in range(frame_stride):
                mujoco.mj_step(model, data)
        trajectory = np.array(trajectory)  # [frames, n, 2]
        travelled = np.abs(np.diff(trajectory, axis=0)).sum(axis=(0, 2))
        inside = np.all(np.abs(trajectory) <= ARENA + 1e-3)
        if np.all(travelled > min_motion) and np.all(np.isfinite(trajectory)) and inside:
            break
    else:
        raise RuntimeError(f"scene {index}: could not draw a scene in which every ball moves")
    connections = np.zeros((num_balls, num_balls), np.float32)
    for i, j, _ in links:
        connections[i, j] = connections[j, i] = 1.0
    colours = np.arange(num_balls, dtype=np.float32)[:, None] / max(num_balls - 1, 1)
    observation = np.concatenate([trajectory[:, :, 0].T, trajectory[:, :, 1].T, colours], axis=1).astype(np.float32)
    return observation, connections, trajectory, links


def self_check(trajectory, links, num_balls):
    """Pair-distance statistics across the observed frames: {"rigid": max relative change, "spring": max ratio of
    the largest to the smallest distance, "unlinked": correlation of unlinked pairs' velocities}."""
    dist = np.linalg.norm(trajectory[:, :, None] - trajectory[:, None, :], axis=-1)  # [frames, n, n]
    result = {"rigid": 0.0, "spring": 1.0}
    linked = set()
    for i, j, kind in links:
        d = dist[:, i, j]
        linked.add((i, j))
        if kind == "rigid":
            result["rigid"] = max(result["rigid"], float((d.max() - d.min()) / d.mean()))
        else:
            result["spring"] = max(result["spring"], float(d.max() / max(d.min(), 1e-6)))
    return result


def _generate_one(args):
    seed, index, kwargs = args
    observation, connections, _, _ = simulate_scene(seed, index, **kwargs)
    return observation, connections


def generate(num_scenes, seed, workers=None, progress=True, **kwargs):
    """`observations [N, n, 2*frames+1]`, `connections [N, n, n]`, `systems [N]` for scenes 0..N-1 of `seed`."""
    import multiprocessing

    import keras

    jobs = [(seed, i, kwargs) for i in range(num_scenes)]
    workers = workers or os.cpu_count() or 1
    bar = keras.utils.Progbar(num_scenes, unit_name="scene") if progress else None
    results = []
    if workers > 1 and num_scenes > 50:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for k, r in enumerate(pool.imap(_generate_one, jobs, chunksize=16)):
                results.append(r)
                if bar is not None:
                    bar.update(k + 1)
    else:
        for k, job in enumerate(jobs):
            results.append(_generate_one(job))
            if bar is not None:
                bar.update(k + 1)
    observations = np.stack([r[0] for r in results])
    connections = np.stack([r[1] for r in results])
    systems = np.array([components(c) for c in connections], np.int32)
    return {"observations": observations, "connections": connections, "systems": systems}


def write_split(path, arrays):
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for o, c, s in zip(arrays["observations"], arrays["connections"], arrays["systems"]):
            feature = {
                "observation": tf.train.Feature(float_list=tf.train.FloatList(value=o.reshape(-1).tolist())),
                "connections": tf.train.Feature(float_list=tf.train.FloatList(value=c.reshape(-1).tolist())),
                "systems": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(s)])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def prepare(root, seed, sizes, log=print, workers=None, **kwargs):
    """Generate the splits (`sizes`: {split: scenes}) under `root` once; return the directory.

    The directory is named for everything that changes the scenes (`seed`, `sizes`, the simulation `kwargs`),
    not for `workers`: scenes depend only on (seed, index), so any number of processes gives the same data.
    """
    name = f"seed{seed}_" + "_".join(f"{k}{v}" for k, v in sorted(sizes.items())) + "_" + "_".join(
        f"{k}{v}" for k, v in sorted(kwargs.items()))
    target = os.path.join(root, name)
    if os.path.exists(os.path.join(target, "meta.json")):
        return target
    os.makedirs(root, exist_ok=True)
    tmp = work_directory(root, "physics")
    try:
        for offset, (split, n) in enumerate(sorted(sizes.items())):
            log(f"Simulating {n} {split} scenes ...")
            # each split has its own seed stream so sizes can change without changing the other splits
            write_split(os.path.join(tmp, f"{split}.tfrecord"), generate(n, seed * 1000 + offset, workers=workers, **kwargs))
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump({"seed": seed, "sizes": sizes, **kwargs}, f)
        try:
            os.rename(tmp, target)
        except OSError:
            if not os.path.exists(os.path.join(target, "meta.json")):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def parse_example(serialized, num_balls, frames):
    import tensorflow as tf

    spec = {
        "observation": tf.io.FixedLenFeature([num_balls * (2 * frames + 1)], tf.float32),
        "connections": tf.io.FixedLenFeature([num_balls * num_balls], tf.float32),
        "systems": tf.io.FixedLenFeature([1], tf.int64),
    }
    r = tf.io.parse_single_example(serialized, spec)
    return tf.reshape(r["observation"], (num_balls, 2 * frames + 1)), r["connections"], r["systems"][0]


def check_directory(path):
    if not os.path.isfile(os.path.join(path, "meta.json")):
        raise DataError(f"No physics data at {path}.")
