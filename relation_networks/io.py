"""Atomic file output: write to a temporary name in the same directory, then rename over the target."""

import contextlib
import json
import os
import shutil
import tempfile


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_modes(path):
    """Give `path` (a file, or a directory tree) the permissions a plain `open` / `mkdir` would have under the
    process's umask: temporary files (`mkstemp`, 0600) and directories (`mkdtemp`, 0700) are private, so an output
    renamed into place from them would be unreadable to other accounts (a TF Serving server's, say)."""
    mask = _umask()
    if os.path.isdir(path):
        for directory, _, files in os.walk(path):
            os.chmod(directory, 0o777 & ~mask)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o666 & ~mask)
    elif os.path.exists(path):
        os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to `path`; on success it is renamed to `path` (with the permissions a plain
    `open` would give it under the umask), on error removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Keep the extension: some writers (keras.Model.save) insist on it.
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{os.path.basename(path)}", dir=directory)
    os.close(fd)
    try:
        yield tmp
        publish_modes(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def work_directory(parent, label):
    """A new directory `parent/.tmp-<label>-<host>-<pid>-<random>` to build output in before renaming it into place.

    First removes the ones of the same `label` that a killed process (kill -9, a crash) of this host left behind:
    their process id no longer runs. Those of live processes, or of other hosts sharing the filesystem, are kept.
    """
    import re
    import socket

    os.makedirs(parent, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
    prefix = f".tmp-{label}-"
    for name in os.listdir(parent):
        match = re.fullmatch(re.escape(prefix) + re.escape(host) + r"-(\d+)-[^/]+", name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{prefix}{host}-{os.getpid()}-", dir=parent)


@contextlib.contextmanager
def atomic_directory(path):
    """Yield a temporary directory next to `path`; on success it becomes `path` (which must not exist), its files
    and folders with the permissions of the umask (`publish_modes`)."""
    parent = os.path.dirname(os.path.abspath(path))
    tmp = work_directory(parent, os.path.basename(path))
    try:
        yield tmp
        publish_modes(tmp)
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
