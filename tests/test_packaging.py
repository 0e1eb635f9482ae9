"""Packaging facts: environment.yml mirrors pyproject.toml; distribution vs import name."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

try:
    import tomllib  # Python >= 3.11
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _environment_lines(text: str) -> tuple[list, list]:
    """(conda dependencies, pip dependencies) of environment.yml, by a plain line parser."""
    conda, pip = [], []
    in_deps = False
    pip_indent = None  # indentation of the "- pip:" item while inside its list
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        item = line.strip()
        if indent == 0:
            in_deps = item == "dependencies:"
            pip_indent = None
            continue
        if not in_deps or not item.startswith("- "):
            continue
        if pip_indent is not None and indent > pip_indent:
            pip.append(item[2:].strip())
        elif item == "- pip:":
            pip_indent = indent
        else:
            pip_indent = None
            conda.append(item[2:].strip())
    return conda, pip


def _environment() -> tuple[list, list]:
    text = (ROOT / "environment.yml").read_text()
    try:
        import yaml
    except ModuleNotFoundError:  # pragma: no cover
        return _environment_lines(text)
    env = yaml.safe_load(text)
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip.extend(dep["pip"])
        else:
            conda.append(dep)
    # The two parsers must agree on this file.
    assert (conda, pip) == _environment_lines(text)
    return conda, pip


def _norm(requirement: str) -> str:
    return re.sub(r"\s+", "", requirement).lower()


def test_environment_pip_list_equals_pyproject_dependencies():
    project = _pyproject()["project"]
    wanted = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        wanted.extend(extra)
    _, pip = _environment()
    assert len(pip) == len(set(map(_norm, pip))), "environment.yml lists a pip package twice"
    assert sorted(set(map(_norm, pip))) == sorted(set(map(_norm, wanted)))


def test_environment_python_matches_requires_python():
    conda, _ = _environment()
    pythons = [d for d in conda if _norm(d).startswith("python")]
    assert pythons == ["python" + _pyproject()["project"]["requires-python"]]


def test_line_parser_on_a_known_file():
    text = "name: x\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.10\n  - pip\n  - pip:\n      - a>=1  # c\n      - b\n"
    assert _environment_lines(text) == (["python>=3.10", "pip"], ["a>=1", "b"])


def test_distribution_name_differs_from_import_name():
    project = _pyproject()
    assert project["project"]["name"] == "channel-distillation"
    assert project["project"]["name"] != "cdlib"
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["cdlib*"]
    module = importlib.import_module("cdlib")
    assert Path(module.__file__).resolve().parent == ROOT / "cdlib"
    assert isinstance(module.__version__, str) and re.fullmatch(r"\d+\.\d+\.\d+.*", module.__version__)
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cdlib.__version__"}


def test_installed_distribution_provides_cdlib():
    metadata = importlib.import_module("importlib.metadata")
    try:
        dist = metadata.distribution("channel-distillation")
    except metadata.PackageNotFoundError:
        pytest.skip("channel-distillation is not pip-installed in this environment")
    assert dist.metadata["Name"] == "channel-distillation"
    assert "channel-distillation" in metadata.packages_distributions().get("cdlib", [])
