"""Every command-line tool answers `--help` with its own flags."""

import glob
import os
import re
import subprocess
import sys

from conftest import ROOT

TOOLS = sorted(p for p in glob.glob(os.path.join(ROOT, "tools", "*.py")) if not os.path.basename(p).startswith("_"))


def _declared_flags(path):
    with open(path) as f:
        source = f.read()
    names = re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", source)
    if "define_config_flags()" in source:
        names += ["config", "set", "run_dir"]
    return names


def test_help_of_every_tool_lists_its_flags():
    assert len(TOOLS) >= 8
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    processes = {path: subprocess.Popen([sys.executable, path, "--help"], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE) for path in TOOLS}
    for path, process in processes.items():
        out, err = process.communicate(timeout=300)
        name = os.path.basename(path)
        assert process.returncode in (0, 1), f"{name}: {err[-2000:]}"  # absl's --help exits with 1
        assert out.strip() and "Traceback" not in err, f"{name}: {err[-2000:]}"
        for flag in _declared_flags(path):
            assert re.search(rf"--(\[no\])?{flag}\b", out), f"{name} --help does not list --{flag}"
