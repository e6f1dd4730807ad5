"""bAbI reader, vocabulary, splits, a few training steps, evaluation and export on small inline stories."""

import json
import os

import numpy as np
import pytest

from conftest import run_tool
from relation_networks.data import babi
from relation_networks.errors import DataError

STORY = """1 Mary moved to the bathroom.
2 John went to the hallway.
3 Where is Mary? \tbathroom\t1
4 Daniel picked up the apple.
5 Daniel took the football.
6 What is Daniel carrying?\tapple,football\t4 5
1 Sandra went to the garden.
2 Where is Sandra?\tgarden\t1
"""


def _write(directory, name, text):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_reader_story_boundaries_questions_and_multiword_answers(tmp_path):
    questions = babi.parse_file(_write(tmp_path, "qa8_lists-sets_train.txt", STORY))
    assert [q.task for q in questions] == [8, 8, 8]
    assert questions[0].context == [["mary", "moved", "to", "the", "bathroom"], ["john", "went", "to", "the", "hallway"]]
    assert questions[0].question == ["where", "is", "mary"] and questions[0].answer == "bathroom"
    # the earlier question is not a context sentence; multi-word answers are one class
    assert len(questions[1].context) == 4 and questions[1].answer == "apple,football"
    assert questions[1].supporting == [4, 5]
    assert questions[2].context == [["sandra", "went", "to", "the", "garden"]]  # a new story
    assert questions[0].source.endswith("qa8_lists-sets_train.txt:3")


def test_twenty_sentence_window(tmp_path):
    lines = [f"{i} Mary went to room{i}." for i in range(1, 26)] + ["26 Where is Mary?\troom25\t25"]
    questions = babi.parse_file(_write(tmp_path, "qa1_x_train.txt", "\n".join(lines) + "\n"), max_context=20)
    assert len(questions[0].context) == 20 and questions[0].context[0][-1] == "room6"
    vocab = babi.Vocabulary.build(questions)
    arrays = babi.encode(questions, vocab, max_sentences=20, sentence_length=6, question_length=4)
    assert arrays["context"].shape == (1, 20, 6)
    # oldest first, left-padded: the last token of the last sentence is "room25"
    assert vocab.words[arrays["context"][0, -1, -1]] == "room25"
    assert list(arrays["context"][0, 0, :2]) == [0, 0] and arrays["context"][0, 0, 2] != 0  # 4 words in 6 slots


@pytest.mark.parametrize(
    "text, message",
    [
        ("x Mary went home.\n", r":1: expected '<number> <sentence>'"),
        ("1 Mary went home.\n3 John left.\n", r":2: line number 3 does not follow 1"),
        ("1 Mary went home.\n2 Where is Mary?\t\t1\n", r":2: a question line needs"),
        ("1 Mary went home.\n2 Where is Mary?\thome\tone\n", r":2: supporting facts must be the numbers of earlier"),
        ("1 Mary went home.\n2 Where is Mary?\thome\t2\n", r":2: supporting facts must be the numbers of earlier"),
        # cut in the middle of a line: the fragment would have become an answer class of its own
        ("1 Mary went home.\n2 Where is Mary?\tho", r":2: a question line needs .* is the file cut short"),
        ("1 Mary went home.\n2 Where is Mary?\thome\n", r":2: a question line needs"),
        ("1 Mary went home.\n2 Where is Mary?    home    1\n", r":2: a question without a tab-separated answer"),
        ("1 Mary went home.\n2 John left.\n", r"no question lines"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, "qa1_x_train.txt", text)
    with pytest.raises(DataError, match=message) as info:
        babi.parse_file(path)
    assert path in str(info.value)


def test_vocabulary_unknown_words_and_lengths(tmp_path):
    train = babi.parse_file(_write(tmp_path, "qa8_lists-sets_train.txt", STORY))
    vocab = babi.Vocabulary.build(train)
    assert vocab.words[:2] == [babi.PAD, babi.UNK] and "apple,football" in vocab.answers
    test = babi.parse_file(_write(tmp_path, "qa8_lists-sets_test.txt", "1 Bill went to the moon.\n2 Where is Bill?\tmoon\t1\n"))
    warnings = []
    arrays = babi.encode(test, vocab, 20, 8, 8, warn=warnings.append)
    assert "bill" in warnings[0] and "moon" in warnings[0] and "moon" in warnings[1]
    assert arrays["answer"][0] == -1 and (arrays["question"][0] == 1).sum() == 1  # "bill" -> UNK
    with pytest.raises(DataError, match="more than the model's maximum of 2"):
        babi.encode(test, vocab, 20, 8, 2)


def test_a_file_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "qa1_x_train.txt"
    path.write_bytes("1 Mary went home.\n2 Where is Mary?\thome\t1\n".encode() + b"3 Jos\xe9 left.\n")
    with pytest.raises(DataError, match=r"qa1_x_train.txt:3: not UTF-8 text \(byte b'\\xe9' at column 6\)"):
        babi.parse_file(str(path))


def test_holdout_is_ten_percent_per_task_and_deterministic(tmp_path):
    questions = [babi.Question(task=t, context=[], question=["q"], answer="a", supporting=[], source="") for t in (1, 2) for _ in range(50)]
    mask = babi.holdout_mask(questions, 0.1, seed=0)
    assert mask[:50].sum() == 5 and mask[50:].sum() == 5
    np.testing.assert_array_equal(mask, babi.holdout_mask(questions, 0.1, seed=0))


@pytest.fixture(scope="module")
def babi_dir(tmp_path_factory):
    """Two tasks, train and test files, in the official naming."""
    directory = tmp_path_factory.mktemp("babi")
    rng = np.random.default_rng(0)
    people, places = ["mary", "john", "sandra"], ["kitchen", "garden", "office"]
    for split, stories in (("train", 60), ("test", 10)):
        for task, name in ((1, "single-supporting-fact"), (6, "yes-no-questions")):
            lines = []
            for _ in range(stories):
                where = {}
                n = 0
                for _ in range(3):
                    person, place = people[rng.integers(3)], places[rng.integers(3)]
                    where[person] = place
                    n += 1
                    lines.append(f"{n} {person.title()} went to the {place}.")
                person = list(where)[rng.integers(len(where))]
                n += 1
                if task == 1:
                    lines.append(f"{n} Where is {person.title()}? \t{where[person]}\t1")
                else:
                    place = places[rng.integers(3)]
                    lines.append(f"{n} Is {person.title()} in the {place}? \t{'yes' if where[person] == place else 'no'}\t1")
            _write(directory, f"qa{task}_{name}_{split}.txt", "\n".join(lines) + "\n")
    return str(directory)


@pytest.fixture(scope="module")
def babi_run(babi_dir, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("babi_run") / "run")
    sets = [f"data.dir={babi_dir}", "data.tasks=[1,6]", "model.g_units=[16,16]", "model.f_units=[16]",
            "data.length_window=2", "train.epochs=2", "train.batch_size=16", "train.precision=float32",
            f"run_dir={run_dir}"]
    args = ["--config", "configs/babi.yaml"] + [a for s in sets for a in ("--set", s)]
    result = run_tool("train", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result.stdout


def test_training_and_evaluation_table(babi_run, babi_dir, tmp_path):
    run_dir, stdout = babi_run
    assert "qa1" in stdout and "qa6" in stdout and "passed" in stdout
    assert os.path.exists(os.path.join(run_dir, "vocab.json"))
    out = str(tmp_path / "test.json")
    result = run_tool("evaluate", "--run", run_dir, "--split", "test", "--set", f"data.dir={babi_dir}", "--json", out)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out) as f:
        report = json.load(f)
    assert set(report["groups"]) == {"qa1", "qa6"} and report["groups"]["qa1"]["count"] == 10
    assert report["extra"]["passed"] == sum(g["accuracy"] > 0.95 for g in report["groups"].values())


def test_export_round_trip_and_evaluate_exported_model(babi_run, babi_dir, tmp_path):
    run_dir, _ = babi_run
    out = str(tmp_path / "saved_models")
    result = run_tool("export", "--run", run_dir, "--out", out, "--version", "1", "--serving_doc", str(tmp_path / "S.md"))
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = os.path.join(out, "babi", "1")
    for name in ("saved_model.pb", "model.tflite", "model_quant.tflite", "vocab.txt", "vocab.json"):
        assert os.path.exists(os.path.join(model_dir, name)), name
    with open(os.path.join(model_dir, "signature.json")) as f:
        signature = json.load(f)
    assert signature["inputs"]["context"] == {"shape": [None, 20, 12], "dtype": "int32"}
    assert all(c["ok"] for c in signature["parity"]["checks"])
    for model in (model_dir, os.path.join(model_dir, "model.tflite")):
        report_path = str(tmp_path / "exported.json")
        result = run_tool("evaluate", "--model", model, "--split", "test", "--set", f"data.dir={babi_dir}",
                          "--json", report_path)
        assert result.returncode == 0, result.stderr[-3000:]
        with open(report_path) as f:
            assert "passed" in json.load(f)["extra"]
    predicted = run_tool("predict", "--model", model_dir, "--input", os.path.join(model_dir, "example_request.json"))
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert json.loads(predicted.stdout)["predictions"][0]["answer"] in signature["answers"]


def test_trimmed_objects_give_the_same_answers():
    """`model.trim`: the RN sees only the slots up to the last one present in the batch, and answers the same."""
    import keras

    from relation_networks.tasks.babi import BabiData, BabiModel, build_model

    vocab = babi.Vocabulary(words=[babi.PAD, babi.UNK] + [f"w{i}" for i in range(10)], answers=["a", "b", "c"])
    data = BabiData(max_sentences=6, sentence_length=4, question_length=3)
    small = dict(embedding_dim=8, sentence_lstm=8, question_lstm=8, g_units=[16, 16], f_units=[16])
    full = build_model(BabiModel(trim=False, **small), data, vocab)
    trimmed = build_model(BabiModel(trim=True, **small), data, vocab)
    trimmed.set_weights(full.get_weights())
    rng = np.random.default_rng(0)
    context = rng.integers(1, 12, (3, 6, 4)).astype("int32")
    context[:, 4:] = 0  # slots 4 and 5 absent everywhere
    context[0, 1] = 0  # a gap inside a story: still masked, not cut
    context[1, 3:] = 0
    features = {"context": context, "question": rng.integers(1, 12, (3, 3)).astype("int32")}
    np.testing.assert_allclose(trimmed(features).numpy(), full(features).numpy(), rtol=1e-5, atol=1e-5)
    objects = keras.Model(trimmed.inputs, trimmed.get_layer("sentence_objects").output[0])(features)
    assert objects.shape == (3, 4, 8 + 6)  # four slots kept, each still tagged with one of six positions
    empty = {"context": np.zeros_like(context), "question": features["question"]}
    np.testing.assert_allclose(trimmed(empty).numpy(), full(empty).numpy(), rtol=1e-5, atol=1e-5)


def test_embedding_init_sets_the_scale_of_both_word_embeddings_and_survives_saving(tmp_path):
    """`model.embedding_init`: N(0, 1) words for the sentence and the question LSTMs (Keras' default is
    U(-0.05, 0.05)), both starting from the same draw, which makes the untrained sentence objects differ from one
    sentence to the next."""
    import keras

    from relation_networks.tasks.babi import BabiData, BabiModel, build_model

    vocab = babi.Vocabulary(words=[babi.PAD, babi.UNK] + [f"w{i}" for i in range(200)], answers=["a", "b"])
    data = BabiData(max_sentences=5, sentence_length=4, question_length=3)
    small = dict(embedding_dim=16, sentence_lstm=16, question_lstm=8, g_units=[16], f_units=[16])
    models = {init: build_model(BabiModel(embedding_init=init, **small), data, vocab) for init in ("uniform", "normal")}
    for init, expected_std in (("uniform", 0.1 / 12 ** 0.5), ("normal", 1.0)):
        model = models[init]
        for layer in (model.get_layer("sentence_objects").embedding, model.get_layer("question_embedding")):
            std = float(np.std(layer.embeddings.numpy()))
            assert abs(std - expected_std) < 0.1 * expected_std, (init, layer.name, std)
    words = [models["normal"].get_layer(name) for name in ("sentence_objects", "question_embedding")]
    np.testing.assert_array_equal(words[0].embedding.embeddings.numpy(), words[1].embeddings.numpy())  # same start
    context = np.random.default_rng(0).integers(1, 202, (8, 5, 4)).astype("int32")
    spread = {}
    for init, model in models.items():
        objects = keras.Model(model.inputs, model.get_layer("sentence_objects").output[0])(
            {"context": context, "question": context[:, 0, :3]}).numpy()[..., :16]
        spread[init] = float(np.std(objects, axis=1).mean())
    assert spread["normal"] > 10 * spread["uniform"], spread
    path = str(tmp_path / "model.keras")
    models["normal"].save(path)
    restored = keras.models.load_model(path)
    layer = restored.get_layer("sentence_objects")
    assert isinstance(layer.embeddings_initializer, keras.initializers.RandomNormal)
    np.testing.assert_allclose(layer.embedding.embeddings.numpy(),
                               models["normal"].get_layer("sentence_objects").embedding.embeddings.numpy())


def test_length_grouped_batches():
    from relation_networks.tasks.babi import length_grouped_order, story_lengths

    context = np.zeros((4, 5, 2), np.int32)
    context[0, :2, 1], context[1, 4, 0], context[2, 0, 0] = 1, 2, 3  # slot 4 present after a gap
    assert list(story_lengths(context)) == [2, 5, 1, 0]

    lengths = np.random.default_rng(1).integers(1, 21, 1000)
    candidates = np.arange(0, 1000, 2)[::-1]  # e.g. the questions with a known answer
    order = length_grouped_order(lengths, candidates, batch_size=16, window=4, seed=3)
    assert sorted(order) == sorted(candidates)
    np.testing.assert_array_equal(order, length_grouped_order(lengths, candidates, 16, 4, seed=3))
    assert not np.array_equal(order, length_grouped_order(lengths, candidates, 16, 4, seed=4))
    batches = order[: len(order) // 16 * 16].reshape(-1, 16)
    assert all((np.diff(lengths[b]) >= 0).all() for b in batches)  # each batch a run of one sorted window
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    shuffled = np.random.default_rng(3).permutation(candidates)[: batches.size].reshape(-1, 16)
    assert spread < 0.5 * np.mean([np.ptp(lengths[b]) for b in shuffled])


def test_predictions_in_length_order_come_back_in_split_order(babi_run):
    from relation_networks import config as config_lib
    from relation_networks import tasks
    from relation_networks.tasks.base import Task

    config = config_lib.load(os.path.join(babi_run[0], "config.yaml"))
    task = tasks.get("babi")
    batch_sizes = []

    def predict(features):  # a function of each question alone, as a model's logits are
        batch_sizes.append(len(features["question"]))
        return np.stack([features["context"].sum(axis=(1, 2)), features["question"][:, -1]], axis=-1)

    features, labels, logits = task.predictions(predict, config, "val", batch_size=7)
    reference = Task.predictions(task, predict, config, "val", batch_size=7)
    for name in ("context", "question"):
        np.testing.assert_array_equal(features[name], reference[0][name])
    np.testing.assert_array_equal(labels, reference[1])
    np.testing.assert_array_equal(logits, reference[2])
    assert max(batch_sizes) == 7 and sum(batch_sizes) == 2 * len(labels)


def test_length_grouped_training_data_shards_by_global_batch(babi_dir, tmp_path):
    """Each worker's batch is its share of one global batch of similar story lengths; the shards are disjoint."""
    import tensorflow as tf

    from relation_networks import config as config_lib
    from relation_networks import tasks
    from relation_networks.tasks.babi import story_lengths

    sets = [f"data.dir={babi_dir}", "data.tasks=[1,6]", "data.length_window=3", "train.batch_size=4",
            f"run_dir={tmp_path / 'run'}"]
    config = config_lib.load("configs/babi.yaml", overrides=sets)
    task = tasks.get("babi")
    arrays = task.encoded(config, "train")  # cached per config and run directory: this test's own copy
    rng = np.random.default_rng(0)
    for story in arrays["context"]:  # stories of 1 to 3 sentences, so that lengths differ
        story[rng.integers(1, 4):] = 0
    shards = []
    for worker in range(2):
        ds = task.training_dataset(config, seed=5, input_context=tf.distribute.InputContext(2, worker, 2))
        shards.append([(f["context"], f["question"]) for f, _ in ds.as_numpy_iterator()])
    keys = [(c.tobytes(), q.tobytes()) for shard in shards for c, q in shard]
    assert sorted(keys) == sorted((c.tobytes(), q.tobytes()) for c, q in zip(arrays["context"], arrays["question"]))
    lengths = [story_lengths(np.stack([c for c, _ in shard])) for shard in shards]
    for step in range(len(arrays["answer"]) // 8):  # global batch `step`: 4 questions of each worker, sorted
        merged = np.stack([lengths[0][4 * step : 4 * step + 4], lengths[1][4 * step : 4 * step + 4]], 1).reshape(-1)
        assert (np.diff(merged) >= 0).all()


def test_missing_data_directory_is_one_clear_error(tmp_path):
    result = run_tool("train", "--config", "configs/babi.yaml", "--set", f"data.dir={tmp_path}/none",
                      "--set", f"run_dir={tmp_path}/run")
    assert result.returncode == 2 and "bAbI data directory not found" in result.stderr


def test_relational_memory_encoder_trains_masks_absent_sentences_and_exports(babi_dir, tmp_path):
    """`model.type=rmc`: the RMC as a drop-in encoder of the sentence objects (SPEC 3.6)."""
    import keras
    import numpy as np

    from relation_networks import config as config_lib
    from relation_networks import tasks

    run_dir = str(tmp_path / "run")
    # four sentence slots (the stories have three): a short unrolled RMC keeps the export quick
    sets = [f"data.dir={babi_dir}", "data.tasks=[1]", "data.max_sentences=4", "model.type=rmc", "model.mem_slots=2",
            "model.head_size=8", "model.num_heads=2", "model.f_units=[16]", "train.epochs=1", "train.batch_size=16",
            "train.precision=float32", f"run_dir={run_dir}"]
    result = run_tool("train", "--config", "configs/babi.yaml", *[a for s in sets for a in ("--set", s)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qa1" in result.stdout and "paper" not in result.stdout  # no RN-paper column for another model

    config = config_lib.load(os.path.join(run_dir, "config.yaml"))
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    assert model.get_layer("rmc") is not None
    features = next(tasks.get("babi").dataset(config, "val").batch(4).as_numpy_iterator())[0]
    present = (features["context"] != 0).any(-1).sum(-1)
    assert present.max() < features["context"].shape[1]  # the fixture's stories leave trailing slots empty
    steps = keras.Model(model.inputs, model.get_layer("sentence_and_question").output)(features)
    logits = model(features).numpy()
    for i, n in enumerate(present):  # the answer from the memory after the story's own sentences only
        h = model.get_layer("rmc")(steps[i : i + 1, :n])
        for name in ("f_phi_0", "answer", "logits"):
            h = model.get_layer(name)(h)
        np.testing.assert_allclose(logits[i], h.numpy()[0], rtol=1e-5, atol=1e-5)

    out = str(tmp_path / "saved_models")
    result = run_tool("export", "--run", run_dir, "--out", out, "--version", "1", "--serving_doc", str(tmp_path / "S.md"))
    assert result.returncode == 0, result.stderr[-3000:]
    with open(os.path.join(out, "babi", "1", "signature.json")) as f:
        assert all(c["ok"] for c in json.load(f)["parity"]["checks"])


def test_induction_answer_shares_by_independent_computation():
    from _probes import induction_answers

    from relation_networks.data.babi import Question, tokenize

    story = [tokenize(s) for s in ("Lily is a swan.", "Lily is white.", "Greg is a frog.", "Greg is green.",
                                   "Brian is a swan.")]
    question = Question(task=16, context=story, question=tokenize("What color is Brian?"), answer="white",
                        supporting=[1, 2, 5], source="x:6")
    # right; a story colour but the last stated (wrong); a colour never stated
    shares = induction_answers([question] * 3, ["white", "green", "gray"])
    assert shares == {"right": 1 / 3, "a_colour_of_the_story": 2 / 3, "the_last_colour_stated": 1 / 3,
                      "rule_last_colour_stated": 0.0,  # the last colour stated is green
                      "uniform_pick_among_them": 1 / 2}  # two distinct colours in the story, the answer among them


def test_word_probes_read_a_word_kept_in_the_encoding_and_not_one_left_out():
    import numpy as np

    from _probes import word_probes

    rng = np.random.default_rng(0)
    names, colours = ["lily", "greg", "brian", "julius"], ["white", "green", "gray", "yellow", "red"]
    sentences = [[n, "is", c] for n in names for c in colours] * 3
    name_code = np.eye(len(names))[[names.index(s[0]) for s in sentences]]
    encodings = np.concatenate([name_code, rng.normal(size=(len(sentences), 3))], axis=1)  # keeps the name only
    scores = word_probes(encodings, sentences, np.random.default_rng(0))
    assert scores[1]["accuracy"] == 1.0 and scores[1]["words"] == 4
    assert scores[-1]["accuracy"] < 0.6 and scores[-1]["words"] == 5  # the colour is not in the encoding
    assert 2 not in scores  # "is" everywhere: nothing to tell apart


def test_probe_babi_tool_reads_a_trained_model(babi_run, babi_dir, tmp_path):
    run_dir, _ = babi_run
    out = tmp_path / "probe.json"
    result = run_tool("probe_babi", "--model", run_dir, "--tasks", "1", "--set", f"data.dir={babi_dir}",
                      "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qa1 statements" in result.stdout
    with open(out) as f:
        scores = json.load(f)["tasks"]["qa1"]["statements"]
    assert set(scores["trained"]) == set(scores["initial"]) and scores["trained"]
    refused = run_tool("probe_babi", "--model", "saved_models/sort_of_clevr/1")
    assert refused.returncode == 2 and "this probe is for bAbI models" in refused.stderr


def _induction_stories(rng, count):
    """qa16-style stories written here: four people, each of a species and a colour; every species has one
    colour; the question asks the colour of the last person, whose colour is not stated."""
    people, species, colours = ["lily", "greg", "brian", "julius"], ["swan", "frog", "lion"], ["white", "gray", "green"]
    lines = []
    for _ in range(count):
        colour_of = dict(zip(species, rng.permutation(colours)))
        who = rng.permutation(people)
        kinds = [species[i] for i in rng.integers(0, 3, len(who))]
        kinds[-1] = kinds[0]  # the asked person shares a species with someone whose colour is stated
        story = [s for p, k in zip(who[:-1], kinds[:-1]) for s in (f"{p.title()} is a {k}.", f"{p.title()} is {colour_of[k]}.")]
        story.append(f"{who[-1].title()} is a {kinds[-1]}.")
        lines += [f"{n} {s}" for n, s in enumerate(story, 1)]
        lines.append(f"{len(story) + 1} What color is {who[-1].title()}?\t{colour_of[kinds[-1]]}\t1")
    return "\n".join(lines) + "\n", people, species, colours


def _induced_colour(story_words, question_words):
    """The answer of an induction question, by the rule: the colour stated for another member of the species."""
    species_of, colour_of = {}, {}
    for words in story_words:
        (colour_of if len(words) == 3 else species_of)[words[0]] = words[-1]
    kind = species_of[question_words[-1]]
    return next(colour_of[p] for p, k in species_of.items() if k == kind and p in colour_of)


def test_interchanged_words_keep_every_answer_right_by_the_rule(tmp_path):
    text, people, species, colours = _induction_stories(np.random.default_rng(0), 40)
    questions = babi.parse_file(_write(tmp_path, "qa16_basic-induction_train.txt", text))
    vocab = babi.Vocabulary.build(questions)
    arrays = babi.encode(questions, vocab, 20, 6, 5)
    renamed = babi.interchange_words(arrays, np.arange(30), [people, species, colours], vocab, np.random.default_rng(1))
    words = np.array(vocab.words)
    changed = 0
    for i in range(len(questions)):
        story = [[w for w in words[s] if w != babi.PAD] for s in renamed["context"][i] if s.any()]
        question = [w for w in words[renamed["question"][i]] if w != babi.PAD]
        assert vocab.answers[renamed["answer"][i]] == _induced_colour(story, question), i
        changed += not np.array_equal(renamed["context"][i], arrays["context"][i])
    assert 25 <= changed <= 30  # renamed rows only (a row may draw the identity), the others untouched
    np.testing.assert_array_equal(renamed["context"][30:], arrays["context"][30:])
    assert not np.array_equal(renamed["context"], arrays["context"])  # the input arrays are not changed in place
    with pytest.raises(DataError, match="not in the vocabulary.*zebra"):
        babi.interchange_words(arrays, [0], [["swan", "zebra"]], vocab, np.random.default_rng(0))
    with pytest.raises(DataError, match="some are answers and some are not"):
        babi.interchange_words(arrays, [0], [["white", "swan"]], vocab, np.random.default_rng(0))


def test_interchanged_words_only_in_training_data_and_new_each_epoch(babi_dir, tmp_path):
    from relation_networks import config as config_lib
    from relation_networks import tasks
    from relation_networks.config import ConfigError

    sets = [f"data.dir={babi_dir}", "data.tasks=[1,6]", f"run_dir={tmp_path / 'run'}",
            "data.interchangeable={qa1: [[mary, john, sandra], [kitchen, garden, office]]}"]
    config = config_lib.load("configs/babi.yaml", overrides=sets)
    task = tasks.get("babi")
    plain = task.encoded(config, "train")

    def epoch(seed):
        features, answers = zip(*task.training_dataset(config, seed=seed).as_numpy_iterator())
        return np.stack([f["context"] for f in features]), np.array(answers)

    (first, answers), (again, _), (second, _) = epoch(3), epoch(3), epoch(4)
    np.testing.assert_array_equal(first, again)  # seeded: a resumed epoch sees the same questions
    assert not np.array_equal(np.sort(first.reshape(len(first), -1), 0), np.sort(second.reshape(len(second), -1), 0))
    assert sorted(map(bytes, first.reshape(len(first), -1))) != sorted(map(bytes, plain["context"].reshape(len(first), -1)))
    assert answers.min() >= 0 and len(answers) == (plain["answer"] >= 0).sum()
    for split in ("val", "test"):  # evaluation data are never renamed
        features, labels = zip(*task.dataset(config, split).as_numpy_iterator())
        np.testing.assert_array_equal(np.stack([f["context"] for f in features]), task.encoded(config, split)["context"])
    for groups, message in (("{qa2: [[mary, john]]}", "keys are tasks of data.tasks"),
                            ("{qa1: [[mary]]}", "two or more distinct words"),
                            ("{qa1: [[mary, john], [john, sandra]]}", "one group only")):
        with pytest.raises(ConfigError, match=message):
            config_lib.load("configs/babi.yaml", overrides=sets[:3] + [f"data.interchangeable={groups}"])
    bad = config_lib.load("configs/babi.yaml", overrides=sets[:3] + ["data.interchangeable={qa6: [[mary, zed]]}"])
    with pytest.raises(ConfigError, match=r"data.interchangeable.qa6: .*zed"):
        task.training_dataset(bad, seed=0)


def test_repeated_task_questions_appear_that_often_per_epoch_in_training_only(babi_dir, tmp_path):
    from relation_networks import config as config_lib
    from relation_networks import tasks
    from relation_networks.config import ConfigError

    sets = [f"data.dir={babi_dir}", "data.tasks=[1,6]", f"run_dir={tmp_path / 'run'}", "data.repeats={qa6: 3}"]
    config = config_lib.load("configs/babi.yaml", overrides=sets)
    task = tasks.get("babi")
    plain = task.encoded(config, "train")
    trainable = plain["answer"] >= 0
    qa6 = int(np.sum(trainable & (plain["task"] == 6)))
    assert qa6 and task.num_examples(config, "train") == len(plain["task"]) + 2 * int(np.sum(plain["task"] == 6))

    def questions(split=None, seed=0):
        ds = task.training_dataset(config, seed=seed) if split is None else task.dataset(config, split)
        return sorted(bytes(f["context"]) + bytes(f["question"]) for f, _ in ds.as_numpy_iterator())

    expected = [bytes(c) + bytes(q) for c, q, t, ok in zip(plain["context"], plain["question"], plain["task"], trainable)
                if ok for _ in range(3 if t == 6 else 1)]
    assert questions() == sorted(expected)
    assert questions("val") == sorted(bytes(c) + bytes(q) for c, q in zip(*(task.encoded(config, "val")[k]
                                                                         for k in ("context", "question"))))

    # With renaming, the copies of a question are renamed independently.
    renamed = config_lib.load("configs/babi.yaml", overrides=sets[:3] + [
        "data.repeats={qa1: 4}", "data.interchangeable={qa1: [[mary, john, sandra], [kitchen, garden, office]]}"])
    contexts = [bytes(f["context"]) for f, _ in task.training_dataset(renamed, seed=1).as_numpy_iterator()]
    assert len(set(contexts)) > len(plain["task"])
    for repeats, message in (("{qa2: 2}", "keys are tasks of data.tasks"), ("{qa1: 0}", "whole number >= 1"),
                             ("{qa1: 1.5}", "must be a int")):
        with pytest.raises(ConfigError, match=f"^configs/babi.yaml .*'data.repeats.qa.'.*{message}"):
            config_lib.load("configs/babi.yaml", overrides=sets[:3] + [f"data.repeats={repeats}"])


def test_a_run_started_from_a_model_keeps_its_vocabulary_on_fewer_tasks(babi_run, babi_dir, tmp_path):
    """`train.init_from` on one of the source's tasks: the source's vocabulary (not one built from that task's
    files), so that its word embeddings and answer logits fit; saved in the new run."""
    from relation_networks import config as config_lib
    from relation_networks import tasks
    from relation_networks.checkpointing import initialize_from

    source = babi_run[0]
    run_dir = tmp_path / "finetune"
    config = config_lib.load(os.path.join(source, "config.yaml"), overrides=[
        "data.tasks=[6]", f"train.init_from={source}", f"run_dir={run_dir}"])
    task = tasks.get("babi")
    vocab = task.vocabulary(config)
    with open(os.path.join(source, "vocab.json")) as f:
        assert vocab.to_json() == json.load(f)
    assert len(vocab.answers) > len(babi.Vocabulary.build(task._raw(config, "train")).answers)  # task 6: yes/no
    assert os.path.isfile(run_dir / "vocab.json")
    assert initialize_from(task.build_model(config), source) > 0
