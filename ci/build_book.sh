#!/usr/bin/env bash
# Build the executable book from scratch:
#   1. set up .venv (ci/setup_env.sh: creates it and installs ".[book,test,classroom]" if needed),
#   2. execute every notebook in _toc.yml with papermill into _build/stage/
#      (ci/execute_notebooks.py, small CI parameters from ci/notebook_params.json),
#   3. jupyter-book build _build/stage with warnings as errors (-W -n --keep-going),
#   4. copy the HTML to _build/html and report its size.
# Extra arguments go to ci/execute_notebooks.py, e.g. `bash ci/build_book.sh --only 02_gkd_vs_kd`
# (re-executes one notebook, keeps the other staged ones, rebuilds the whole book).
set -euo pipefail

# shellcheck source=ci/setup_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"

t_start=$(date +%s)

echo "== executing notebooks (papermill) =="
"$PYTHON" ci/execute_notebooks.py "$@"
t_exec=$(date +%s)

echo "== building the book (jupyter-book, warnings are errors) =="
# --all: rebuild every page so that warnings of unchanged pages are reported too.
jupyter-book build _build/stage --all -W -n --keep-going
t_build=$(date +%s)

rm -rf _build/html
cp -a _build/stage/_build/html _build/html

echo
echo "== done =="
echo "notebooks executed in $((t_exec - t_start)) s, book built in $((t_build - t_exec)) s, total $((t_build - t_start)) s"
echo "HTML size: $(du -sh _build/html | cut -f1)"
# book/_ext/offline_mathjax.py copies MathJax into the book when django-static-mathjax is installed.
if [[ -f _build/html/_static/mathjax/tex-chtml-full.js ]]; then
    echo "formulas: MathJax served from _build/html/_static/mathjax/ (they render offline)"
else
    echo "note: formulas load MathJax from a CDN and need internet (django-static-mathjax is not installed)"
fi
echo "open: $REPO_ROOT/_build/html/index.html"
