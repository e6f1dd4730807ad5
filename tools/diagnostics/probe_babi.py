"""What a bAbI model's sentence and question encoders keep of each word: linear probes.

    python tools/diagnostics/probe_babi.py --model saved_models/babi/1 [--tasks 16,19] [--json out.json]

For each task, the distinct statements (and questions) of its training file are encoded by the model's sentence
LSTM (question LSTM), and for every word position (from the start and from the end) a least-squares linear read-out
is fitted, on two thirds of the distinct sentences, from the encoding to the word at that position. Printed: the accuracy on the other third, for the trained encoder and for the same encoder
freshly initialised, beside the share of the most frequent word (what a read-out that learnt nothing scores). A
model that cannot answer "what colour is Greg?" although its encodings keep every name, animal and colour fails
in the relation module, not in the encoder. With task 16 among --tasks, the model's answers to its held-out
(val) questions are also compared with simple rules (a colour of the story, the last colour stated, a uniform
pick among the story's colours).
"""

import json

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))))  # tools/: _common
import _common
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A bAbI model: an exported directory, a run directory or a .keras file.")
flags.DEFINE_list("tasks", ["16", "19"], "bAbI task numbers to probe.")
flags.DEFINE_multi_string("set", [], "Override a config value, e.g. --set data.dir=/path (repeatable).")
flags.DEFINE_integer("seed", 0, "Seed of the fresh encoder and of the probe's split of the sentences.")
flags.DEFINE_string("json", None, "Also write the scores here.")
flags.mark_flag_as_required("model")


@_common.main_wrapper
def main(argv):
    del argv
    import keras
    import numpy as np

    from _probes import distinct, induction_answers, word_probes

    from relation_networks import checkpointing, tasks
    from relation_networks.data import babi
    from relation_networks.errors import UserError
    from relation_networks.serving import config_next_to as _config_next_to

    config = _config_next_to(FLAGS.model, FLAGS.set)
    if config.task != "babi":
        raise UserError(f"{FLAGS.model} is a {config.task} model; this probe is for bAbI models.")
    task = tasks.get("babi")
    vocab = task.vocabulary(config)
    model = task.model_from_config(config)
    checkpointing.initialize_from(model, FLAGS.model)
    keras.utils.set_random_seed(FLAGS.seed)
    fresh = task.model_from_config(config)
    index = vocab.word_ids
    d = config.data

    def ids(token_lists, length):
        out = np.zeros((len(token_lists), length), np.int32)
        for k, tokens in enumerate(token_lists):
            out[k, length - len(tokens):] = [index.get(t, 1) for t in tokens]
        return out

    def sentence_states(m, sentences):
        context = ids(sentences, d.sentence_length)[:, None, :]  # one sentence per example
        objects, _ = m.get_layer("sentence_objects")(context)
        return keras.ops.convert_to_numpy(objects)[:, 0, : config.model.sentence_lstm]

    def question_states(m, questions):
        layer = m.get_layer("question_lstm")
        return keras.ops.convert_to_numpy(layer(m.get_layer("question_embedding")(ids(questions, d.question_length))))

    scores = {"model": FLAGS.model, "seed": FLAGS.seed, "tasks": {}}
    for number in [int(t) for t in FLAGS.tasks]:
        questions = babi.load_split(d.dir, "train", [number], max_context=d.max_sentences)
        parts = {
            "statements": (distinct(s for q in questions for s in q.context), sentence_states),
            "questions": (distinct(q.question for q in questions), question_states),
        }
        scores["tasks"][f"qa{number}"] = result = {}
        for part, (texts, encode) in parts.items():
            result[part] = {"count": len(texts)}
            for name, m in (("trained", model), ("initial", fresh)):
                result[part][name] = word_probes(encode(m, texts), texts, np.random.default_rng(FLAGS.seed))
            print(f"qa{number} {part} ({len(texts)} distinct, e.g. {' '.join(texts[0])!r}; word position 1 = first, "
                  "-1 = last):")
            print(f"{'position':>10}{'words':>7}{'trained':>10}{'initial':>10}{'majority':>10}")
            for position, s in result[part]["trained"].items():
                print(f"{position:>10}{s['words']:>7}{100 * s['accuracy']:9.1f}%"
                      f"{100 * result[part]['initial'][position]['accuracy']:9.1f}%{100 * s['majority']:9.1f}%")
    if 16 in [int(t) for t in FLAGS.tasks]:
        held_out = [q for q in task._raw(config, "val") if q.task == 16]
        arrays = task.encoded(config, "val")
        rows = arrays["task"] == 16
        logits = model.predict({"context": arrays["context"][rows], "question": arrays["question"][rows]},
                               batch_size=256, verbose=0)
        shares = induction_answers(held_out, [vocab.answers[i] for i in logits.argmax(-1)])
        scores["tasks"]["qa16"]["val_answers"] = shares
        print(f"qa16 answers to the {len(held_out)} held-out (val) questions:")
        for name, share in shares.items():
            print(f"  {name.replace('_', ' '):<28}{100 * share:6.1f}%")
    if FLAGS.json:
        _common.write_json(FLAGS.json, json.loads(json.dumps(scores)))


if __name__ == "__main__":
    app.run(main)
