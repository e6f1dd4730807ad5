"""The Nth-farthest task (Santoro et al. 2018, section 4.1).

Each sample holds `num_vectors` vectors of `vector_dim` dims drawn uniformly in [-1, 1], each with a one-hot
id. The question names a reference id `m` and a rank `n` (1 = farthest); the answer is the id of the n-th farthest
vector from vector `m`, counting from the farthest and excluding `m` itself. The model sees one vector per time
step, in random order, each step's input being `[vector, one-hot id, one-hot m, one-hot (n - 1)]`.
"""

import numpy as np


def input_dim(num_vectors, vector_dim):
    return vector_dim + 3 * num_vectors


def generate(num_samples, seed, num_vectors=8, vector_dim=16):
    """Returns `inputs` float32 `[num_samples, num_vectors, vector_dim + 3 * num_vectors]`, `answers` int32
    `[num_samples]`, and the raw `vectors` `[num_samples, num_vectors, vector_dim]` (indexed by id), `reference`
    and `rank` `[num_samples]` (rank 1 = farthest), and `order` `[num_samples, num_vectors]` (the id shown at each
    time step)."""
    if num_vectors < 2:
        raise ValueError("num_vectors must be at least 2.")
    rng = np.random.default_rng(seed)
    vectors = rng.uniform(-1.0, 1.0, size=(num_samples, num_vectors, vector_dim)).astype(np.float32)
    reference = rng.integers(0, num_vectors, size=num_samples)
    rank = rng.integers(1, num_vectors, size=num_samples)  # 1 .. num_vectors - 1
    order = np.argsort(rng.uniform(size=(num_samples, num_vectors)), axis=1)

    distance = np.linalg.norm(vectors - vectors[np.arange(num_samples), reference][:, None], axis=-1)
    distance[np.arange(num_samples), reference] = -np.inf  # m itself is never an answer
    by_distance = np.argsort(-distance, axis=1, kind="stable")  # farthest first
    answers = by_distance[np.arange(num_samples), rank - 1].astype(np.int32)

    eye = np.eye(num_vectors, dtype=np.float32)
    shown = np.take_along_axis(vectors, order[..., None], axis=1)
    inputs = np.concatenate(
        [
            shown,
            eye[order],
            np.broadcast_to(eye[reference][:, None], (num_samples, num_vectors, num_vectors)),
            np.broadcast_to(eye[rank - 1][:, None], (num_samples, num_vectors, num_vectors)),
        ],
        axis=-1,
    )
    return {"inputs": inputs, "answers": answers, "vectors": vectors, "reference": reference, "rank": rank, "order": order}
