#!/usr/bin/env python3
"""Execute the book's notebooks with papermill into the staging folder.

The book is built from ``_build/stage/``, a folder that mirrors the repository:

    _build/stage/_config.yml, _toc.yml      copied
    _build/stage/book/                      copied (prose chapters, references.bib, images)
    _build/stage/results/                   copied (committed studies the chapters read, e.g.
                                            ../results/cpu-study; small: tables and logs, no models)
    _build/stage/notebooks/*.ipynb          executed copies of notebooks/*.ipynb

Notebooks keep their repository paths, so the book's Colab / download buttons point
at ``notebooks/<name>.ipynb`` in the repository.

Every notebook listed in ``_toc.yml`` is executed, in TOC order, with kernel
``python3`` and the papermill parameters from ``ci/notebook_params.json``
(``{"notebooks/x.ipynb": {"name": value, ...}}``), injected after the cell tagged
``parameters``.

Working directory: each notebook runs with cwd = the folder of its *staged* copy
(``_build/stage/notebooks/``), never the source tree, so run folders, checkpoints and
downloads a notebook writes with relative paths (``runs/...``) land under
``_build/stage/notebooks/`` and never dirty the repository. Non-notebook files that sit
next to the notebooks in the repository (images, small inputs) are copied there too,
so relative paths inside ``notebooks/`` work as they do in the repository; ``../book/``
resolves to the staged copy of ``book/``. Do not reach for ``../data``: use cdlib's
data loaders and their default locations instead.

A full run starts from an empty ``_build/stage`` (no leftovers from earlier builds, so
a notebook cannot silently resume from a stale checkpoint); ``--only`` keeps the
other staged notebooks and refreshes just the one named.

Plumbing is folded in the book but left alone in the repository (which is what Colab
opens): in each executed copy the setup cell (the first code cell, ``# Setup: installs
cdlib ...``, see ci/setup_cell.py) and papermill's ``injected-parameters`` cell get the
myst-nb tag ``hide-cell``, so the page shows a one-line toggle instead of their code
(see ``fold_plumbing``). The ``parameters`` cell stays visible: it is what a reader
may change. A markdown title that sits below the setup cell is moved above it, so every
page opens with its title and prose, not with a toggle.

Wall times go to ``_build/stage/notebook_times.json`` and are printed as a table. On a
failure the notebook, the failing cell and the exception are printed on one line
(``FAILED ...``) and the script exits with status 1; by default it stops at the first
failure (``--keep-going`` runs the rest too). Times are written either way.

Usage:
    python ci/execute_notebooks.py                     # all notebooks in the TOC
    python ci/execute_notebooks.py --only 02_gkd_vs_kd # one notebook (stem or path)
    python ci/execute_notebooks.py --params-file my_params.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
STAGE = REPO / "_build" / "stage"
DEFAULT_PARAMS = REPO / "ci" / "notebook_params.json"
TIMES_FILE = STAGE / "notebook_times.json"
# Files and folders copied verbatim into the stage (relative to the repository root).
STAGE_COPY = ["_config.yml", "_toc.yml", "book", "results"]
# Never copied next to staged notebooks.
IGNORE = shutil.ignore_patterns(
    "*.ipynb", ".ipynb_checkpoints", "__pycache__", "runs", "data", "_build", ".venv", "venv"
)
KERNEL = "python3"
SUFFIXES = (".ipynb", ".md", ".rst")


# ----------------------------------------------------------------------------- TOC
def toc_entries(toc_path: Path = REPO / "_toc.yml") -> list[str]:
    """Every ``file:``/``root`` entry of a Jupyter Book TOC, in order (no suffix)."""
    toc = yaml.safe_load(toc_path.read_text(encoding="utf8"))
    out: list[str] = [toc["root"]] if toc.get("root") else []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                out.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(toc)
    return out


def resolve(entry: str, root: Path = REPO) -> Path | None:
    """The file a TOC entry names (entries may omit the suffix)."""
    p = root / entry
    if p.suffix in SUFFIXES and p.is_file():
        return p
    for suffix in SUFFIXES:
        cand = p.with_name(p.name + suffix)
        if cand.is_file():
            return cand
    return None


def toc_notebooks(root: Path = REPO) -> list[str]:
    """Repository-relative paths of the TOC's notebooks, in TOC order."""
    nbs = []
    for entry in toc_entries(root / "_toc.yml"):
        path = resolve(entry, root)
        if path is None:
            raise SystemExit(f"_toc.yml names '{entry}', but no {entry}{{{','.join(SUFFIXES)}}} exists.")
        if path.suffix == ".ipynb":
            nbs.append(path.relative_to(root).as_posix())
    return nbs


# ----------------------------------------------------------------------------- staging
def stage_static(notebooks: list[str]) -> None:
    """Copy config, TOC, book/ and non-notebook files next to the notebooks."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for name in STAGE_COPY:
        src, dst = REPO / name, STAGE / name
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        elif src.is_file():
            shutil.copy2(src, dst)
        else:
            raise SystemExit(f"{name} is missing from the repository root.")
    for folder in sorted({Path(nb).parent for nb in notebooks}):
        shutil.copytree(REPO / folder, STAGE / folder, ignore=IGNORE, dirs_exist_ok=True)


def load_params(path: Path, notebooks: list[str]) -> dict:
    params = json.loads(path.read_text(encoding="utf8"))
    if not isinstance(params, dict):
        raise SystemExit(f"{path}: expected a JSON object notebook-path -> parameters.")
    unknown = sorted(set(params) - set(notebooks))
    if unknown:
        raise SystemExit(f"{path} names notebooks that are not in _toc.yml: {', '.join(unknown)}")
    for nb, p in params.items():
        if not isinstance(p, dict):
            raise SystemExit(f"{path}: parameters of {nb} must be a JSON object, got {type(p).__name__}.")
    return params


def select(notebooks: list[str], only: str | None) -> list[str]:
    if not only:
        return notebooks
    hits = [nb for nb in notebooks if only in (nb, Path(nb).stem, Path(nb).name, nb.removesuffix(".ipynb"))]
    if not hits:
        raise SystemExit(f"--only {only!r} matches no notebook in _toc.yml; choose from: {', '.join(notebooks)}")
    return hits


# ----------------------------------------------------------------------------- folding
SETUP_MARKER = "# Setup: installs cdlib"  # how ci/setup_cell.py's cell starts
FOLD_TAG = "hide-cell"  # myst-nb: input and output behind one closed toggle
FOLD_PROMPTS = {  # the toggle's text (myst-nb's cell-level code_prompt_show/-hide)
    "setup": ("Show the setup cell (installs cdlib on Colab)", "Hide the setup cell"),
    "injected": (
        "Show the values this page was built with (they override the parameters above)",
        "Hide the values this page was built with",
    ),
}


def _is_setup_cell(cell) -> bool:
    return cell.get("cell_type") == "code" and "".join(cell.get("source", "")).startswith(SETUP_MARKER)


def _fold(cell, kind: str) -> None:
    tags = cell.setdefault("metadata", {}).setdefault("tags", [])
    if FOLD_TAG not in tags:
        tags.append(FOLD_TAG)
    show, hide = FOLD_PROMPTS[kind]
    cell["metadata"].setdefault("mystnb", {}).update(code_prompt_show=show, code_prompt_hide=hide)


def fold_plumbing(nb: dict) -> dict:
    """Fold the setup cell and papermill's injected-parameters cell of an executed notebook.

    ``nb`` is the notebook's JSON (a dict, changed in place and returned). The first
    code cell is folded only if it is the setup cell; the ``parameters`` cell is left
    visible. If the setup cell comes before the notebook's first markdown cell and that
    cell opens with a level-1 heading (the page title), the title cell is moved above the
    setup cell, which changes nothing that runs.
    """
    cells = nb.get("cells", [])
    first_code = next((i for i, c in enumerate(cells) if c.get("cell_type") == "code"), None)
    if first_code is not None and _is_setup_cell(cells[first_code]):
        _fold(cells[first_code], "setup")
        title = next((i for i, c in enumerate(cells) if c.get("cell_type") == "markdown"), None)
        heading = title is not None and "".join(cells[title].get("source", "")).lstrip().startswith("# ")
        if heading and title > first_code and all(
            _is_setup_cell(c) or c.get("cell_type") != "code" for c in cells[first_code:title]
        ):
            cells.insert(first_code, cells.pop(title))
    for cell in cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            _fold(cell, "injected")
    return nb


def fold_plumbing_file(path: Path) -> None:
    """fold_plumbing on an .ipynb file, rewritten in place (nbformat's JSON layout)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    fold_plumbing(nb)
    nbformat.write(nb, path)


# ----------------------------------------------------------------------------- failures
def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_failure(nb: str, exc: BaseException) -> str:
    """One line: notebook, failing cell (index in the source notebook) and the error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        where = f"executed cell {exc.cell_index}"
        try:  # map back to the index in the repository's notebook via the cell's source
            import nbformat

            cells = nbformat.read(REPO / nb, as_version=4).cells
            idx = next(i for i, c in enumerate(cells) if c.source == exc.source)
            where = f"cell {idx} (0-based, In [{exc.exec_count}])"
        except Exception:  # noqa: BLE001 - best effort only
            pass
        first = next((ln for ln in (exc.source or "").splitlines() if ln.strip()), "")
        return (
            f"FAILED {nb}: {where} `{_one_line(first, 60)}` raised {exc.ename}: {_one_line(exc.evalue)}"
        )
    return f"FAILED {nb}: {type(exc).__name__}: {_one_line(exc)}"


# ----------------------------------------------------------------------------- kernel noise
# Lines every kernel prints on its (inherited) stderr that mean nothing here: recent
# ipykernels warn that the localhost TCP transport is unencrypted, and log the SIGINT
# jupyter_client sends at shutdown as "ERROR | KeyboardInterrupt caught in kernel".
KERNEL_NOISE = re.compile(
    r"Kernel is running over TCP without encryption|KeyboardInterrupt caught in kernel"
)


@contextlib.contextmanager
def quiet_kernel_noise():
    """Drop KERNEL_NOISE lines from fd 2 (kernels inherit it); pass everything else."""
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    saved = os.dup(2)
    os.dup2(write_fd, 2)
    os.close(write_fd)

    def pump():
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if not KERNEL_NOISE.search(line.decode("utf8", "replace")):
                    os.write(saved, line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end held by this process
        thread.join(timeout=5)
        os.close(saved)


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", metavar="NAME", help="run one notebook (stem, file name or path)")
    ap.add_argument("--params-file", type=Path, default=DEFAULT_PARAMS, help="JSON: notebook path -> parameters")
    ap.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    ap.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds (default: none)")
    args = ap.parse_args(argv)

    import papermill as pm

    # Kernels inherit this environment; with MPLBACKEND set (CI often sets Agg) ipykernel
    # would not switch to the inline backend and the notebooks would lose their figures.
    os.environ.pop("MPLBACKEND", None)
    # The CI configuration's models are tiny and gain nothing from a second thread, while
    # OpenMP threads that wait for a busy core made training 10-30x slower on a shared
    # 2-core machine (measured here). A caller's own setting wins.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Kernel "python3" must be THIS interpreter (the one with cdlib installed), not a
    # python3 kernelspec some other install left in ~/.local/share/jupyter: JUPYTER_PATH
    # is searched before the user's and the system's folders.
    own = str(Path(sys.prefix) / "share" / "jupyter")
    os.environ["JUPYTER_PATH"] = os.pathsep.join(p for p in (own, os.environ.get("JUPYTER_PATH")) if p)

    notebooks = toc_notebooks()
    params = load_params(args.params_file, notebooks)
    chosen = select(notebooks, args.only)

    if not args.only and STAGE.exists():
        shutil.rmtree(STAGE)  # a full run starts clean
    stage_static(notebooks)

    times: dict = {}
    if args.only and TIMES_FILE.exists():
        times = json.loads(TIMES_FILE.read_text(encoding="utf8"))

    failures: list[str] = []
    for i, nb in enumerate(chosen, 1):
        src, dst = REPO / nb, STAGE / nb
        dst.parent.mkdir(parents=True, exist_ok=True)
        nb_params = params.get(nb, {})
        shown = ", ".join(f"{k}={v!r}" for k, v in nb_params.items()) or "defaults"
        print(f"[{i}/{len(chosen)}] {nb} ({shown}) ...", flush=True)
        t0 = time.perf_counter()
        status = "ok"
        try:
            with quiet_kernel_noise():
                pm.execute_notebook(
                    str(src),
                    str(dst),
                    parameters=nb_params,
                    kernel_name=KERNEL,
                    cwd=str(dst.parent),
                    progress_bar=False,
                    request_save_on_cell_execute=False,
                    execution_timeout=args.timeout,
                )
        except Exception as exc:  # noqa: BLE001 - report every kind of failure the same way
            status = "failed"
            failures.append(describe_failure(nb, exc))
            print(failures[-1], flush=True)
        if dst.is_file():
            fold_plumbing_file(dst)
        seconds = round(time.perf_counter() - t0, 2)
        times[nb] = {"seconds": seconds, "status": status, "parameters": nb_params}
        TIMES_FILE.write_text(json.dumps(times, indent=2) + "\n", encoding="utf8")
        print(f"    {status} in {seconds:.1f} s", flush=True)
        if failures and not args.keep_going:
            break

    width = max(len(nb) for nb in times) if times else 10
    print(f"\n{'notebook':<{width}}  {'seconds':>8}  status")
    for nb, t in times.items():
        print(f"{nb:<{width}}  {t['seconds']:>8.1f}  {t['status']}")
    print(f"{'total':<{width}}  {sum(t['seconds'] for t in times.values()):>8.1f}")
    print(f"times written to {TIMES_FILE.relative_to(REPO)}")

    if failures:
        print("\n" + "\n".join(failures), file=sys.stderr)
        print(f"(the partly executed copies are in {STAGE.relative_to(REPO)}/)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
