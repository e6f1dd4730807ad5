"""bAbI tasks v1.2 (Weston et al. 2015): reader of the official text format and the RN's object view.

Format: every line is `<id> <text>`; id 1 starts a new story. Statement lines are sentences; question lines are
`<id> <question>\t<answer>\t<supporting fact ids>`. Answers with several words (`apple,football`, `n,w`) are one
class. Files are named `qa<N>_<name>_<split>.txt`.

For each question the RN's objects are the (up to) `max_sentences` statements of its story immediately before it
(earlier questions are not objects), oldest first; the model tags each with its relative position.
"""

import collections
import dataclasses
import functools
import glob
import os
import re

import numpy as np

from relation_networks.errors import DataError

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[A-Za-z0-9']+")
NUM_TASKS = 20


def tokenize(text):
    """Lower-cased word tokens; punctuation is dropped."""
    return [t.lower() for t in _TOKEN.findall(text)]


@dataclasses.dataclass
class Question:
    task: int  # 1..20
    context: list  # token lists of the statements before the question, oldest first
    question: list  # tokens
    answer: str
    supporting: list  # line ids
    source: str  # "file:line"


def parse_file(path, task=None, max_context=None):
    """Parse one bAbI file into `Question`s (keeping at most the last `max_context` statements of context).
    Raises `DataError` naming the file and line of a malformed line."""
    if task is None:
        match = re.match(r"qa(\d+)_", os.path.basename(path))
        if not match:
            raise DataError(f"{path}: cannot tell the task number from the file name (expected qa<N>_<name>_<split>.txt).")
        task = int(match.group(1))
    questions, story, previous_id = [], [], 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{number}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at column "
                                f"{e.start + 1}); bAbI files are plain text: download the file again.") from None
            if not line.strip():
                continue
            where = f"{path}:{number}"
            head, _, rest = line.partition(" ")
            if not head.isdigit() or not rest.strip():
                raise DataError(f"{where}: expected '<number> <sentence>', got {line[:80]!r}.")
            line_id = int(head)
            if line_id == 1:
                story = []
            elif line_id != previous_id + 1:
                raise DataError(f"{where}: line number {line_id} does not follow {previous_id} (a story starts at 1).")
            previous_id = line_id
            if "\t" in rest:
                parts = rest.split("\t")
                if len(parts) < 3 or not parts[1].strip() or not parts[2].strip():
                    cut = "" if raw.endswith(b"\n") else " (the file's last line: is the file cut short? download it again)"
                    raise DataError(f"{where}: a question line needs '<question>\\t<answer>\\t<supporting fact ids>', "
                                    f"got {line[:80]!r}{cut}.")
                supporting = parts[2].split()
                if not all(s.isdigit() and int(s) < line_id for s in supporting):
                    raise DataError(f"{where}: supporting facts must be the numbers of earlier lines of the story, got "
                                    f"{parts[2]!r}.")
                questions.append(Question(
                    task=task, context=[s for _, s in story[-max_context if max_context else 0:]], question=tokenize(parts[0]), answer=parts[1].strip(),
                    supporting=[int(s) for s in supporting], source=where,
                ))
            elif "?" in rest:  # statements never ask: a question line whose tabs became spaces
                raise DataError(
                    f"{where}: a question without a tab-separated answer: {line[:80]!r}. Question lines are "
                    "'<id> <question>\\t<answer>\\t<supporting fact ids>' with tab characters (were the tabs "
                    "turned into spaces by an editor or a copy?).")
            else:
                story.append((line_id, tokenize(rest)))
    if not questions:
        raise DataError(f"{path}: no question lines (<id> <question>\\t<answer>\\t<facts>); is this a bAbI file?")
    return questions


def task_files(directory, split):
    """{task number: path} of the `qa<N>_*_<split>.txt` files in `directory`."""
    if not os.path.isdir(directory):
        raise DataError(f"bAbI data directory not found: {directory} (set data.dir to the en-10k directory).")
    files = {}
    for path in glob.glob(os.path.join(directory, f"qa*_*_{split}.txt")):
        files[int(re.match(r"qa(\d+)_", os.path.basename(path)).group(1))] = path
    if not files:
        raise DataError(f"No bAbI {split} files (qa<N>_<name>_{split}.txt) in {directory}.")
    return dict(sorted(files.items()))


def load_split(directory, split, tasks=None, max_context=None):
    """All questions of the given tasks (default: every task found) in one split's files."""
    files = task_files(directory, split)
    wanted = tasks or list(files)
    missing = [t for t in wanted if t not in files]
    if missing:
        raise DataError(f"{directory}: no {split} file for task(s) {missing}.")
    questions = []
    for t in wanted:
        questions.extend(parse_file(files[t], task=t, max_context=max_context))
    return questions


def holdout_mask(questions, fraction, seed):
    """Boolean mask of the questions held out for validation: `fraction` of each task, chosen with `seed`."""
    mask = np.zeros(len(questions), bool)
    by_task = collections.defaultdict(list)
    for i, q in enumerate(questions):
        by_task[q.task].append(i)
    rng = np.random.default_rng(seed)
    for t in sorted(by_task):
        indices = np.array(by_task[t])
        mask[rng.permutation(indices)[: int(round(fraction * len(indices)))]] = True
    return mask


@dataclasses.dataclass
class Vocabulary:
    words: list  # index 0 = PAD, 1 = UNK
    answers: list

    @classmethod
    def build(cls, questions):
        words = sorted({w for q in questions for s in q.context + [q.question] for w in s})
        return cls(words=[PAD, UNK] + words, answers=sorted({q.answer for q in questions}))

    @functools.cached_property
    def word_ids(self):
        """word -> token id."""
        return {w: i for i, w in enumerate(self.words)}

    @functools.cached_property
    def answer_ids(self):
        """answer -> class id."""
        return {a: i for i, a in enumerate(self.answers)}

    def to_json(self):
        return {"words": self.words, "answers": self.answers}

    @classmethod
    def from_json(cls, data):
        return cls(words=list(data["words"]), answers=list(data["answers"]))


def encode(questions, vocab, max_sentences, sentence_length, question_length, warn=print):
    """Token-id arrays for the model.

    Returns a dict: `context` int32 `[n, max_sentences, sentence_length]` (the last `max_sentences` statements,
    oldest first, each left-padded with 0 so the LSTM's final state follows the last word; missing sentences are
    all 0 and masked), `question` int32 `[n, question_length]` (left-padded), `answer` int32 `[n]` (-1 for an
    answer outside the vocabulary), `task` int32 `[n]`.
    """
    index, answer_index = vocab.word_ids, vocab.answer_ids
    n = len(questions)
    context = np.zeros((n, max_sentences, sentence_length), np.int32)
    question = np.zeros((n, question_length), np.int32)
    answer = np.full(n, -1, np.int32)
    task = np.zeros(n, np.int32)
    unknown = collections.Counter()
    unknown_answers = collections.Counter()

    def ids(tokens, length, where, what):
        if len(tokens) > length:
            raise DataError(
                f"{where}: {what} has {len(tokens)} words, more than the model's maximum of {length} "
                f"(data.{'sentence' if what == 'a sentence' else 'question'}_length)."
            )
        out = [index.get(t, 1) for t in tokens]
        unknown.update(t for t in tokens if t not in index)
        return out

    for i, q in enumerate(questions):
        sentences = q.context[-max_sentences:]
        for j, s in enumerate(sentences):
            token_ids = ids(s, sentence_length, q.source, "a sentence")
            if token_ids:
                context[i, j, sentence_length - len(token_ids):] = token_ids
        token_ids = ids(q.question, question_length, q.source, "the question")
        question[i, question_length - len(token_ids):] = token_ids
        if q.answer in answer_index:
            answer[i] = answer_index[q.answer]
        else:
            unknown_answers[q.answer] += 1
        task[i] = q.task
    if unknown:
        warn(f"WARNING: {sum(unknown.values())} word(s) not in the training vocabulary mapped to {UNK}: "
             f"{', '.join(w for w, _ in unknown.most_common(10))}")
    if unknown_answers:
        warn(f"WARNING: {sum(unknown_answers.values())} answer(s) never seen in training (scored as wrong): "
             f"{', '.join(a for a, _ in unknown_answers.most_common(10))}")
    return {"context": context, "question": question, "answer": answer, "task": task}


def interchange_words(arrays, rows, groups, vocab, rng):
    """A copy of `encode`'s `arrays` in which every question in `rows` has the words of each group renamed by its
    own random permutation of the group, alike in its story, its question and its answer.

    `groups` are lists of words that play interchangeable roles in a task (the names, animals and colours of
    qa16): renaming them consistently keeps the answer right (renamed with them) while the story is one the model
    has not seen. `rng` is a numpy Generator. A word outside `vocab` is a `DataError`.
    """
    index, answer_index = vocab.word_ids, vocab.answer_ids
    unknown = [w for group in groups for w in group if w not in index]
    if unknown:
        raise DataError(f"Interchangeable word(s) not in the vocabulary of the training files: {', '.join(unknown)}.")
    for group in groups:
        answers = [w in answer_index for w in group]
        if any(answers) and not all(answers):
            raise DataError(f"Interchangeable words {group}: some are answers and some are not; a group's words "
                            "must all be answers or none (a renamed answer must stay an answer).")
    word_answer = np.full(len(vocab.words), -1, np.int64)  # word id -> answer id
    answer_word = np.full(len(vocab.answers), -1, np.int64)  # answer id -> word id
    for w, a in answer_index.items():
        if w in index:
            word_answer[index[w]], answer_word[a] = a, index[w]
    out = {name: values.copy() for name, values in arrays.items()}
    rows = np.asarray(rows, np.int64)
    n = len(rows)
    tables = np.tile(np.arange(len(vocab.words), dtype=np.int32), (n, 1))  # per question: word id -> renamed id
    for group in groups:
        ids = np.array([index[w] for w in group], np.int32)
        tables[:, ids] = ids[np.argsort(rng.random((n, len(ids))), axis=1)]
    context = arrays["context"][rows]
    out["context"][rows] = np.take_along_axis(tables, context.reshape(n, -1), axis=1).reshape(context.shape)
    out["question"][rows] = np.take_along_axis(tables, arrays["question"][rows], axis=1)
    answers = arrays["answer"][rows]
    words = np.where(answers >= 0, answer_word[np.maximum(answers, 0)], -1)
    renamed = word_answer[tables[np.arange(n), np.maximum(words, 0)]]
    out["answer"][rows] = np.where(words >= 0, renamed, answers)
    return out
