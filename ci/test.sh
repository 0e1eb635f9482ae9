#!/usr/bin/env bash
# The full test suite: sets up .venv (ci/setup_env.sh), lints with ruff and runs pytest.
# Tests marked `book` check the rendered HTML and need `bash ci/build_book.sh` first;
# without a build they are skipped with a reason. Extra arguments go to pytest.
set -euo pipefail

# shellcheck source=ci/setup_env.sh
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$REPO_ROOT"

echo "== ruff (lint: configuration in pyproject.toml) =="
"$VENV/bin/ruff" check .

"$PYTHON" -m pytest "$@"
