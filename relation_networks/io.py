"""Atomic file output: write to a temporary name in the same directory, then rename over the target."""

import contextlib
import json
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is renamed to `path`, on error removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Keep the extension: some writers (keras.Model.save) insist on it.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{os.path.basename(path)}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary directory next to `path`; on success it becomes `path` (which must not exist)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(path)}-", dir=parent)
    try:
        yield tmp
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def atomic_write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_markdown_section(path, key, title, text, preamble="# Results\n"):
    """Replace (or append) the block between `<!-- key:start -->` and `<!-- key:end -->` of a Markdown file."""
    import re

    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    current = open(path).read() if os.path.exists(path) else preamble
    block = f"{start}\n{text}{end}"
    if start in current:
        current = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, current, flags=re.S)
    else:
        current = current.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    atomic_write_text(path, current)
