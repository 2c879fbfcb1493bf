#!/bin/bash
# First device call of the next session (copy to /work/main, echo <hash> > .commit, run with kind nvidia-h100-x1).
export PYTHONUNBUFFERED=1 SPECTRUM_FAST_COMMIT=$(cat .commit)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
hdr() { echo "# $GPU (device tool), $(date -u +%F), commit $SPECTRUM_FAST_COMMIT: $1"; }
t0=$(date +%s)
python3 -m pip install -q --no-build-isolation --no-deps -e . > $OUT/build.log 2>&1; echo "build rc=$? $(( $(date +%s)-t0 ))s"; grep -iE "error" $OUT/build.log | head
( hdr "python3 -X faulthandler -m pytest -v -m gpu -o faulthandler_timeout=100 tests"; timeout 260 python3 -X faulthandler -m pytest -v -m gpu -o faulthandler_timeout=100 tests ) > $OUT/gpu_tests.log 2>&1
echo "tests rc=$? $(( $(date +%s)-t0 ))s"; grep -E "passed|failed|FAILED|Fatal" $OUT/gpu_tests.log | tail -30
( hdr "compute-sanitizer --tool memcheck python3 -m pytest -q -m gpu tests/test_householder_panels.py tests/test_bulge_chase_cuda.py"; timeout 200 compute-sanitizer --tool memcheck python3 -m pytest -q -m gpu tests/test_householder_panels.py tests/test_bulge_chase_cuda.py ) > $OUT/memcheck.log 2>&1
echo "memcheck rc=$? $(( $(date +%s)-t0 ))s"; tail -3 $OUT/memcheck.log
left=$(( 570 - ($(date +%s)-t0) ))
( hdr "python3 bench/eigen_engine.py --out \$OUT --cases 1024:64 2048:32 4096:8 4096:32 8192:4"; timeout $left python3 bench/eigen_engine.py --out $OUT --cases 1024:64 2048:32 4096:8 4096:32 8192:4 ) > $OUT/eigen_engine.log 2>&1; echo "eigen rc=$?"; tail -8 $OUT/eigen_engine.log
