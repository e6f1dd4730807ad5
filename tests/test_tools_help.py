"""Every command-line tool answers `--help` with its own flags."""

import glob
import os
import re

from conftest import ROOT, run_tool

TOOLS = sorted(p for p in glob.glob(os.path.join(ROOT, "tools", "*.py")) + glob.glob(os.path.join(ROOT, "tools", "diagnostics", "*.py"))
               if not os.path.basename(p).startswith("_"))


def _declared_flags(path):
    with open(path) as f:
        source = f.read()
    names = re.findall(r"flags\.DEFINE_\w+\(\s*\"(\w+)\"", source)
    if "define_config_flags()" in source:
        names += ["config", "set", "run_dir"]
    return names


def test_help_of_every_tool_lists_its_flags():
    assert len(TOOLS) >= 8
    for path in TOOLS:
        name = os.path.basename(path)
        result = run_tool(name[: -len(".py")], "--help", timeout=300)
        assert result.returncode in (0, 1), f"{name}: {result.stderr[-2000:]}"  # absl's --help exits with 1
        assert result.stdout.strip() and "Traceback" not in result.stderr, f"{name}: {result.stderr[-2000:]}"
        for flag in _declared_flags(path):
            assert re.search(rf"--(\[no\])?{flag}\b", result.stdout), f"{name} --help does not list --{flag}"
