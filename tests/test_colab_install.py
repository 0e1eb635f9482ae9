"""Colab: every notebook's first cell installs what the notebook needs, from nothing.

Always run (fast):

- the first code cell of every notebook of the book (_toc.yml: chapters and exercises)
  and of every student notebook is EXACTLY the shared setup cell, and its
  CDLIB_VERSION is cdlib's version;
- that cell is a no-op where the right version is installed: in a fresh interpreter it
  takes < 2 s, prints nothing, and never starts a process (pip included).

Marker ``slow`` (a few minutes): one FRESH virtual environment per test session with
only what Colab has preinstalled that matters here — papermill, ipykernel, matplotlib,
seaborn, ipywidgets; no cdlib, no torch — and a Jupyter kernel registered inside it.
Every notebook of _toc.yml runs there with papermill, in TOC order and with its small
CI parameters (ci/notebook_params.json), with ``CDLIB_PIP_SPEC`` pointing at a clean
copy of this repository (the files git tracks or would track). The first notebook's
setup cell therefore pip-installs cdlib, torch and the rest exactly as on Colab, and a
dependency missing from pyproject.toml makes a notebook fail here. Afterwards the
setup cell is a no-op in that environment too. Times go to
_build/colab_install_times.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "ci"))
from execute_notebooks import toc_notebooks  # noqa: E402
from setup_cell import ref_of, setup_cell  # noqa: E402  (the one definition of the setup cell)

SETUP_CELL = setup_cell()

# What Colab preinstalls that matters to these notebooks (and papermill to run them).
COLAB_PREINSTALLED = ["papermill", "ipykernel", "matplotlib", "seaborn", "ipywidgets"]
KERNEL = "cdlib-fresh"
BOOK_NOTEBOOKS = toc_notebooks(REPO)
STUDENT_NOTEBOOKS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "exercises" / "student").glob("*.ipynb"))
PARAMS = json.loads((REPO / "ci" / "notebook_params.json").read_text(encoding="utf8"))
TIMES = REPO / "_build" / "colab_install_times.json"

# Runs SETUP_CELL with every way of starting a process booby-trapped; reports time and output.
NOOP_PROBE = textwrap.dedent(
    """
    import contextlib, io, json, os, subprocess, sys, time
    calls = []
    def trap(*args, **kwargs):
        calls.append(repr(args)[:200])
        raise RuntimeError(f"the setup cell started a process: {args!r}")
    for name in ("run", "Popen", "call", "check_call", "check_output"):
        setattr(subprocess, name, trap)
    os.system = trap
    out, err = io.StringIO(), io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        exec(compile(sys.stdin.read(), "setup-cell", "exec"), {})
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "stdout": out.getvalue(), "stderr": err.getvalue(), "calls": calls}))
    """
)


def _first_code_cell(path: str) -> str:
    nb = nbformat.read(REPO / path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    return code[0].source if code else ""


# ============================================================================ fast


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS + STUDENT_NOTEBOOKS)
def test_first_code_cell_is_the_setup_cell(path):
    cell = _first_code_cell(path)
    assert cell == setup_cell(ref_of(cell) or "main"), (
        f"{path}: the first code cell must be exactly the shared setup cell of ci/setup_cell.py, so that every "
        "notebook installs cdlib the same way on Colab; run `python ci/setup_cell.py` and ci/make_student_notebooks.py"
    )


def _git_tags() -> set:
    proc = subprocess.run(["git", "tag", "--list"], cwd=REPO, capture_output=True, text=True)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


@pytest.mark.parametrize("path", BOOK_NOTEBOOKS + STUDENT_NOTEBOOKS)
def test_setup_cell_installs_from_a_ref_that_exists(path):
    ref = ref_of(_first_code_cell(path))
    assert ref == "main" or ref in _git_tags(), (
        f"{path} installs cdlib from git ref {ref!r}, which is neither main nor a tag of this repository: "
        "on Colab pip would fail; use `python ci/setup_cell.py` (main) or tag the release first (README, Releasing)"
    )


def test_setup_cell_fails_in_one_sentence_without_network(tmp_path):
    """pip cannot install (here: a spec that names no package) -> one RuntimeError line saying what to do."""
    cell = SETUP_CELL.replace('CDLIB_VERSION = "', 'CDLIB_VERSION = "999.')
    env = {**os.environ, "CDLIB_PIP_SPEC": f"channel-distillation @ file://{tmp_path}/nowhere"}
    proc = subprocess.run([sys.executable, "-c", cell], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: Could not install cdlib (") and "then re-run this cell." in last, proc.stderr
    assert "connect this runtime to the internet" in last and "pip install" in last


def test_setup_cell_pins_cdlibs_version():
    import cdlib

    assert f'CDLIB_VERSION = "{cdlib.__version__}"' in SETUP_CELL, (
        f"cdlib is {cdlib.__version__}: update CDLIB_VERSION in SETUP_CELL and in the first cell of every notebook"
    )


def _run_noop_probe(python: str, cwd: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CDLIB_PIP_SPEC"}
    t0 = time.perf_counter()
    proc = subprocess.run([python, "-c", NOOP_PROBE], input=SETUP_CELL, capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, f"the setup cell failed where cdlib is installed:\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


def _assert_noop(result: dict) -> None:
    assert not result["calls"], f"the setup cell called pip (or another process) although cdlib is installed: {result['calls']}"
    assert result["stdout"] == "" and result["stderr"] == "", f"the setup cell printed something: {result}"
    assert result["seconds"] < 2.0, f"the setup cell took {result['seconds']:.2f} s where cdlib is installed"


def test_setup_cell_is_a_quiet_fast_noop_where_cdlib_is_installed(tmp_path):
    _assert_noop(_run_noop_probe(sys.executable, tmp_path))


def test_setup_cell_installs_when_the_version_differs(tmp_path):
    """With another version installed, the cell calls pip with CDLIB_PIP_SPEC (trapped here)."""
    cell = SETUP_CELL.replace('CDLIB_VERSION = "', 'CDLIB_VERSION = "999.')
    env = {**os.environ, "CDLIB_PIP_SPEC": "channel-distillation @ file:///nowhere"}
    proc = subprocess.run([sys.executable, "-c", NOOP_PROBE], input=cell, capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert "the setup cell started a process" in proc.stderr, proc.stderr
    assert "'pip', 'install', '--quiet', 'channel-distillation @ file:///nowhere'" in proc.stderr, proc.stderr


# ============================================================================ slow: a fresh environment


def _clean_copy(dest: Path) -> Path:
    """The repository as a clone would have it (tracked and not-ignored files), without builds or venvs."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def _pip_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "MPLBACKEND")}
    return env


@pytest.fixture(scope="session")
def fresh_env(tmp_path_factory):
    """(python of a fresh venv with a registered kernel, clean repo copy, environment, times dict)."""
    root = tmp_path_factory.mktemp("colab")
    times: dict = {}
    t0 = time.perf_counter()
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = _pip_env()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           *COLAB_PREINSTALLED], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"could not create the Colab-like environment:\n{proc.stderr[-3000:]}"
    for absent in ("cdlib", "torch"):
        probe = subprocess.run([python, "-c", f"import {absent}"], capture_output=True, env=env)
        assert probe.returncode != 0, f"{absent} must not be preinstalled in the fresh environment"
    subprocess.run([python, "-m", "ipykernel", "install", "--prefix", str(venv), "--name", KERNEL,
                    "--display-name", "cdlib fresh venv"], check=True, capture_output=True, env=env)
    times["create venv (papermill, ipykernel, matplotlib, seaborn, ipywidgets)"] = round(time.perf_counter() - t0, 1)
    copy = _clean_copy(root / "repo")
    env["CDLIB_PIP_SPEC"] = f"channel-distillation @ {copy.as_uri()}"
    env["JUPYTER_PATH"] = str(venv / "share" / "jupyter")
    env.setdefault("OMP_NUM_THREADS", "1")  # as ci/execute_notebooks.py: tiny CI models, busy shared CPUs
    yield python, copy, env, times
    TIMES.parent.mkdir(parents=True, exist_ok=True)
    times["total"] = round(sum(v for k, v in times.items() if k != "total"), 1)
    TIMES.write_text(json.dumps(times, indent=2) + "\n", encoding="utf8")


@pytest.mark.slow
@pytest.mark.parametrize("path", BOOK_NOTEBOOKS)
def test_notebook_runs_in_a_fresh_colab_like_environment(fresh_env, path):
    python, copy, env, times = fresh_env
    out = copy.parent / "executed" / path
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [python, "-m", "papermill", str(copy / path), str(out), "-k", KERNEL, "--cwd", str((copy / path).parent),
         "-y", json.dumps(PARAMS.get(path, {})), "--no-progress-bar", "--log-level", "WARNING"],
        capture_output=True, text=True, env=env, timeout=1800,
    )
    times[path] = round(time.perf_counter() - t0, 1)
    assert proc.returncode == 0, f"{path} failed in a fresh environment (missing dependency?):\n{proc.stderr[-4000:]}"
    nb = nbformat.read(out, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source == SETUP_CELL
    noisy = [o for o in first.outputs if o.get("output_type") == "error"]
    assert not noisy, f"{path}: the setup cell failed: {noisy}"


@pytest.mark.slow
def test_after_the_notebooks_cdlib_is_installed_and_the_setup_cell_is_a_noop(fresh_env):
    python, copy, env, times = fresh_env
    # Installs cdlib here if no notebook did (e.g. when this test runs alone). The working
    # directory is neutral: run from the repository, `python -c` would see its cdlib/ and egg-info.
    neutral = copy.parent
    proc = subprocess.run([python, "-c", SETUP_CELL], capture_output=True, text=True, env=env, timeout=1800, cwd=neutral)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([python, "-c", "import importlib.metadata as m, cdlib, torch; "
                           "print(m.version('channel-distillation'), cdlib.__file__, torch.__version__)"],
                          capture_output=True, text=True, env=env, cwd=neutral)
    assert proc.returncode == 0, proc.stderr
    version, location, _ = proc.stdout.split()
    assert version == "0.1.0" and location.startswith(str(Path(python).parent.parent)), (
        f"cdlib should come from the pip install into the fresh environment, not {location}"
    )
    result = _run_noop_probe(python, copy.parent)
    _assert_noop(result)
    times["setup cell once installed (s)"] = round(result["seconds"], 3)
