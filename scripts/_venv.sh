# Sourced by demo.sh and test.sh: make .venv once and (re)install fastnn into it, editable, with
# the extras named in $FASTNN_EXTRAS, whenever setup.py is newer than the last install.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "fastnn needs Python >= 3.10, found " + sys.version.split()[0])'
    "$PY" -m venv .venv
fi
stamp=".venv/.fastnn-installed-${FASTNN_EXTRAS:-core}"
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    spec="."
    [ -n "${FASTNN_EXTRAS:-}" ] && spec=".[${FASTNN_EXTRAS}]"
    echo "installing fastnn-engine (editable) with ${FASTNN_EXTRAS:-no extras} into .venv ..."
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
    touch "$stamp"
fi
