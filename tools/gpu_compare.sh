#!/usr/bin/env bash
# The side-by-side comparison of issue 22 on a lent GPU (H100 / H200, sm_90), one `device` call per stage.
#
# Here, on the CPU machine, once:        tools/gpu_compare.sh stage
#   copies the official sources from the fetched mirrors (fetch github:MzeroMiko/VMamba, hunto/LocalMamba,
#   TerryPei/EfficientVMamba, Amshaker/GroupMamba first; MIRRORS=/work/.mirror) into .official/, downloads the
#   Python packages the official models import and the GPU image lacks into .whl/ (both in .gitignore).
# On the GPU machine, each stage one call, carry [".official", ".whl"], e.g.
#   run(command="tools/gpu_compare.sh build tests scan", carry=[".official", ".whl"], timeout_s=600)
# Stages: build (official kernels, sm_90 only), tests (GPU tests), scan (scan rows), models (eager side by side),
#   compiled, compiled2 (torch.compile side by side), sweep (224 / 512 / 1024), stability (1000 AMP bf16 steps).
#   The scan stage includes the deterministic scan2d rows (its cost). Output goes to $OUT/<stage>.log. A fresh
#   machine rebuilds the kernels (build is skipped while .official/kernels holds them: the machine stayed warm).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OFF=.official
KERN=$OFF/kernels
OUT=${OUT:-/tmp/vssm-out}
PY=${PY:-python3}
mkdir -p "$OUT"
CHECKOUTS=(--official vmamba=$OFF/VMamba --official localmamba=$OFF/LocalMamba
           --official efficientvmamba=$OFF/EfficientVMamba --official groupmamba=$OFF/GroupMamba)
MODELS=vmamba_tiny,vmamba_small,vmamba_base,local_vmamba_tiny,efficient_vmamba_base,groupmamba_tiny

stage() {  # CPU machine: sources and wheels to carry
  local mirrors=${MIRRORS:-/work/.mirror}
  mkdir -p $OFF .whl
  copy() {  # mirror name, folder, paths in the repository
    local git="$mirrors/$1/repo"; mkdir -p "$OFF/$2"
    [ -d "$git" ] || { echo "missing mirror $git: fetch github:${1/+//} first" >&2; exit 1; }
    git --git-dir="$git" archive HEAD "${@:3}" | tar -x -C "$OFF/$2"
  }
  copy MzeroMiko+VMamba VMamba classification/models kernels/selective_scan/csrc kernels/selective_scan/setup.py
  copy hunto+LocalMamba LocalMamba classification/lib mamba-1p1p1/csrc
  copy TerryPei+EfficientVMamba EfficientVMamba classification/models classification/lib
  copy Amshaker+GroupMamba GroupMamba classification/models kernels/selective_scan/csrc
  python3 -m pip download -q --no-deps -d .whl fvcore==0.1.5.post20221221 iopath==0.1.10 yacs==0.1.8 termcolor==3.3.0
  du -sh $OFF .whl
}

setup() {  # GPU machine (fresh ones start bare): the carried packages into /tmp/site, vssm editable (benchmark.py
  # puts the repository root first on sys.path; only the editable finder then maps vssm.kernels / vssm.scans)
  export PYTHONPATH=/tmp/site
  [ -f /tmp/site/.vssm-done ] && return
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .whl/*
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e .
  touch /tmp/site/.vssm-done
  $PY -c "import torch, triton, timm; print('torch', torch.__version__, 'triton', triton.__version__, 'timm',
timm.__version__, torch.cuda.get_device_name())"
}

compare() { $PY tools/benchmark.py compare "${CHECKOUTS[@]}" --kernel-path $KERN "$@"; }

run_stage() {
  case "$1" in
    build) [ -f $KERN/selective_scan_cuda.so ] && [ -f $KERN/selective_scan_cuda_core.so ] \
             && [ -f $KERN/selective_scan_cuda_oflex.so ] && { echo "kernels already built"; return; }
           $PY tools/build_official_kernels.py --out $KERN "${CHECKOUTS[@]}" --arch 9.0 --jobs 5 ;;
    tests) $PY -m pytest -q -x -p no:cacheprovider tests/test_triton_scan.py tests/test_compare.py \
             tests/test_selective_scan.py tests/test_compile.py ;;
    scan) compare --scan --models $MODELS --states 1,8,16 --batch 128 ;;
    models) compare --models $MODELS --batch 128 --rounds 3 --iters 10 ;;
    compiled) compare --models vmamba_tiny,local_vmamba_tiny,groupmamba_tiny --compile --batch 128 --rounds 3 ;;
    compiled2) compare --models vmamba_small,vmamba_base,efficient_vmamba_base --reference "" --compile \
                 --batch 128 --rounds 3 ;;
    sweep) compare --resolution-sweep --models vmamba_tiny --resolutions 224,512,1024 --batch 256 --compile ;;
    stability) compare --stability 1000 --models vmamba_tiny,local_vmamba_tiny --batch 64 ;;
    *) echo "unknown stage $1 (stage | build tests scan models compiled compiled2 sweep stability)" >&2; exit 2 ;;
  esac
}

if [ "${1:-}" = stage ]; then stage; exit; fi
setup
for s in "$@"; do
  echo "=== $s $(date -u +%H:%M:%S)"
  set -o pipefail
  run_stage "$s" 2>&1 | tee "$OUT/$s.log"
done
