"""The reproduction table of tools/reproduce.py: every entry names a config and overrides that load."""

import subprocess
import sys

from conftest import ROOT


def _run(script):
    # In a fresh interpreter: tools define absl flags at import, which other tools imported by tests may share.
    result = subprocess.run([sys.executable, "-c", f"import sys\nsys.path.insert(0, 'tools')\n{script}"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_every_reproduction_loads_its_config_with_its_overrides():
    # A renamed or mistyped key in an entry would only surface when someone re-trains the run.
    output = _run("""
import reproduce
from relation_networks import config
count = 0
for task, (split, runs) in reproduce.REPRODUCTIONS.items():
    for label, config_path, *_ in runs:
        for stage in reproduce._stages(task, label):
            config.load(config_path, stage)
            count += 1
print(count)
""")
    assert int(output) >= 20


def test_replacing_changes_named_values_in_place_and_appends_new_ones():
    output = _run("""
import reproduce
print(reproduce._replacing(["a.x=1", "train.epochs=50", "b=[1,2]"], train__epochs=48, model__extra="y"))
""")
    assert output.strip() == "['a.x=1', 'train.epochs=48', 'b=[1,2]', 'model.extra=y']"


def test_hardware_line_names_each_machine_when_runs_trained_on_several():
    output = _run("""
import reproduce
amd = {"cpu": "AMD EPYC", "cores": 2, "tensorflow": "2.21.0", "keras": "3.15.1"}
intel = dict(amd, cpu="Intel(R) Xeon(R) Processor")
print(reproduce._hardware_line([("a", "", "", {"hardware": amd}), ("b", "", "", {"hardware": amd})]))
print(reproduce._hardware_line([("a", "", "", {"hardware": amd}), ("b", "", "", {"hardware": intel}),
                                ("c", "", "", {"hardware": amd})]))
""")
    same, mixed = output.strip().splitlines()
    assert same == "AMD EPYC, 2 cores, TensorFlow 2.21.0, Keras 3.15.1"
    assert mixed == ("AMD EPYC, 2 cores, TensorFlow 2.21.0, Keras 3.15.1 ('a', 'c'); "
                     "Intel(R) Xeon(R) Processor, 2 cores, TensorFlow 2.21.0, Keras 3.15.1 ('b')")
