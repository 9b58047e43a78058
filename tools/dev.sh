#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv (Python 3.11), installs torch and vssm with its
# test and OpenMMLab extras, then runs a command in it. Idempotent: set-up is skipped while the stamp
# in .venv matches the current set-up inputs.
#
#   tools/dev.sh test [pytest args]   run the whole test suite
#   tools/dev.sh train [args]         run the main job (classification training; embedded default data)
#   tools/dev.sh setup                set-up only
#   tools/dev.sh run CMD [args]       any command inside the venv
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PYTHON=${VSSM_PYTHON:-python3.11}

stamp_inputs() {
  cat "$ROOT/setup.cfg" "$ROOT/pyproject.toml" "$ROOT/tools/dev.sh"
  [ -f "$ROOT/tools/build_mmcv_wheel.sh" ] && cat "$ROOT/tools/build_mmcv_wheel.sh"
  "$PYTHON" --version 2>&1
}

setup() {
  local stamp want
  want=$(stamp_inputs | sha256sum | cut -c1-16)
  stamp="$VENV/.vssm-setup-$want"
  if [ -x "$PY" ] && [ -f "$stamp" ]; then
    return 0
  fi
  echo "[vssm] setting up $VENV" >&2
  [ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip wheel setuptools
  "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  "$PY" -m pip install -q -e "$ROOT[test,train]"
  if [ -f "$ROOT/tools/build_mmcv_wheel.sh" ] && [ "${VSSM_SKIP_MM:-0}" != 1 ]; then
    VSSM_PY="$PY" bash "$ROOT/tools/build_mmcv_wheel.sh"
    "$PY" -m pip install -q -e "$ROOT[test,train,mm]"
  fi
  rm -f "$VENV"/.vssm-setup-*
  touch "$stamp"
}

cmd=${1:-test}
shift || true
setup
cd "$ROOT"
case "$cmd" in
  setup) ;;
  test) exec "$PY" -m pytest "$@" ;;
  train) exec "$VENV/bin/vssm-train" "$@" ;;
  run) exec "$VENV/bin/$1" "${@:2}" ;;
  *) echo "usage: tools/dev.sh {test|train|setup|run CMD} [args]" >&2; exit 2 ;;
esac
