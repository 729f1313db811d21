#!/usr/bin/env bash
# Set up the project's Python environments (idempotent; reinstalls when setup.py or a lock changes).
#
#   tools/setup_env.sh [--oracle]   .venv with the exact versions of requirements-lock.txt (the set the
#                                   test suite last passed with) and the project installed editable
#                                   with its test extra; --oracle also makes .mxnet-venv (the real
#                                   MXNet 1.9.1, the oracle of the compatibility tests) from
#                                   requirements-oracle.txt. Both README commands and CI use this.
#   tools/setup_env.sh --latest     .venv-latest with the newest versions setup.py's ranges allow, to
#                                   try what the index serves today:
#                                     bash tools/test.sh --latest
#   tools/setup_env.sh --refresh-lock   once the suite passes on .venv-latest: write its versions
#                                   into requirements-lock.txt (then commit it).
# VENV (default .venv) and PYTHON (default python3.11 where there is one, the lock's Python) choose
# the folder and the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCK=${LOCK_FILE:-requirements-lock.txt}
ORACLE_LOCK=requirements-oracle.txt
MODE=locked ORACLE=0
for arg in "$@"; do
    case "$arg" in
        --oracle) ORACLE=1 ;;
        --latest) MODE=latest ;;
        --refresh-lock) MODE=refresh ;;
        *) echo "Error: tools/setup_env.sh: unknown option $arg (use --oracle, --latest, --refresh-lock)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
# Some machines list a CPU-only torch wheel in PIP_FIND_LINKS that torchvision cannot load with;
# install from the package index only.
export PIP_FIND_LINKS=
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ "$MODE" = refresh ]; then
    VENV=${VENV:-.venv-latest}
    [ -x "$VENV/bin/pip" ] || { echo "Error: no $VENV: run tools/setup_env.sh --latest first" >&2; exit 2; }
    {
        echo "# Exact versions the test suite passed with (Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'), $(uname -m))."
        echo "# Made by tools/setup_env.sh --refresh-lock on $(date -u +%Y-%m-%d); installed by tools/setup_env.sh."
        "$VENV/bin/pip" freeze --all --exclude-editable | grep -v -E '^(-e |#)' | LC_ALL=C sort -f
    } > "$LOCK.tmp"
    mv "$LOCK.tmp" "$LOCK"
    echo "wrote $LOCK from $VENV ($(grep -c '==' "$LOCK") packages)"
    exit 0
fi

if [ "$MODE" = latest ]; then
    VENV=${VENV:-.venv-latest}
    STAMP="latest $(sha1sum setup.py | cut -d' ' -f1)"
else
    VENV=${VENV:-.venv}
    STAMP="locked $(cat setup.py "$LOCK" | sha1sum | cut -d' ' -f1)"
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# installed packages that are not exactly in the lock (a package installed by hand since, another
# version of one): a stamped .venv that drifted is set up again, so "exactly the lock" stays true
drift() {
    [ "$MODE" = locked ] && [ -x "$VENV/bin/pip" ] || return 0
    "$VENV/bin/pip" freeze --exclude-editable 2>/dev/null | grep -v -E '^(-e |#)' \
        | grep -v -i -x -F -f <(grep '==' "$LOCK") || true
}
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$STAMP" ] || ! "$VENV/bin/python" -c "import toolkit" 2>/dev/null \
        || [ -n "$(drift)" ]; then
    start=$SECONDS
    if [ "$MODE" = latest ]; then
        echo "setting up $VENV with the newest versions setup.py allows (a few minutes)"
        "$VENV/bin/pip" install -q --upgrade pip setuptools wheel
        "$VENV/bin/pip" install -q --upgrade --upgrade-strategy eager --no-build-isolation -e ".[test]"
    else
        echo "setting up $VENV from $LOCK (torch, torchvision, DALI, ...; a few minutes the first time)"
        # setup.py is built with the locked setuptools (no isolated build fetching the newest)
        "$VENV/bin/pip" install -q -c "$LOCK" pip setuptools wheel
        "$VENV/bin/pip" install -q -c "$LOCK" --no-build-isolation -e ".[test]"
        # exactly the lock: drop what an earlier set-up left that the lock no longer names
        extra=$("$VENV/bin/pip" freeze --exclude-editable | grep -v -E '^(-e |#)' | cut -d= -f1 \
            | grep -v -i -x -F -f <(grep '==' "$LOCK" | cut -d= -f1) || true)
        [ -z "$extra" ] || "$VENV/bin/pip" uninstall -q -y $extra
    fi
    echo "$STAMP" > "$VENV/.installed"
    echo "$VENV ready in $((SECONDS - start)) s"
fi

# MXNet 1.9.1 needs numpy 1.23, whose last wheels are for Python 3.11
MXPY=${MXNET_PYTHON:-$(command -v python3.11 || echo "$PY")}
OSTAMP=$(sha1sum "$ORACLE_LOCK" | cut -d' ' -f1)
if [ "$ORACLE" = 1 ] && { [ "$(cat .mxnet-venv/.installed 2>/dev/null)" != "$OSTAMP" ] \
        || ! .mxnet-venv/bin/python -c "import mxnet" 2>/dev/null; }; then
    echo "setting up .mxnet-venv from $ORACLE_LOCK (MXNet 1.9.1, the compatibility oracle)"
    [ -x .mxnet-venv/bin/python ] || "$MXPY" -m venv .mxnet-venv
    .mxnet-venv/bin/pip install -q -r "$ORACLE_LOCK"
    echo "$OSTAMP" > .mxnet-venv/.installed
fi
