#!/usr/bin/env python3
"""The first cell of every notebook: installs cdlib on Colab, a no-op where it is installed.

The install spec is defined here, once: the package name, the repository and the git
ref to install from. The ref must exist in the repository — ``main`` (the branch the
book is built from) unless a release tag for the version exists (see README,
"Releasing"); tests/test_colab_install.py checks every notebook's ref is ``main`` or a
tag of this repository.

    python ci/setup_cell.py            # rewrite the first code cell of every notebook
    python ci/setup_cell.py --check    # exit 1 if a notebook's first cell differs
    python ci/setup_cell.py --ref v0.2.0   # after tagging a release: install that tag

The student notebooks (exercises/student/) are generated from the instructor ones by
ci/make_student_notebooks.py and pick the cell up from there.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "channel-distillation"
REPO_URL = "https://github.com/channel-distillation/channel-distillation"
REF = "main"


def cdlib_version() -> str:
    """cdlib's version, read from its source (this script must run without cdlib installed)."""
    text = (REPO / "cdlib" / "__init__.py").read_text(encoding="utf8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def pip_spec(ref: str = REF) -> str:
    return f"{PACKAGE} @ git+{REPO_URL}@{ref}"


def setup_cell(ref: str = REF, version: str | None = None) -> str:
    version = version or cdlib_version()
    return f'''# Setup: installs cdlib where it is missing (e.g. on Colab);
# a no-op when the right version is present.
import importlib.metadata
import os
import subprocess
import sys

CDLIB_VERSION = "{version}"
CDLIB_REPO = "{REPO_URL}"
CDLIB_SPEC = f"{PACKAGE} @ git+{{CDLIB_REPO}}@{ref}"
try:
    assert importlib.metadata.version("{PACKAGE}") == CDLIB_VERSION
except (importlib.metadata.PackageNotFoundError, AssertionError):
    spec = os.environ.get("CDLIB_PIP_SPEC", CDLIB_SPEC)
    print(f"Installing {{spec}} (a few minutes the first time) ...",
          flush=True)
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", spec],
        capture_output=True, text=True)
    if pip.returncode != 0:
        reason = (pip.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise RuntimeError(
            f"Could not install cdlib ({{reason}}): connect this runtime to "
            "the internet (Colab: Runtime > Reconnect) or install it "
            f"yourself with pip install \\"{{spec}}\\", then re-run this "
            "cell.") from None'''


def ref_of(cell_source: str) -> str | None:
    """The git ref a setup cell installs from (None if it names none)."""
    match = re.search(r'^CDLIB_SPEC = f?".*@([^@"]+)"$', cell_source, re.M)
    return match.group(1) if match else None


def notebooks() -> list[Path]:
    """Every source notebook whose first cell is the setup cell (student copies are generated)."""
    return sorted(p for p in (REPO / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _rewrite(path: Path, cell: str, check: bool) -> bool:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    first = next((c for c in nb.cells if c.cell_type == "code"), None)
    if first is None:
        raise SystemExit(f"{path.relative_to(REPO)} has no code cell: add the setup cell as its first code cell.")
    if first.source == cell:
        return False
    if not check:
        first.source = cell
        nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks whose first cell differs; change nothing")
    parser.add_argument("--ref", default=REF, help=f"git ref to install from (default {REF})")
    args = parser.parse_args(argv)
    cell = setup_cell(args.ref)
    changed = [p for p in notebooks() if _rewrite(p, cell, args.check)]
    for path in changed:
        print(f"{'differs' if args.check else 'rewrote'}: {path.relative_to(REPO)}")
    if args.check and changed:
        print("run `python ci/setup_cell.py` (then ci/make_student_notebooks.py) to update them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
