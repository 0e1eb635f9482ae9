# shellcheck shell=bash
# Shared environment set-up for the CI scripts. SOURCE it, do not run it:
#
#     source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
#
# On a fresh machine with Python 3.10+ it creates a virtual environment in the
# repository (.venv/, gitignored) and installs the package with its book and test
# extras (`pip install -e ".[book,test,classroom]"`). The install is skipped when the marker
# .venv/.installed-<hash of pyproject.toml> exists, so re-runs cost nothing; editing
# pyproject.toml triggers a re-install. Afterwards the venv's bin/ is first on PATH.
#
# Exports: REPO_ROOT, VENV, PYTHON (the venv's python).
# Knobs:   CD_PYTHON   interpreter used to create the venv (default: python3)
#          CD_VENV     venv location (default: $REPO_ROOT/.venv)
#          CD_FORCE_INSTALL=1  re-install even if the marker exists

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CD_VENV:-$REPO_ROOT/.venv}"
export REPO_ROOT VENV

_cd_log() { printf '[setup_env] %s\n' "$*" >&2; }

_cd_setup_env() {
    local base_python="${CD_PYTHON:-python3}"
    if ! command -v "$base_python" >/dev/null 2>&1; then
        _cd_log "error: '$base_python' not found; install Python 3.10+ or set CD_PYTHON."
        return 1
    fi
    if ! "$base_python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        _cd_log "error: $("$base_python" --version 2>&1) is too old; Python 3.10+ is needed (set CD_PYTHON)."
        return 1
    fi

    # (Re)create the venv if it is missing or broken (e.g. its base Python was removed).
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c '' >/dev/null 2>&1; then
        _cd_log "creating virtual environment $VENV"
        rm -rf "$VENV"
        "$base_python" -m venv "$VENV"
    fi

    local hash marker
    hash="$("$VENV/bin/python" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest()[:16])' "$REPO_ROOT/pyproject.toml")"
    marker="$VENV/.installed-$hash"
    if [[ -f "$marker" && "${CD_FORCE_INSTALL:-0}" != "1" ]]; then
        _cd_log "environment up to date ($VENV)"
    else
        _cd_log "installing channel-distillation[book,test,classroom] into $VENV (first time takes a few minutes)"
        rm -f "$VENV"/.installed-*
        # This machine's pip config names local wheel folders that may be absent; pip then
        # prints one "Location ... is ignored" warning per package. That noise is dropped.
        local log noise="^WARNING: Location '.*' is ignored: it is neither a file nor a directory"
        log="$(mktemp)"
        if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$REPO_ROOT[book,test,classroom]" >"$log" 2>&1; then
            grep -v -e "$noise" "$log" >&2 || true
            rm -f "$log"
            _cd_log "error: pip install failed (see above)"
            return 1
        fi
        grep -v -e "$noise" "$log" >&2 || true
        rm -f "$log"
        touch "$marker"
        _cd_log "installed"
    fi

    export VIRTUAL_ENV="$VENV"
    export PATH="$VENV/bin:$PATH"
    export PYTHON="$VENV/bin/python"
    # Do NOT export MPLBACKEND here: a kernel started with MPLBACKEND=Agg would not
    # use the inline backend, and executed notebooks would lose their figures.
}

_cd_setup_env
