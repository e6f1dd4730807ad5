"""The generator's answers are re-derived here independently, from the object table and from the pixels."""

import numpy as np
import pytest

from relation_networks.data import sort_of_clevr as soc


@pytest.fixture(scope="module")
def data():
    return soc.generate(60, seed=3)


def test_shapes_and_dtypes(data):
    assert data["images"].shape == (60, 75, 75, 3) and data["images"].dtype == np.uint8
    assert data["questions"].shape == (60, 20, 11) and data["questions"].dtype == np.float32
    assert data["answers"].shape == (60, 20) and np.issubdtype(data["answers"].dtype, np.integer)
    assert data["objects"].shape == (60, 6, 4) and data["objects"].dtype == np.float32
    assert soc.SHAPES == ["square", "circle"]
    assert len(soc.COLORS) == 6 and len(set(soc.ANSWERS)) == len(soc.ANSWERS)


def test_deterministic_by_seed(data):
    again = soc.generate(60, seed=3)
    for key in data:
        np.testing.assert_array_equal(data[key], again[key])
    other = soc.generate(60, seed=4)
    assert not np.array_equal(data["objects"], other["objects"])


def test_question_encoding(data):
    q = data["questions"]
    for lo, hi in ((0, 6), (6, 8), (8, 11)):
        np.testing.assert_array_equal(q[..., lo:hi].sum(-1), 1.0)
    np.testing.assert_array_equal(q[:, :10, 6], 1.0)  # first 10 non-relational
    np.testing.assert_array_equal(q[:, 10:, 7], 1.0)  # last 10 relational


def _independent_answer(objects, question):
    """Answer string from the object table, written without the generator's helpers."""
    color = int(np.argmax(question[:6]))
    relational = question[7] == 1
    subtype = int(np.argmax(question[8:]))
    row = objects[objects[:, 0] == color][0]
    shape_name = ["square", "circle"][int(row[3])]
    if not relational:
        return [shape_name, "left" if row[1] < 37.5 else "right", "top" if row[2] < 37.5 else "bottom"][subtype]
    others = objects[objects[:, 0] != color]
    d2 = (others[:, 1] - row[1]) ** 2 + (others[:, 2] - row[2]) ** 2
    if subtype == 0:
        return ["square", "circle"][int(others[np.argmin(d2), 3])]
    if subtype == 1:
        return ["square", "circle"][int(others[np.argmax(d2), 3])]
    return str(int((objects[:, 3] == row[3]).sum()))


def test_answers_rederived_for_every_question(data):
    seen = set()
    for n in range(len(data["images"])):
        for k in range(20):
            q = data["questions"][n, k]
            assert soc.ANSWERS[data["answers"][n, k]] == _independent_answer(data["objects"][n], q)
            seen.add(soc.SUBTYPE_NAMES[soc.subtype_index(q)])
    assert seen == set(soc.SUBTYPE_NAMES)


def test_object_table_matches_pixels(data):
    s = soc.OBJECT_HALF_SIZE
    for image, objects in zip(data["images"], data["objects"]):
        np.testing.assert_array_equal(objects[:, 0], np.arange(6))  # row k is colour k
        for color, x, y, shape in objects:
            x, y = int(x), int(y)
            rgb = soc.RGB[soc.COLORS[int(color)]]
            np.testing.assert_array_equal(image[y, x], rgb)
            corner = image[y + s, x + s]  # inside a square, outside a circle
            if soc.SHAPES[int(shape)] == "square":
                np.testing.assert_array_equal(corner, rgb)
            else:
                np.testing.assert_array_equal(corner, [255, 255, 255])


def test_objects_do_not_overlap_and_distances_are_unambiguous(data):
    for objects in data["objects"]:
        xy = objects[:, 1:3]
        cheb = np.abs(xy[:, None] - xy[None]).max(-1) + np.eye(6) * 1e9
        assert cheb.min() > 2 * soc.OBJECT_HALF_SIZE
        dist = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))
        for k in range(6):
            d = np.sort(np.delete(dist[k], k))
            assert d[1] - d[0] >= 1.0 and d[-1] - d[-2] >= 1.0


def test_describe():
    q = soc.encode_question(0, True, 0)
    assert soc.describe(q) == "What is the shape of the object closest to the red object?"
    assert soc.decode_question(q) == (0, "closest")


def test_answer_margin_by_hand():
    # colour, x, y, shape (0 square, 1 circle); red (row 0) at the origin, the others on the x axis
    objects = np.array([[0, 10, 10, 0], [1, 13, 10, 1], [2, 20, 10, 1], [3, 25, 10, 0], [4, 50, 10, 0],
                        [5, 60, 10, 1]], np.float32)
    closest, furthest = (soc.encode_question(0, True, k) for k in (0, 1))
    # closest to red: green (3 px, circle); nearest square rival: orange (15 px) -> 12
    assert soc.answer_margin(objects, closest) == pytest.approx(12.0)
    # furthest from red: gray (50 px, circle); farthest square rival: yellow (40 px) -> 10
    assert soc.answer_margin(objects, furthest) == pytest.approx(10.0)
    same_shape = objects.copy()
    same_shape[1:, 3] = 1
    assert soc.answer_margin(same_shape, closest) == float("inf")
    assert np.isnan(soc.answer_margin(objects, soc.encode_question(0, False, 0)))
    assert np.isnan(soc.answer_margin(objects, soc.encode_question(0, True, 2)))


def test_answer_margin_is_at_least_the_distance_gap(data):
    for objects, questions in zip(data["objects"], data["questions"]):
        for q in questions:
            margin = soc.answer_margin(objects, q)
            assert np.isnan(margin) or margin >= 1.0 - 1e-9


def test_prepare_is_atomic_and_reused(tmp_path):
    path = soc.prepare(str(tmp_path), 0, 6, 2, 9, 3, log=lambda *_: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.split("/")[-1]]
    mtime = (tmp_path / path.split("/")[-1] / "manifest.json").stat().st_mtime
    assert soc.prepare(str(tmp_path), 0, 6, 2, 9, 3, log=lambda *_: None) == path
    assert (tmp_path / path.split("/")[-1] / "manifest.json").stat().st_mtime == mtime
    with pytest.raises(ValueError, match="test_seed"):
        soc.prepare(str(tmp_path), 5, 6, 2, 5, 3)


def test_generation_reports_progress(tmp_path):
    lines = []
    soc.prepare(str(tmp_path), 0, 1500, 10, 9, 5, log=lines.append)
    assert any("train + val: 1,000 of 1,510 images" in line for line in lines)
    assert any("test: 5 of 5 images" in line for line in lines)


@pytest.mark.parametrize("damage, message", [
    ("train.tfrecord", "train.tfrecord does not match the checksum its manifest recorded"),
    ("manifest.json", "manifest.json is damaged"),
])
def test_damaged_generated_files_are_found_and_the_fix_is_named(tmp_path, damage, message):
    from relation_networks.errors import DataError

    path = soc.prepare(str(tmp_path), 0, 6, 2, 9, 3, log=lambda *_: None)
    target = tmp_path / path.split("/")[-1] / damage
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=message) as info:
        soc.prepare(str(tmp_path), 0, 6, 2, 9, 3, log=lambda *_: None)
    assert "Delete the directory" in str(info.value) and "run the same command again" in str(info.value)
