"""Atomic output: what a killed data generation leaves behind is removed by the next run, and only that."""

import os
import signal
import subprocess
import sys

from relation_networks import io
from relation_networks.data import sort_of_clevr


def test_a_killed_generation_leaves_no_temporary_directory_after_the_next_run(tmp_path):
    root = tmp_path / "data"
    code = ("import sys, time; from relation_networks.io import work_directory; "
            f"print(work_directory({str(root)!r}, 'sort_of_clevr'), flush=True); time.sleep(120)")
    killed = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    stale = killed.stdout.readline().strip()
    alive = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    in_use = alive.stdout.readline().strip()
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert os.path.isdir(stale) and os.path.isdir(in_use)
        target = sort_of_clevr.prepare(str(root), 0, 8, 2, 1, 2, log=lambda *a: None)
        leftovers = sorted(n for n in os.listdir(root) if n.startswith(".tmp-"))
        assert leftovers == [os.path.basename(in_use)]  # the live process keeps its directory
        assert os.path.exists(os.path.join(target, "manifest.json"))
    finally:
        alive.kill()
        alive.wait()


def test_other_labels_and_foreign_names_are_left_alone(tmp_path):
    (tmp_path / ".tmp-physics-otherhost-1-abc").mkdir()
    (tmp_path / ".tmp-sort_of_clevr-x").mkdir()
    made = io.work_directory(str(tmp_path), "sort_of_clevr")
    assert sorted(os.listdir(tmp_path)) == sorted([".tmp-physics-otherhost-1-abc", ".tmp-sort_of_clevr-x",
                                                   os.path.basename(made)])
