"""How much of each Sort-of-CLEVR object's colour and shape the CNN's cells carry: linear probes.

    python tools/diagnostics/probe_objects.py --run runs/sort_of_clevr [--images 600] [--json out.json]

Generates `--images` fresh images (seed `--seed`, not the training images), runs the trained model's CNN and the
same CNN freshly initialised, and fits least-squares linear read-outs, on the first two thirds of the images,
from the feature vector of the cell holding each object's centre to (a) the object's colour (6 classes, plus
"no object" for empty cells) and (b) its shape. Prints the accuracy on the remaining third. A CNN+RN that answers
"what shape is the red object?" must, somewhere, tell red from orange: a low colour score on the trained CNN
says the image features, not the relation module, are what is missing.
"""


import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # tools/: _common
import _common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "Sort-of-CLEVR run directory (tools/train.py).")
flags.DEFINE_integer("images", 600, "Fresh images to probe with.")
flags.DEFINE_integer("seed", 77, "Seed of the generated probe images.")
flags.DEFINE_string("json", None, "Also write the scores here.")
flags.mark_flag_as_required("run")

def _cell_labels(objects, cells_per_row):
    """`[images, cells]` colour index (6 = empty) and shape index (-1 = empty) of the object centred in each cell."""
    import numpy as np

    from relation_networks.data import sort_of_clevr as soc

    n = len(objects)
    colour = np.full((n, cells_per_row**2), soc.NUM_OBJECTS)
    shape = np.full((n, cells_per_row**2), -1)
    size = soc.IMAGE_SIZE / cells_per_row
    for k, table in enumerate(objects):
        for c, x, y, s in table:
            cell = int(y // size) * cells_per_row + int(x // size)
            colour[k, cell], shape[k, cell] = int(c), int(s)
    return colour, shape


def probe(cnn_features, objects):
    """Colour and shape probe scores for CNN cell features `[images, cells, dims]` of images with `objects`."""
    import numpy as np

    from _probes import linear_probe

    images, cells, dims = cnn_features.shape
    colour, shape = _cell_labels(objects, int(round(cells**0.5)))
    train = np.repeat(np.arange(images) < 2 * images // 3, cells)
    features = cnn_features.reshape(-1, dims).astype(np.float64)
    colour, shape = colour.reshape(-1), shape.reshape(-1)
    occupied = shape >= 0
    colour_right = linear_probe(features, colour, train)  # one read-out over all cells, empty ones included
    colour_objects = float(np.mean(colour_right[occupied[~train]]))
    colour_all = float(np.mean(colour_right))
    return {
        "colour_accuracy_object_cells": colour_objects,
        "colour_accuracy_all_cells": colour_all,
        "shape_accuracy_object_cells": float(np.mean(linear_probe(features[occupied], shape[occupied], train[occupied]))),
    }


@_common.main_wrapper
def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from relation_networks import tasks
    from relation_networks.data import sort_of_clevr as soc
    from relation_networks.errors import UserError
    from relation_networks.serving import load_keras_predictor

    config, model, _ = load_keras_predictor(FLAGS.run)
    if config.task != "sort_of_clevr":
        raise UserError(f"{FLAGS.run} is a {config.task} run; the object probe is for sort_of_clevr runs.")
    if config.model.film_layers:
        raise UserError(f"{FLAGS.run}'s CNN is conditioned on the question (model.film_layers); the object probe reads "
                        "the cells of a CNN that sees only the image.")
    data = soc.generate(FLAGS.images, seed=FLAGS.seed)
    images = tf.constant(data["images"])

    def cells(m, training):
        features = m.get_layer("cnn")(m.get_layer("rescale")(images), training=training)
        if len(features.shape) == 4:  # the CNN+MLP baseline's feature map
            features = tf.reshape(features, (features.shape[0], -1, features.shape[-1]))
        return keras.ops.convert_to_numpy(features)

    keras.utils.set_random_seed(FLAGS.seed)
    fresh = tasks.get("sort_of_clevr").model_from_config(config)
    scores = {
        "trained": probe(cells(model, False), data["objects"]),
        "initial": probe(cells(fresh, True), data["objects"]),  # batch statistics: untrained moving averages
        "images": FLAGS.images,
        "seed": FLAGS.seed,
        "run": FLAGS.run,
    }
    print(f"Linear probes on the CNN's cells ({FLAGS.images} fresh images, seed {FLAGS.seed}; chance: colour 1/6, "
          "shape 1/2):")
    print(f"{'':12}{'colour (object cells)':>24}{'colour (all cells)':>20}{'shape':>8}")
    for name in ("trained", "initial"):
        s = scores[name]
        print(f"{name:12}{100 * s['colour_accuracy_object_cells']:23.1f}%{100 * s['colour_accuracy_all_cells']:19.1f}%"
              f"{100 * s['shape_accuracy_object_cells']:7.1f}%")
    if FLAGS.json:
        _common.write_json(FLAGS.json, scores)


if __name__ == "__main__":
    app.run(main)
