"""A tiny CLEVR v1.0 directory in the exact official layout, drawn with Pillow."""

import json
import os

from PIL import Image, ImageDraw

COLORS = {"red": (173, 35, 35), "blue": (42, 75, 215), "green": (29, 105, 20), "gray": (87, 87, 87)}
SCENES = [  # (color, shape, material, size, x, y)
    [("red", "cube", "rubber", "large", -1.0, 1.0), ("blue", "sphere", "metal", "small", 2.0, -1.0)],
    [("green", "cylinder", "rubber", "small", 0.5, 0.5), ("red", "sphere", "metal", "large", -2.0, -2.0),
     ("gray", "cube", "rubber", "small", 1.5, 2.5)],
    [("blue", "cube", "metal", "large", 0.0, 0.0)],
]


def _questions(scene, split, index, filename):
    shapes = [o[1] for o in scene]
    first = scene[0]
    qs = [
        ("How many cubes are there?", str(shapes.count("cube")), "count"),
        (f"Is there a {first[0]} {first[1]}?", "yes", "exist"),
        (f"What color is the {first[1]}?", first[0], "query_color"),
        ("Are there more cubes than spheres?", "yes" if shapes.count("cube") > shapes.count("sphere") else "no", "greater_than"),
        (f"Is the {first[1]} the same size as the {scene[-1][1]}?", "yes" if first[3] == scene[-1][3] else "no", "equal_size"),
    ]
    out = []
    for text, answer, function in qs:
        record = {"question": text, "image_index": index, "image_filename": filename, "split": split,
                  "question_family_index": 0,
                  "program": [{"inputs": [], "function": "scene", "value_inputs": []},
                              {"inputs": [0], "function": function, "value_inputs": []}]}
        if split != "test":
            record["answer"] = answer
        else:
            del record["program"]
        out.append(record)
    return out


def make_clevr(root, counts=(("train", 6), ("val", 3), ("test", 2))):
    """Write images/, questions/ and scenes/ (none for test) under `root`; return `root`."""
    for split, n in counts:
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        questions, scenes = [], []
        for i in range(n):
            scene = SCENES[i % len(SCENES)]
            filename = f"CLEVR_{split}_{i:06d}.png"
            image = Image.new("RGBA", (480, 320), (128, 128, 128, 255))
            draw = ImageDraw.Draw(image)
            for color, shape, _, size, x, y in scene:
                cx, cy, r = 240 + 50 * x, 160 + 40 * y, 30 if size == "large" else 18
                box = [cx - r, cy - r, cx + r, cy + r]
                (draw.rectangle if shape == "cube" else draw.ellipse)(box, fill=COLORS[color] + (255,))
            image.save(os.path.join(root, "images", split, filename))
            questions += _questions(scene, split, i, filename)
            scenes.append({"image_index": i, "image_filename": filename, "split": split,
                           "objects": [{"color": c, "shape": s, "material": m, "size": z, "3d_coords": [x, y, 0.7],
                                        "rotation": 0.0, "pixel_coords": [0, 0, 0]} for c, s, m, z, x, y in scene]})
        os.makedirs(os.path.join(root, "questions"), exist_ok=True)
        with open(os.path.join(root, "questions", f"CLEVR_{split}_questions.json"), "w") as f:
            json.dump({"info": {"split": split, "version": "1.0"}, "questions": questions}, f)
        if split != "test":
            os.makedirs(os.path.join(root, "scenes"), exist_ok=True)
            with open(os.path.join(root, "scenes", f"CLEVR_{split}_scenes.json"), "w") as f:
                json.dump({"info": {"split": split}, "scenes": scenes}, f)
    return root
