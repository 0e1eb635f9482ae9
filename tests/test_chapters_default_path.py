"""Each chapter's default path runs: the recipe a reader gets on Colab, on a CPU, capped.

The book is built with the tiny ``demo`` recipe (ci/notebook_params.json), so the
path a reader takes by opening a chapter on Colab and pressing "Run all" — the
chapter's own defaults, ``RECIPE = "cifar100-colab"`` (real ResNet34 -> ResNet18 on
CIFAR-100) — would otherwise never run in CI. Here papermill executes chapters 01-04
with their defaults and only these overrides:

- ``EPOCHS = 1`` and ``MAX_STEPS_PER_EPOCH = 1``: one training step per run;
- ``DOWNLOAD = False`` and ``DATA_ROOT``: a small CIFAR-100 archive this test writes in
  the real on-disk format (tests/cifar_archive.py: ``cifar-100-python/{train,test,meta}``,
  100 classes x 2 training images, 100 test images);
- ``BATCH_SIZE = 16``: the same code at an eighth of the recipe's 128 images a step (a
  real ResNet34 step at 128 takes about 20 s on these CPUs);
- ``PROGRESS = False`` and one ``RUN_ROOT`` for the four chapters, in the test's
  temporary folder, as a Colab reader's Google Drive folder is: the teacher trains once
  and chapter 04 finds chapter 02's finished runs (resumed at their end, as on Colab);
- chapter 01's ``PROBE_STEPS = 3`` (see EXTRA).

A failing cell fails the test with the chapter, the cell and the error. The
notebooks run in a temporary ``notebooks/`` folder next to a link to the repository's
``results/`` (the committed studies the chapters read as ``../results/...``), so they
see what the book sees and write nothing into the repository.

Wall time per chapter is printed (``-s``) and recorded as the test property
``wall_s`` (``--junitxml``). The kernel runs with ``OMP_NUM_THREADS=1`` unless the
caller sets it (as ci/execute_notebooks.py does).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from cifar_archive import write_cifar100

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
CHAPTERS = [
    "notebooks/01_channel_attention.ipynb",
    "notebooks/02_gkd_vs_kd.ipynb",
    "notebooks/03_edt_schedules.ipynb",
    "notebooks/04_reproduce_cifar100.ipynb",
]
DEFAULT_RECIPE = "cifar100-colab"
# Beyond the step cap and the batch size, only loop counts a chapter offers as parameters are
# lowered, never the data or the models. Chapter 01 fits fresh connectors to three frozen
# students with PROBE_STEPS Adam steps each (300 by default: several CPU minutes on the
# real ResNets' stage outputs); three steps run the same code.
EXTRA = {"notebooks/01_channel_attention.ipynb": {"PROBE_STEPS": 3}}
# Names every chapter's parameters cell must define for this test to run it as a reader would.
NEEDED = ["RECIPE", "DATA_ROOT", "DOWNLOAD", "RUN_ROOT", "EPOCHS", "MAX_STEPS_PER_EPOCH", "BATCH_SIZE", "PROGRESS"]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    return write_cifar100(tmp_path_factory.mktemp("cifar"), train_per_class=2, test_per_class=1)


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory) -> Path:
    """One RUN_ROOT for all four chapters, as a reader's Drive folder on Colab."""
    return tmp_path_factory.mktemp("drive") / "runs"


def _parameters_cell(nb) -> str:
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged 'parameters', found {len(cells)}"
    return cells[0].source


def _defaults(source: str) -> dict:
    """The names a parameters cell assigns, with their literal values (None where not a literal)."""
    import ast

    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        values[target.id] = None
    return values


def _kernel_env(monkeypatch) -> None:
    """As ci/execute_notebooks.py: inline figures, one OpenMP thread, this interpreter's kernel."""
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    own = str(Path(sys.prefix) / "share" / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(p for p in (own, os.environ.get("JUPYTER_PATH")) if p))


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[Path(c).stem for c in CHAPTERS])
def test_chapter_runs_its_default_recipe_on_a_cpu(chapter, cifar_root, shared_runs, tmp_path, monkeypatch,
                                                  record_property):
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    from papermill.exceptions import PapermillExecutionError

    nb = nbformat.read(REPO / chapter, as_version=4)
    defaults = _defaults(_parameters_cell(nb))
    missing = [name for name in NEEDED if name not in defaults]
    assert not missing, f"{chapter}: the parameters cell does not define {missing}; this test needs them"
    assert defaults["RECIPE"] == DEFAULT_RECIPE, (
        f"{chapter}: default RECIPE is {defaults['RECIPE']!r}, expected {DEFAULT_RECIPE!r} (the Colab path)"
    )

    _kernel_env(monkeypatch)
    work = tmp_path / "notebooks"
    work.mkdir()
    (tmp_path / "results").symlink_to(REPO / "results", target_is_directory=True)
    runs = shared_runs
    extra = EXTRA.get(chapter, {})
    assert set(extra) <= set(defaults), f"{chapter}: {sorted(set(extra) - set(defaults))} are not parameters"
    params = {
        **extra,
        "EPOCHS": 1,
        "MAX_STEPS_PER_EPOCH": 1,
        "BATCH_SIZE": 16,
        "DOWNLOAD": False,
        "PROGRESS": False,
        "DATA_ROOT": str(cifar_root),
        "RUN_ROOT": str(runs),
    }
    out = work / Path(chapter).name
    t0 = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(REPO / chapter), str(out), parameters=params, kernel_name="python3", cwd=str(work),
            progress_bar=False, request_save_on_cell_execute=True,  # partial notebook on a failure
        )
    except PapermillExecutionError as exc:
        first = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        pytest.fail(
            f"{chapter} fails on its default path ({DEFAULT_RECIPE}, EPOCHS=1, MAX_STEPS_PER_EPOCH=1, BATCH_SIZE=16): "
            f"executed cell {exc.cell_index} (In [{exc.exec_count}]) `{first}` raised {exc.ename}: {exc.evalue}\n"
            f"(the partly executed notebook: {out})",
            pytrace=False,
        )
    finally:
        wall = time.perf_counter() - t0
        record_property("wall_s", round(wall, 1))
        print(f"\n{chapter}: {wall:.1f} s on the default path", flush=True)

    # It ran the real recipe: the teacher was trained under RUN_ROOT/<recipe>, on CIFAR-100.
    teacher = runs / DEFAULT_RECIPE / "teacher"
    assert teacher.is_dir(), f"{chapter}: no teacher run in {teacher}; did the chapter use RUN_ROOT and RECIPE?"
    executed = nbformat.read(out, as_version=4)
    errors = [
        (i, o.get("ename"), o.get("evalue"))
        for i, c in enumerate(executed.cells) if c.cell_type == "code"
        for o in c.get("outputs", []) if o.get("output_type") == "error"
    ]
    assert not errors, f"{chapter}: cells show errors: {errors}"
    injected = [c.source for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "MAX_STEPS_PER_EPOCH = 1" in injected[0], f"{chapter}: papermill did not inject the step cap"
