"""What a wheel or `pip install .` ships: every directory of Python modules in the package is a package that
setuptools finds (a folder without `__init__.py` was once left out of the wheel), and the metadata names the
`tensorflow` distribution rather than `tensorflow-cpu` (a GPU user adds `tensorflow[and-cuda]`)."""

import configparser
import os

import setuptools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_module_folder_is_a_package_setuptools_finds():
    found = set(setuptools.find_packages(ROOT, include=["relation_networks*"]))
    folders = {
        os.path.relpath(d, ROOT).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(ROOT, "relation_networks"))
        if "__pycache__" not in d and any(f.endswith(".py") for f in files)
    }
    assert folders == found, f"not packages (add an __init__.py): {sorted(folders - found)}"


def test_dependencies_name_tensorflow_itself_and_python_up_to_3_13():
    setup = configparser.ConfigParser()
    setup.read(os.path.join(ROOT, "setup.cfg"))
    requires = [r.strip() for r in setup["options"]["install_requires"].splitlines() if r.strip()]
    names = [r.split(">")[0].split("<")[0].split("=")[0].split("[")[0] for r in requires]
    assert "tensorflow" in names and "tensorflow-cpu" not in names
    assert setup["options"]["python_requires"] == ">=3.10,<3.14"
