#!/usr/bin/env bash
# Build (once) and install the OpenMMLab stack that vssm's mmdet/mmseg adapters need.
#
# mmcv 2.1.0 (the newest release mmdet 3.3.0 / mmsegmentation 1.2.2 accept) has no wheel for current
# Python/torch, only an sdist whose setup.py pins -std=c++14/-std=c++17 (torch >= 2.10 headers need
# C++20) and imports pkg_resources (gone from recent setuptools). This script:
#   1. looks for a cached wheel built for this Python + torch in $VSSM_CACHE/wheels (default
#      ~/.cache/vssm/wheels); if there is none it downloads the sdist, patches the -std flags in a
#      temporary copy, and builds the CPU ops (MMCV_WITH_OPS=1 FORCE_CUDA=0) with setuptools<70 on
#      PYTHONPATH (a throw-away --target dir, the venv's own setuptools is not touched),
#      --no-build-isolation and MAX_JOBS=$(nproc) (~13 min on 2 cores); the wheel lands in the cache;
#   2. installs mmengine, that wheel, mmdet and mmsegmentation (plus ftfy and regex, which mmseg imports
#      but does not declare) into the target interpreter, unless the exact versions are already there
#      (then the whole script takes a few seconds).
#
# Environment: VSSM_PY (python to install into; default .venv/bin/python of the repo, else python3),
#              VSSM_CACHE (cache root), MAX_JOBS (parallel compile jobs; default nproc),
#              VSSM_MMCV_FORCE_BUILD=1 (rebuild even if a cached wheel exists).
set -euo pipefail

MMCV_VERSION=2.1.0
MMENGINE_VERSION=0.10.7
MMDET_VERSION=3.3.0
MMSEG_VERSION=1.2.2
# mmseg 1.2.2 imports ftfy and regex at import time (its CLIP tokenizer) without declaring them
MMSEG_RUNTIME_DEPS=("ftfy==6.3.1" "regex==2026.11.15")

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -n "${VSSM_PY:-}" ]; then
  PY=$VSSM_PY
elif [ -x "$ROOT/.venv/bin/python" ]; then
  PY=$ROOT/.venv/bin/python
else
  PY=$(command -v python3)
fi
CACHE_ROOT=${VSSM_CACHE:-$HOME/.cache/vssm}
log() { echo "[build_mmcv_wheel] $*" >&2; }

# The wheel's compiled extension is tied to the CPython ABI and to the exact torch build.
KEY=$("$PY" - <<'EOF'
import sys, torch
print(f"cp{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}")
EOF
)
WHEEL_DIR="$CACHE_ROOT/wheels/mmcv-$MMCV_VERSION/$KEY"
mkdir -p "$WHEEL_DIR"

find_wheel() { ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true; }

build_wheel() {
  local work jobs t0
  t0=$(date +%s)
  work=$(mktemp -d "${TMPDIR:-/tmp}/vssm-mmcv-build.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN EXIT
  jobs=${MAX_JOBS:-$(nproc)}
  log "building mmcv $MMCV_VERSION for $KEY with MAX_JOBS=$jobs (takes ~13 min on 2 cores)"

  # Build-time tools only, kept out of the venv: setuptools<70 still ships pkg_resources.
  "$PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts \
    --target "$work/buildenv" "setuptools<70" wheel ninja
  local bpath="$work/buildenv"
  local bbin="$work/buildenv/bin"

  PYTHONPATH="$bpath${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pip download -q --disable-pip-version-check \
    --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work/sdist"
  tar -xzf "$work/sdist/mmcv-$MMCV_VERSION.tar.gz" -C "$work"
  local src="$work/mmcv-$MMCV_VERSION"
  sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' \
         -e 's#/std:c++14#/std:c++20#g' -e 's#/std:c++17#/std:c++20#g' "$src/setup.py"
  if grep -q -E '(-std=|/std:)c\+\+1[47]' "$src/setup.py"; then
    log "patching setup.py left a -std=c++14/17 flag behind"; exit 1
  fi

  # CUDA_VISIBLE_DEVICES="" keeps the build CPU-only (mmcv would switch to CUDA ops if it saw a GPU).
  PATH="$bbin:$PATH" PYTHONPATH="$bpath${PYTHONPATH:+:$PYTHONPATH}" \
    MMCV_WITH_OPS=1 FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="" MAX_JOBS="$jobs" \
    "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    "$src" -w "$work/dist"
  local built
  built=$(ls "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl)
  # Atomic publish: another process may be reading the cache.
  cp "$built" "$WHEEL_DIR/.$(basename "$built").tmp"
  mv "$WHEEL_DIR/.$(basename "$built").tmp" "$WHEEL_DIR/$(basename "$built")"
  log "cached $(basename "$built") in $WHEEL_DIR after $(( $(date +%s) - t0 )) s"
}

installed_ok() {
  "$PY" - "$MMENGINE_VERSION" "$MMCV_VERSION" "$MMDET_VERSION" "$MMSEG_VERSION" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
want = dict(zip(["mmengine", "mmcv", "mmdet", "mmsegmentation"], sys.argv[1:]))
for name, v in want.items():
    if version(name) != v:
        sys.exit(1)
import importlib.util
if importlib.util.find_spec("mmcv._ext") is None:  # mmcv-lite or a broken build
    sys.exit(1)
for mod in ("ftfy", "regex"):
    if importlib.util.find_spec(mod) is None:
        sys.exit(1)
EOF
}

(
  # One build at a time per cache (engineers and CI share the home directory).
  flock 9
  wheel=$(find_wheel)
  if [ -n "$wheel" ] && [ "${VSSM_MMCV_FORCE_BUILD:-0}" != 1 ]; then
    log "cached wheel: $wheel"
  else
    build_wheel
    wheel=$(find_wheel)
  fi

  if installed_ok; then
    log "mmengine $MMENGINE_VERSION, mmcv $MMCV_VERSION, mmdet $MMDET_VERSION, mmsegmentation $MMSEG_VERSION already installed"
  else
    log "installing the mm stack into $("$PY" -c 'import sys; print(sys.prefix)')"
    "$PY" -m pip install -q --disable-pip-version-check \
      "mmengine==$MMENGINE_VERSION" "$wheel" "mmdet==$MMDET_VERSION" "mmsegmentation==$MMSEG_VERSION" \
      "${MMSEG_RUNTIME_DEPS[@]}"
    if ! installed_ok; then  # same version already there but without ops: replace it with ours
      "$PY" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
      installed_ok || { log "mm stack still not importable after install"; exit 1; }
    fi
  fi
) 9>"$WHEEL_DIR/.lock"
