"""How fast a relation module learns Sort-of-CLEVR when the objects are given: the state-description probe.

    python tools/diagnostics/probe_state.py [--config configs/sort_of_clevr.yaml] [--set model.aggregation=sum]
                                [--set train.learning_rate=1e-3] [--epochs 2] [--json out.json]
                                [--layout objects|grid|pixels] [--colours red] [--subtypes shape]

Trains only the config's RelationModule (same g_theta, f_phi and precision; no CNN) on the stored object tables of
the training images -- each object is its colour one-hot, centre (x, y) scaled to [-1, 1] and shape -- and prints
the validation accuracy per question subtype after every epoch. With objects this clean, what the relation module
needs to learn is the binding of the question's colour to an object; comparing settings here (mean vs sum over
the pairs, learning rate) separates how fast the RN binds from how fast the CNN learns features.

`--layout pixels` trains the config's whole model (CNN+RN, or CNN+MLP with an `_mlp` config) on the images
instead, and `--colours` / `--subtypes` keep only the questions about those colours / of those subtypes (in
training and validation), e.g. `--layout pixels --colours red --subtypes shape` asks whether the CNN can see shapes
at all when no binding to the question's colour is needed.
"""

import time

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # tools/: _common
import _common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/sort_of_clevr.yaml", "Sort-of-CLEVR config: data, g/f widths, precision.")
flags.DEFINE_multi_string("set", [], "Config overrides, as for tools/train.py (e.g. model.aggregation=sum).")
flags.DEFINE_integer("epochs", 2, "Passes over the training questions.")
flags.DEFINE_integer("batch_size", 64, "Questions per step.")
flags.DEFINE_integer("seed", 0, "Initialisation and shuffling seed.")
flags.DEFINE_string("json", None, "Also write the per-epoch accuracies here.")
flags.DEFINE_enum("layout", "objects", ["objects", "grid", "pixels"],
                  "objects: the 6 objects; grid: the objects placed in a GRID x GRID grid of cells, like the CNN's "
                  "feature map (each cell: its (row, col) tag plus the features of the object centred in it, or "
                  "zeros), so the probe sees as many pairs as the CNN+RN with perfect features; pixels: the images, "
                  "through the config's whole model (CNN and all).")
flags.DEFINE_integer("grid", 5, "Cells per side for --layout grid (the default CNN gives 5 x 5).")
flags.DEFINE_list("colours", [], "Keep only questions about these colours (default: all).")
flags.DEFINE_list("subtypes", [], "Keep only questions of these subtypes (default: all).")
flags.DEFINE_integer("eval_every_steps", 0, "Also score the validation questions every this many training steps "
                     "(0: after each epoch only), to see where within an epoch the binding happens.")


def state_objects(objects):
    """`[..., 6, 9]` float32 objects (colour one-hot, x, y in [-1, 1], shape) from `[..., 6, 4]` object tables."""
    import numpy as np

    from relation_networks.data import sort_of_clevr as soc

    colour = np.eye(soc.NUM_OBJECTS, dtype=np.float32)[objects[..., 0].astype(int)]
    position = objects[..., 1:3] / (soc.IMAGE_SIZE / 2) - 1.0
    return np.concatenate([colour, position, objects[..., 3:4]], axis=-1).astype(np.float32)


def grid_objects(objects, grid):
    """`[..., grid * grid, 11]` cells (row, col tag in [-1, 1]; then the 9 state features of the object whose
    centre lies in the cell, or zeros) from `[..., 6, 4]` object tables."""
    import numpy as np

    from relation_networks.data import sort_of_clevr as soc
    from relation_networks.layers.conv_objects import cell_coordinates

    state = state_objects(objects)
    cells = np.zeros(objects.shape[:-2] + (grid * grid, state.shape[-1]), np.float32)
    column = np.clip((objects[..., 1] * grid // soc.IMAGE_SIZE).astype(int), 0, grid - 1)
    row = np.clip((objects[..., 2] * grid // soc.IMAGE_SIZE).astype(int), 0, grid - 1)
    index = row * grid + column  # [..., 6]
    flat_cells = cells.reshape(-1, grid * grid, state.shape[-1])
    flat_index, flat_state = index.reshape(-1, index.shape[-1]), state.reshape(-1, *state.shape[-2:])
    for b in range(len(flat_cells)):
        flat_cells[b, flat_index[b]] = flat_state[b]
    tags = np.broadcast_to(np.asarray(cell_coordinates(grid, grid), np.float32), cells.shape[:-1] + (2,))
    return np.concatenate([tags, cells], axis=-1)


@_common.main_wrapper
def main(argv):
    del argv
    import keras
    import numpy as np

    from relation_networks import config as config_lib
    from relation_networks import precision, tasks
    from relation_networks.data import sort_of_clevr as soc
    from relation_networks.errors import UserError
    from relation_networks.evaluation import grouped_accuracy
    from relation_networks.tasks.sort_of_clevr import relation_module

    config = config_lib.load(FLAGS.config, FLAGS.set)
    pixels = FLAGS.layout == "pixels"
    if config.task != "sort_of_clevr" or (config.model.type != "rn" and not pixels):
        raise UserError(f"{FLAGS.config} is not a Sort-of-CLEVR CNN+RN config; the state probe needs one.")
    for name, values, known in (("colours", FLAGS.colours, soc.COLORS), ("subtypes", FLAGS.subtypes, soc.SUBTYPE_NAMES)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise UserError(f"Unknown --{name} {', '.join(unknown)}; expected some of {', '.join(known)}.")
    task = tasks.get("sort_of_clevr")
    task.prepare(config)

    def split(name):
        records = list(task.images(config, name).as_numpy_iterator())
        if pixels:
            objects = np.stack([r["image"] for r in records])
        else:
            tables = np.stack([r["objects"] for r in records])
            objects = state_objects(tables) if FLAGS.layout == "objects" else grid_objects(tables, FLAGS.grid)
        questions = np.stack([r["questions"] for r in records]).reshape(-1, soc.QUESTION_DIM)
        answers = np.stack([r["answers"] for r in records]).reshape(-1)
        keep = np.ones(len(answers), bool)
        if FLAGS.colours:
            keep &= np.isin(soc.colour_index(questions), [soc.COLORS.index(c) for c in FLAGS.colours])
        if FLAGS.subtypes:
            keep &= np.isin(soc.subtype_index(questions), [soc.SUBTYPE_NAMES.index(s) for s in FLAGS.subtypes])
        image_of_question = np.flatnonzero(keep) // soc.QUESTIONS_PER_IMAGE
        return [objects[image_of_question], questions[keep]], answers[keep]

    (train_x, train_y), (val_x, val_y) = split("train"), split("val")
    if not len(train_y) or not len(val_y):
        raise UserError("No training or validation questions are left after --colours / --subtypes.")
    policy = precision.resolve(config.train.precision)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(FLAGS.seed)
    m = config.model
    if pixels:
        from relation_networks.tasks.sort_of_clevr import build_model

        model = build_model(m)  # inputs {"image", "question"}
    else:
        objects = keras.Input(train_x[0].shape[1:], name="objects")
        question = keras.Input((soc.QUESTION_DIM,), name="question")
        logits = keras.layers.Activation("linear", dtype="float32")(relation_module(m)(objects, question=question))
        model = keras.Model({"objects": objects, "question": question}, logits)
    from relation_networks import tasks, training
    from relation_networks.training import EPOCH_SEED_STRIDE

    # the config's multipliers for CNN layers apply only where there is a CNN (the pixels layout)
    multipliers = {k: v for k, v in config.train.lr_multipliers.items() if pixels or k.split("/")[0] != "cnn"}
    steps_per_epoch = len(train_y) // FLAGS.batch_size
    fit = training.array_trainer(tasks.get("sort_of_clevr"), config, model, FLAGS.batch_size,
                                 total_steps=FLAGS.epochs * steps_per_epoch, lr_multipliers=multipliers)

    def feed(x):
        """The model's input dict for `[objects or images, questions]`."""
        return {"image" if pixels else "objects": x[0], "question": x[1]}

    history = []
    inputs = "images" if pixels else f"{train_x[0].shape[1]} objects"
    print(f"State-description probe ({FLAGS.layout}, {inputs}, {len(train_y)} training questions): model {m.type}, "
          f"aggregation={m.aggregation}, Adam {config.train.learning_rate:g}, g {m.g_units}, f {m.f_units}, "
          f"{policy}, batch {FLAGS.batch_size}, seed {FLAGS.seed}")
    start = time.time()

    def score(epoch, step):
        correct = model.predict(feed(val_x), batch_size=1000 if not pixels else 250, verbose=0).argmax(-1) == val_y
        groups = grouped_accuracy(correct, soc.subtype_index(val_x[1]), soc.SUBTYPE_NAMES)
        asked = [name for name in soc.SUBTYPE_NAMES if name in groups]
        row = {"epoch": epoch, "step": step, "seconds": round(time.time() - start, 1),
               **{name: groups[name]["accuracy"] for name in asked}}
        history.append(row)
        where = f"epoch {epoch}" if step % steps_per_epoch == 0 else f"step {step} (epoch {epoch})"
        print(f"{where} ({row['seconds']:.0f} s): " + "  ".join(
            f"{name} {100 * row[name]:.1f}%" for name in asked), flush=True)

    def every_k_steps(step):
        epoch = -(-step // steps_per_epoch)
        if FLAGS.eval_every_steps and step % FLAGS.eval_every_steps == 0 and step % steps_per_epoch:
            score(epoch, step)

    for epoch in range(1, FLAGS.epochs + 1):
        fit(feed(train_x), train_y, seed=FLAGS.seed * EPOCH_SEED_STRIDE + epoch, on_step=every_k_steps)
        score(epoch, epoch * steps_per_epoch)
    if FLAGS.json:
        _common.write_json(FLAGS.json, {"layout": FLAGS.layout, "objects": None if pixels else int(train_x[0].shape[1]),
                                       "model": m.type, "colours": FLAGS.colours, "subtypes": FLAGS.subtypes,
                                       "training_questions": int(len(train_y)),
                                       "aggregation": m.aggregation, "learning_rate": config.train.learning_rate,
                                       "precision": policy,
                                       "seed": FLAGS.seed, "config": FLAGS.config, "overrides": FLAGS.set,
                                       "epochs": history})


if __name__ == "__main__":
    app.run(main)
