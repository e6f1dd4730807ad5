"""How visible the connections of the physics scenes are in the ball distances: a check of the simulator settings.

    python tools/diagnostics/physics_check.py [--config configs/physics_connections.yaml] [--set data.stiffness=40]
                                  [--scenes 400] [--json out.json]

Simulates `--scenes` scenes with the config's simulation settings (stiffness, damping, frame stride, burn-in) and
reports, per kind of pair (rigid link, spring link, unlinked but in the same system, in different systems), the
relative range of the pair's distance over the observed frames, `(max - min) / mean`. It also reports the
"distance threshold" baseline the paper's wording suggests ("if the distance between two balls remains similar
across frames, then it can be inferred that there is a connection"): call a pair linked when its relative range
is below a threshold, pick the best threshold on these scenes, and count the scenes with all pairs right. A model
has to beat that baseline to reach the paper's 93%; settings under which it is low make the task ill-posed.
Last, the share of scenes whose links contain a cycle, for which the number of systems is not `balls - links`.
"""

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # tools/: _common
import _common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/physics_connections.yaml", "Physics config: its data.* simulation settings.")
flags.DEFINE_multi_string("set", [], "Config overrides, as for tools/train.py (e.g. data.stiffness=40).")
flags.DEFINE_integer("scenes", 400, "Scenes to simulate (seed = data.seed, fresh indices from 0).")
flags.DEFINE_string("json", None, "Also write the statistics here.")


def distance_statistics(scenes, num_balls):
    """`{kind: relative ranges}` and the best threshold baseline from `[(trajectory, links, connections)]`."""
    import numpy as np

    from relation_networks.data import physics

    upper = np.triu_indices(num_balls, 1)
    ranges, truth, kinds = [], [], []
    for trajectory, links, connections in scenes:
        distance = np.linalg.norm(trajectory[:, :, None] - trajectory[:, None, :], axis=-1)
        relative = (distance.max(0) - distance.min(0)) / np.maximum(distance.mean(0), 1e-6)
        system = physics.component_labels(connections)
        kind = np.where(system[:, None] == system[None, :], "same system", "different systems").astype(object)
        for i, j, link in links:
            kind[i, j] = f"{link} link"
        ranges.append(relative[upper])
        truth.append(connections[upper] > 0.5)
        kinds.append(kind[upper])
    ranges, truth, kinds = np.array(ranges), np.array(truth), np.array(kinds)
    thresholds = np.geomspace(1e-4, 1.0, 200)
    scene_accuracy = [float(((ranges < t) == truth).all(axis=1).mean()) for t in thresholds]
    best = int(np.argmax(scene_accuracy))
    per_kind = {name: ranges[kinds == name] for name in ("rigid link", "spring link", "same system", "different systems")}
    return per_kind, {"threshold": float(thresholds[best]), "scenes_all_correct": scene_accuracy[best]}


@_common.main_wrapper
def main(argv):
    del argv
    import numpy as np

    from relation_networks import config as config_lib
    from relation_networks.data import physics
    from relation_networks.errors import UserError
    from relation_networks.tasks.physics import simulation_settings

    config = config_lib.load(FLAGS.config, FLAGS.set)
    if config.task != "physics":
        raise UserError(f"{FLAGS.config} is not a physics config.")
    if FLAGS.scenes < 1:
        raise UserError(f"--scenes must be at least 1, got {FLAGS.scenes}.")
    d = config.data
    settings = simulation_settings(d)
    scenes = []
    for index in range(FLAGS.scenes):
        _, connections, trajectory, links = physics.simulate_scene(d.seed, index, **settings)
        scenes.append((trajectory, links, connections))
    per_kind, baseline = distance_statistics(scenes, d.num_balls)
    print(f"Physics scenes: {FLAGS.scenes} (seed {d.seed}), settings {settings}")
    print("relative range of the pair distance over the frames, (max - min) / mean:")
    print("| pairs | count | 5% | median | 95% |")
    print("|---|---|---|---|---|")
    report = {"settings": settings, "scenes": FLAGS.scenes, "seed": d.seed, "overrides": FLAGS.set, "pairs": {}}
    for name, values in per_kind.items():
        q = np.quantile(values, [0.05, 0.5, 0.95]) if len(values) else [float("nan")] * 3
        report["pairs"][name] = {"count": int(len(values)), "quantiles_5_50_95": [float(v) for v in q]}
        print(f"| {name} | {len(values)} | {q[0]:.4f} | {q[1]:.4f} | {q[2]:.4f} |")
    report["distance_threshold_baseline"] = baseline
    # With no cycle, systems = balls - links: a count a sum over pairs could give. A cycle breaks that.
    cycles = np.mean([physics.components(c) != d.num_balls - len(links) for _, links, c in scenes])
    report["scenes_with_a_cycle"] = float(cycles)
    print(f"scenes whose links contain a cycle (systems != balls - links): {100 * cycles:.1f}%")
    print(f"distance-threshold baseline: scenes with all connections right {100 * baseline['scenes_all_correct']:.1f}% "
          f"(threshold {baseline['threshold']:.4f}, chosen on these scenes)")
    if FLAGS.json:
        _common.write_json(FLAGS.json, report)


if __name__ == "__main__":
    app.run(main)
