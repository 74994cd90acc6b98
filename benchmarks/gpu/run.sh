#!/usr/bin/env bash
# The prepared GPU run of fpt-ref (benchmarks/gpu/README.md). From the repository root:
#
#     bash benchmarks/gpu/run.sh            # on a GPU machine: results in $OUT (default ./gpu-out)
#     bash benchmarks/gpu/run.sh --smoke    # anywhere, CPU stand-in: tiny sizes, about a minute
#
# Runs from the working tree (PYTHONPATH=.), installs nothing, needs no network. The whole run
# keeps to a deadline of $FPT_GPU_BUDGET seconds (default 420, smoke 240): every step has its
# own time limit, cut to what is left before the deadline, so a slow step cannot take the
# next one's results, and a step with too little time left is skipped with a note in the log.
# At most 7 files land in $OUT: log.txt, gpu_checks.json, summary.md, fwd_results.json,
# exp_results.json, backends.png, roofline.png.
set -u
SMOKE=0
if [ "${1:-}" = "--smoke" ]; then SMOKE=1; elif [ $# -gt 0 ]; then echo "usage: $0 [--smoke]" >&2; exit 2; fi
cd "$(dirname "$0")/../.." || exit 2
OUT=${OUT:-gpu-out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# float32 with TF32 off: CuPy uses TF32 only with CUPY_TF32=1; NVIDIA_TF32_OVERRIDE=0 forbids it
# in cuBLAS whatever a library asks; PyTorch's matmul default (allow_tf32 False) is checked below
export CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0
PY=${PY:-python3}
if [ $SMOKE = 1 ]; then TOTAL=${FPT_GPU_BUDGET:-240}; else TOTAL=${FPT_GPU_BUDGET:-420}; fi
T0=$(date +%s)
DEADLINE=$((T0 + TOTAL))
LOG=$OUT/log.txt
: >"$LOG"
say() { echo "=== $(($(date +%s) - T0)) s: $*" | tee -a "$LOG"; }
# limit CAP: the seconds the next step may take: CAP, or what is left before the deadline
# after 20 s kept for the summary
limit() {
	local left=$((DEADLINE - $(date +%s) - 20))
	if [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
# step NAME CAP MIN COMMAND...: run COMMAND under a time limit, or skip it when under MIN s are left
step() {
	local name=$1 cap=$2 min=$3 lim
	shift 3
	lim=$(limit "$cap")
	if [ "$lim" -lt "$min" ]; then
		say "$name: SKIPPED, ${lim} s left before the deadline (needs ${min} s)"
		return 0
	fi
	say "$name (limit ${lim} s)"
	STEP_LIMIT=$lim timeout --signal=INT --kill-after=10 "$lim" "$@" >>"$LOG" 2>&1
	local rc=$?
	say "$name: exit $rc$([ $rc = 124 ] && echo ' (time limit reached)')"
}

if [ $SMOKE = 1 ]; then
	CHECKS=(--smoke)
	LADDER=(--ladder quick --sizes xxs,xs --repeats 1)
	EXP_LADDER=(--ladder quick --sizes xxs,xs --repeats 1)
	CAP_CHECKS=60 CAP_TESTS=90 CAP_EXP=40 CAP_FWD=50
else
	CHECKS=()
	LADDER=(--ladder gpu --sizes l,xl,xxl --repeats 3 --max-params-cpu 60000000)
	EXP_LADDER=(--ladder gpu --sizes l,xl --repeats 3 --max-params-cpu 60000000)
	CAP_CHECKS=170 CAP_TESTS=90 CAP_EXP=90 CAP_FWD=120
fi

say "0. environment ($([ $SMOKE = 1 ] && echo 'smoke: CPU stand-in' || echo 'GPU run'), deadline ${TOTAL} s)"
{
	command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv ||
		echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
	echo "cpus: $(nproc); $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null)"
	$PY - <<'EOF'
import numpy
print("numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as exc:
    print("cupy: unusable:", type(exc).__name__, exc)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(),
          "tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
except Exception as exc:
    print("torch: unusable:", type(exc).__name__, exc)
EOF
	env | grep -E "^(CUPY_TF32|NVIDIA_TF32_OVERRIDE|OMP_NUM_THREADS|OPENBLAS_NUM_THREADS|MKL_NUM_THREADS)=" || true
} >>"$LOG" 2>&1

# 1. the targets first: they matter most (budget: the step's limit less a margin)
step "1. targets and GPU checks (benchmarks.gpu.checks)" "$CAP_CHECKS" 30 \
	bash -c "$PY -m benchmarks.gpu.checks '$OUT' ${CHECKS[*]} --budget \$((STEP_LIMIT * 4 / 5))"

# 2. the CuPy path's tests (skipped, and said so, without a GPU)
step "2. CuPy-path tests: pytest -m gpu" "$CAP_TESTS" 30 \
	$PY -m pytest -q -p no:cacheprovider -p benchmarks.gpu.inplace -m gpu -rs tests/test_gpu.py tests/test_benchmarks.py

# 3. expansions and verify on the GPU (NumPy beside it at l): float32
step "3. expansions + verify (fpt-ref bench)" "$CAP_EXP" 25 \
	bash -c "$PY -m benchmarks --backends numpy,cupy ${EXP_LADDER[*]} --dtypes float32 \
		--ops mlp,add_heads,heads,attention,hidden,add_layer,plan,verify --no-one-thread \
		--time-budget \$((STEP_LIMIT / 2)) --out '$WORK/exp'"
cp "$WORK/exp/results.json" "$OUT/exp_results.json" 2>/dev/null

# 4. the forward ladder: NumPy and PyTorch CPU at l, CuPy and PyTorch CUDA at every size
step "4. forward ladder (fpt-ref bench)" "$CAP_FWD" 25 \
	bash -c "$PY -m benchmarks --backends numpy,cupy,torch ${LADDER[*]} --ops forward --no-one-thread \
		--time-budget \$((STEP_LIMIT / 2)) --out '$WORK/fwd'"
cp "$WORK/fwd/results.json" "$OUT/fwd_results.json" 2>/dev/null
cp "$WORK/fwd/backends.png" "$WORK/fwd/roofline.png" "$OUT/" 2>/dev/null

say "5. summary"
$PY -m benchmarks.gpu.checks --summarize "$OUT" >>"$LOG" 2>&1
grep -E "^(targets|agreement|free_blocks|timer|host_input)|passed|failed|skipped" "$LOG" | tail -40
say "done"
ls -la "$OUT" | tee -a "$LOG"
