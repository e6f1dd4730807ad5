"""The Nth-farthest task (Santoro et al. 2018, section 4.1).

Each sample holds `num_vectors` vectors of `vector_dim` dims drawn uniformly in [-1, 1], each with a one-hot
id. The question names a reference id `m` and a rank `n` (1 = farthest); the answer is the id of the n-th farthest
vector from vector `m`, counting from the farthest and excluding `m` itself. The model sees one vector per time
step, in random order, each step's input being `[vector, one-hot id, one-hot m, one-hot (n - 1)]`.

The one-hots are `max_vectors` wide (by default `num_vectors`). With more room than vectors, each sample's ids are
a random subset of `0 .. max_vectors - 1`, so that a model trained on fewer vectors has the shapes of, and has
seen every id of, the larger instance (a curriculum over the number of vectors). Likewise the vectors are shown
`max_dim` wide (by default `vector_dim`), zero-padded: distances do not change, and a model trained on fewer
dimensions has the shapes of the larger instance (a curriculum over the number of dimensions).

`ranking="nearest_with_reference"` is the variant of Sonnet's `nth_farthest.py` (and of the public reproductions
that follow it): the vectors are ranked by distance from `m` nearest first, `m` itself included (at rank 0), and
the rank `n` runs over 0 .. num_vectors - 1, so "n = 0" asks for `m`. Figures of that variant compare with Sonnet's
and L0SG's; figures of the default do not.
"""

RANKINGS = ("farthest", "nearest_with_reference")

import numpy as np


def id_width(num_vectors, max_vectors=None):
    """Width of the id, reference and rank one-hots: `max_vectors`, or `num_vectors` if it is None."""
    width = num_vectors if max_vectors is None else max_vectors
    if width < num_vectors:
        raise ValueError(f"max_vectors ({max_vectors}) must be at least num_vectors ({num_vectors}).")
    return width


def vector_width(vector_dim, max_dim=None):
    """Width of each step's vector: `max_dim` (the vector zero-padded), or `vector_dim` if it is None."""
    width = vector_dim if max_dim is None else max_dim
    if width < vector_dim:
        raise ValueError(f"max_dim ({max_dim}) must be at least vector_dim ({vector_dim}).")
    return width


def input_dim(num_vectors, vector_dim, max_vectors=None, max_dim=None):
    return vector_width(vector_dim, max_dim) + 3 * id_width(num_vectors, max_vectors)


def _by_distance(vectors, reference):
    """Ids `[num_samples, num_vectors]` ordered by distance from vector `reference`, farthest first, ties by id;
    `reference` itself comes last (it is never an answer)."""
    rows = np.arange(len(vectors))
    distance = np.linalg.norm(vectors - vectors[rows, reference][:, None], axis=-1)
    distance[rows, reference] = -np.inf
    return np.argsort(-distance, axis=1, kind="stable")


def _by_nearness_with_reference(vectors, reference):
    """Ids `[num_samples, num_vectors]` ordered by distance from vector `reference`, nearest first, `reference`
    itself included (distance 0, so first), ties by id."""
    rows = np.arange(len(vectors))
    distance = np.linalg.norm(vectors - vectors[rows, reference][:, None], axis=-1)
    distance[rows, reference] = -1.0  # first, also when another vector coincides with it
    return np.argsort(distance, axis=1, kind="stable")


def generate(num_samples, seed, num_vectors=8, vector_dim=16, max_vectors=None, max_dim=None, ranking="farthest"):
    """Returns `inputs` float32 `[num_samples, num_vectors, input_dim(...)]`, `answers` int32 `[num_samples]` (an
    id), the raw `vectors` `[num_samples, num_vectors, vector_dim]`, their `ids` `[num_samples, num_vectors]`
    (`arange(num_vectors)` on every row unless `max_vectors` is larger), `reference` and `rank` `[num_samples]`
    (the reference's index into `vectors`; rank 1 = farthest), and `order` `[num_samples, num_vectors]` (the index
    of the vector shown at each time step). `max_dim` pads the shown vectors with zeros; the draws, answers and
    `vectors` do not depend on it. `ranking`: "farthest" (the default: rank 1 = farthest, `m` excluded) or
    "nearest_with_reference" (Sonnet's: rank 0 = `m` itself, then nearest first; see the module docstring)."""
    if num_vectors < 2:
        raise ValueError("num_vectors must be at least 2.")
    if ranking not in RANKINGS:
        raise ValueError(f"ranking must be one of {RANKINGS}, got {ranking!r}.")
    sonnet = ranking == "nearest_with_reference"
    width = id_width(num_vectors, max_vectors)
    padding = vector_width(vector_dim, max_dim) - vector_dim
    rng = np.random.default_rng(seed)
    vectors = rng.uniform(-1.0, 1.0, size=(num_samples, num_vectors, vector_dim)).astype(np.float32)
    reference = rng.integers(0, num_vectors, size=num_samples)
    rank = rng.integers(0 if sonnet else 1, num_vectors, size=num_samples)  # 1 .. num_vectors - 1 (Sonnet's: from 0)
    order = np.argsort(rng.uniform(size=(num_samples, num_vectors)), axis=1)

    ids = np.broadcast_to(np.arange(num_vectors), (num_samples, num_vectors))
    if width > num_vectors:  # drawn last: the draws above do not depend on max_vectors
        ids = np.argsort(rng.uniform(size=(num_samples, width)), axis=1)[:, :num_vectors]
    rows = np.arange(num_samples)
    if sonnet:
        answers = ids[rows, _by_nearness_with_reference(vectors, reference)[rows, rank]].astype(np.int32)
    else:
        answers = ids[rows, _by_distance(vectors, reference)[rows, rank - 1]].astype(np.int32)

    eye = np.eye(width, dtype=np.float32)
    shown = np.pad(np.take_along_axis(vectors, order[..., None], axis=1), ((0, 0), (0, 0), (0, padding)))
    inputs = np.concatenate(
        [
            shown,
            eye[np.take_along_axis(ids, order, axis=1)],
            np.broadcast_to(eye[ids[rows, reference]][:, None], (num_samples, num_vectors, width)),
            np.broadcast_to(eye[rank if sonnet else rank - 1][:, None], (num_samples, num_vectors, width)),
        ],
        axis=-1,
    )
    return {"inputs": inputs, "answers": answers, "vectors": vectors, "ids": np.array(ids), "reference": reference,
            "rank": rank, "order": order}
