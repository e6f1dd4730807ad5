"""What the diagnostic tools (`tools/diagnostics/probe_*.py`) compute, kept out of the library: sub-tasks and a baseline rule of
Nth-farthest, how much a layer's output depends on its input, the links a physics counter believes in, linear
read-outs of encodings, and how bAbI qa16 answers relate to their stories."""

import keras
import numpy as np

from relation_networks.data import nth_farthest as nf
from relation_networks.data import physics as physics_data
from relation_networks.errors import UserError


def by_length(data):
    """The answers of a rule that never looks at the reference vector: the n-th longest of the vectors other than
    m, ranking them by their distance from the origin instead of from vector m. `data` as `generate` returns it;
    ids int32 `[num_samples]`. A long vector tends to be far from any other, so the rule scores well above chance
    with no relation between two vectors computed (`tools/diagnostics/probe_nth_farthest.py --length_rule` scores it)."""
    vectors, reference = data["vectors"], data["reference"]
    rows = np.arange(len(vectors))
    length = np.linalg.norm(vectors, axis=-1)
    length[rows, reference] = -np.inf  # m is never an answer
    longest = np.argsort(-length, axis=1, kind="stable")
    return data["ids"][rows, longest[rows, data["rank"] - 1]].astype(np.int32)


SUB_TASKS = ("largest_x", "largest_norm", "reference_sign", "farthest", "full")


def sub_task(target, num_samples, seed, num_vectors=8, vector_dim=16, max_vectors=None, max_dim=None):
    """`(inputs, labels)` for a piece of the task on the task's own inputs (`tools/diagnostics/probe_nth_farthest.py`):

        largest_x       id of the vector with the largest first coordinate
        largest_norm    id of the longest vector
        reference_sign  1 if vector m's first coordinate is positive, else 0
        farthest        id of the vector farthest from m; the rank one-hot of every step is set to rank 1
        full            the Nth-farthest answer

    `inputs` float32 `[num_samples, num_vectors, input_dim]` as `generate` makes them, `labels` int32 (ids, or
    0/1 for `reference_sign`)."""
    if target not in SUB_TASKS:
        raise ValueError(f"Unknown sub-task {target!r}; expected one of {', '.join(SUB_TASKS)}.")
    d = nf.generate(num_samples, seed, num_vectors, vector_dim, max_vectors, max_dim)
    inputs, labels, rows = d["inputs"], d["answers"], np.arange(num_samples)
    if target == "largest_x":
        labels = d["ids"][rows, d["vectors"][..., 0].argmax(-1)]
    elif target == "largest_norm":
        labels = d["ids"][rows, np.linalg.norm(d["vectors"], axis=-1).argmax(-1)]
    elif target == "reference_sign":
        labels = d["vectors"][rows, d["reference"], 0] > 0
    elif target == "farthest":
        labels = d["ids"][rows, nf._by_distance(d["vectors"], d["reference"])[:, 0]]
        # after the (padded) vector and the id and reference one-hots
        rank_column = nf.vector_width(vector_dim, max_dim) + 2 * nf.id_width(num_vectors, max_vectors)
        inputs = inputs.copy()
        inputs[..., rank_column:] = 0.0
        inputs[..., rank_column] = 1.0
    return inputs, labels.astype(np.int32)


def input_dependent_share(outputs):
    """Share of the variance of `outputs` `[samples, ...]` (over all entries) that is variance across samples of
    each entry: 0 when every sample gives the same output, 1 when every entry has the same mean over samples.
    A diagnostic of how much a layer's output depends on its input at all."""
    outputs = np.asarray(outputs, np.float64).reshape(len(outputs), -1)
    total = outputs.var()
    return float((outputs - outputs.mean(axis=0)).var() / total) if total > 0 else 0.0


def implied_links(model, balls, batch_size=500):
    """The links a counter with the components read-out (`SystemCount`) believes in: link probabilities
    `[S, n, n]` for the scenes `balls [S, n, 2 * frames + 1]` -- the sigmoid of its per-pair logits plus the
    read-out's learned offset, exactly what its count is computed from. `UserError` for any other model."""
    names = [layer.name for layer in model.layers]
    if "system_count" not in names or "pair_logits" not in names:
        raise UserError(f"{model.name} has no components read-out (model.readout=components): it does not "
                        "compute link probabilities.")
    pair_logits = keras.Model(model.inputs, model.get_layer("pair_logits").output)
    logits = pair_logits.predict({"balls": balls}, batch_size=batch_size, verbose=0)
    return keras.ops.convert_to_numpy(model.get_layer("system_count").link_probabilities(logits))


def link_metrics(probabilities, connections):
    """How well link probabilities `[S, n, n]` match the true connection matrices `[S, n, n]` (0/1), over the
    pairs i < j: `pair_auc` (the chance that a random linked pair scores above a random unlinked one, ties half),
    the mean probability of linked and of unlinked pairs, and with links thresholded at 0.5: `pair_accuracy`,
    `scenes_all_correct` (every pair right) and `count_from_links` (the number of systems right)."""
    probabilities, truth = np.asarray(probabilities, np.float64), np.asarray(connections) > 0.5
    n = truth.shape[-1]
    upper = np.triu(np.ones((n, n), bool), 1)
    scores, labels = probabilities[:, upper], truth[:, upper]
    positive, negative = scores[labels], np.sort(scores[~labels])
    # per linked pair: the unlinked pairs scored below it, plus half of those scored the same
    below = np.searchsorted(negative, positive, side="left")
    not_above = np.searchsorted(negative, positive, side="right")
    auc = ((below + not_above).sum() / 2 / (len(positive) * len(negative))
           if len(positive) and len(negative) else float("nan"))
    predicted = scores > 0.5
    hard = np.zeros(truth.shape, bool)
    hard[:, upper] = predicted
    hard = hard | hard.transpose(0, 2, 1)
    counted = np.array([physics_data.components(h) for h in hard])
    systems = np.array([physics_data.components(t) for t in truth])
    return {"pair_auc": float(auc), "mean_p_linked": float(positive.mean()) if len(positive) else float("nan"),
            "mean_p_unlinked": float(negative.mean()) if len(negative) else float("nan"),
            "pair_accuracy": float((predicted == labels).mean()),
            "scenes_all_correct": float((predicted == labels).all(axis=1).mean()),
            "count_from_links": float((counted == systems).mean())}


def linear_probe(features, labels, train):
    """Per held-out row (`~train`), whether a least-squares one-vs-rest linear read-out of `labels`, fitted on
    `train`, gets it right."""
    x = np.concatenate([features, np.ones((len(features), 1), features.dtype)], axis=1)
    classes = np.unique(labels)
    targets = (labels[:, None] == classes[None, :]).astype(np.float64)
    weights = np.linalg.lstsq(x[train], targets[train], rcond=None)[0]
    predicted = classes[np.argmax(x[~train] @ weights, axis=1)]
    return predicted == labels[~train]


def distinct(token_lists):
    """The distinct token lists, in first-seen order."""
    seen = {}
    for tokens in token_lists:
        seen.setdefault(tuple(tokens), None)
    return [list(t) for t in seen]


def word_probes(encodings, sentences, rng, max_positions=12):
    """{position: {"accuracy", "majority", "words"}} of linear read-outs from `encodings` `[n, dims]` to the word
    at each position of `sentences` (token lists): 1 = first word, -1 = last word, ... A position that holds one
    word in every sentence (nothing to tell apart) is left out."""
    train = rng.permutation(len(sentences)) < 2 * len(sentences) // 3
    scores = {}
    for position in [p for k in range(1, max_positions + 1) for p in (k, -k)]:
        rows = np.array([len(s) >= abs(position) for s in sentences])
        words = np.array([s[position - 1 if position > 0 else position] if r else "" for s, r in zip(sentences, rows)])
        if len(set(words[rows])) < 2 or (~train[rows]).sum() < 3:
            continue
        right = linear_probe(encodings[rows].astype(np.float64), words[rows], train[rows])
        held_out = words[rows][~train[rows]]
        _, counts = np.unique(held_out, return_counts=True)
        scores[position] = {"accuracy": float(right.mean()), "majority": float(counts.max() / len(held_out)),
                            "words": int(len(set(words[rows])))}
    return scores


def induction_answers(questions, predicted):
    """How the answers `predicted` (strings) to qa16 (basic induction) questions relate to their stories: shares
    that are right, that name a colour stated in the story, that repeat the last colour stated; and what two rules
    would score: answering the last colour stated, and (expected) a uniform pick among the story's distinct
    colours."""
    shares = {"right": [], "a_colour_of_the_story": [], "the_last_colour_stated": [],
              "rule_last_colour_stated": [], "uniform_pick_among_them": []}
    for q, answer in zip(questions, predicted):
        colours = [s[-1] for s in q.context if len(s) == 3]  # "<name> is <colour>"; "<name> is a <animal>" has 4
        shares["right"].append(answer == q.answer)
        shares["a_colour_of_the_story"].append(answer in colours)
        shares["the_last_colour_stated"].append(bool(colours) and answer == colours[-1])
        shares["rule_last_colour_stated"].append(bool(colours) and q.answer == colours[-1])
        shares["uniform_pick_among_them"].append(q.answer in colours and 1 / len(set(colours)))
    return {name: float(np.mean(values)) for name, values in shares.items()}
