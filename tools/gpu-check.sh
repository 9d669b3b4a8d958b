#!/usr/bin/env bash
# The one-command GPU check: everything a first session on a lent GPU needs, in one run that
# fits its minutes and leaves a report whatever breaks.
#
#   tools/gpu-wheels.sh                  # here, with network: fill wheels/ (ignored by git)
#   OUT=/some/dir tools/gpu-check.sh     # there, from the repository root (no network needed)
#   tools/gpu-check.sh --dry-run         # anywhere, no GPU: every step on its CPU stand-in (CI runs this)
#
# Steps, in order, each under its own `timeout` (the smaller of its cap and the time left of
# GPU_CHECK_BUDGET_S, default 450 s; GPU_CHECK_TIMEOUT_<STEP>=seconds overrides a cap; a step
# with under 5 s left is skipped, and says so):
#   machine    GPU, driver, clocks (nvidia-smi), versions                      -> machine.json
#   install    wheels/*.whl not already installed, then the project
#              (pip --no-index --no-deps --no-build-isolation -e .)
#   precompile every kept autotune config of the Linear+LeakyReLU kernels at the specs' and the
#              bench's shapes, launched once each in parallel processes sharing TRITON_CACHE_DIR,
#              so that autotuning later finds them compiled     (dry run: --list)
#   tests      pytest -m cuda, per-test timeout when pytest-timeout is there  (dry run: --collect-only)
#   bench-ce / bench-linear / bench-bn
#              nnspec bench kernels --suite gpu-check, one process per kernel (a timeout loses one
#              kernel), against eager and torch.compile, float32 and bfloat16   (dry run: tiny, CPU)
#   models     nnspec bench models specs/mlp.yaml specs/mnist_cnn.yaml        (dry run: CPU, torch)
# Then, always: artifacts.tar.gz (logs, junit XML, bench folders) and report.md / report.json,
# which say which steps ran.  $OUT receives at most 6 files, all at its top level:
# gpu-check.log (live), steps.tsv (live), machine.json, report.md, report.json, artifacts.tar.gz.
# The script exits 0 when it wrote its report; the steps' outcomes are in it.
set -uo pipefail

DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        *) echo "gpu-check.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done
[ "${GPU_CHECK_DRY_RUN:-0}" = "1" ] && DRY=1

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
OUT=${OUT:-$REPO/gpu-check-out}
mkdir -p "$OUT" || exit 1
WORK=$(mktemp -d -t nnspec-gpu-check.XXXXXX) || exit 1
mkdir -p "$WORK/logs"
PY=${PYTHON:-$(command -v python3 || command -v python)}
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-450}
DEADLINE=$((START + BUDGET))
LOG="$OUT/gpu-check.log"
: > "$LOG"
printf 'step\tstatus\trc\tseconds\ttimeout\n' > "$OUT/steps.tsv"

unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export TRITON_CACHE_DIR="$WORK/triton-cache" HYPOTHESIS_STORAGE_DIRECTORY="$WORK/hypothesis"
export NNSPEC_DATA="${NNSPEC_DATA:-$REPO/../shared/data}"
if [ "$DRY" = 1 ]; then
    export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1  # the CPU stand-ins, even on a GPU machine
fi
echo "gpu-check: $([ "$DRY" = 1 ] && echo dry run || echo GPU run) of $REPO, budget ${BUDGET}s, python $PY" | tee -a "$LOG"

summarize() {
    timeout 15 "$PY" "$REPO/tools/gpu_check_report.py" summary "$OUT" "$WORK" >> "$WORK/logs/summary.log" 2>&1 \
        || echo "summary failed: see artifacts.tar.gz logs/summary.log" | tee -a "$LOG"
}

# step NAME CAP_SECONDS COMMAND...: run under timeout, log to $WORK/logs/NAME.log and gpu-check.log.
step() {
    local name=$1 cap=$2
    shift 2
    local var="GPU_CHECK_TIMEOUT_$(echo "$name" | tr 'a-z-' 'A-Z_')"
    cap=${!var:-$cap}
    local left=$((DEADLINE - $(date +%s)))
    local t=$((left < cap ? left : cap))
    if [ "$left" -lt 5 ]; then
        printf '%s\tskipped\t-\t0\t%s\n' "$name" "$t" >> "$OUT/steps.tsv"
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$LOG"
        return 0
    fi
    echo "== $name (timeout ${t}s): $*" | tee -a "$LOG"
    local s0=$(date +%s)
    timeout -k 5 "$t" "$@" 2>&1 | tee "$WORK/logs/$name.log" >> "$LOG"
    local rc=${PIPESTATUS[0]}
    local status=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then status=timeout; elif [ "$rc" != 0 ]; then status=failed; fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - s0 ))" "$t" >> "$OUT/steps.tsv"
    echo "== $name: $status (rc $rc) after $(( $(date +%s) - s0 ))s" | tee -a "$LOG"
    summarize
    return 0
}

install_project() {
    local wheels=()
    if [ -d wheels ]; then
        for w in wheels/*.whl; do
            [ -e "$w" ] || continue
            local dist=$(basename "$w" | cut -d- -f1)
            if "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" 2>/dev/null; then
                echo "already installed: $dist (keeping the machine's version)"
            else
                wheels+=("$w")
            fi
        done
    else
        echo "no wheels/ folder (tools/gpu-wheels.sh fills it): installing the project alone"
    fi
    local pip=("$PY" -m pip install --no-index --no-deps --no-build-isolation)
    if [ "$DRY" = 1 ]; then
        # No install here: what would run, and whether its build backend is present.
        echo "would run: ${pip[*]} ${wheels[*]:-}"
        echo "would run: ${pip[*]} -e .  (falling back to a regular install)"
        "$PY" -c "import setuptools; print('build backend: setuptools', setuptools.__version__)"
        return
    fi
    if [ "${#wheels[@]}" -gt 0 ]; then
        echo "installing ${#wheels[@]} carried wheels: ${wheels[*]}"
        "${pip[@]}" "${wheels[@]}" || return 1
    fi
    "${pip[@]}" -e . || "${pip[@]}" . || return 1
    (cd / && "$PY" -c "import nnspec, nnspec.kernels; print('nnspec', nnspec.__version__, 'from', nnspec.__file__)")
}

# ------------------------------------------------------------------------------ the steps
step machine 30 "$PY" tools/gpu_check_report.py machine "$OUT/machine.json"
nvidia-smi -q > "$WORK/logs/nvidia-smi-q.txt" 2>&1 || true

export -f install_project
export PY DRY
step install 90 bash -c install_project

if [ "$DRY" = 1 ]; then
    step precompile 60 "$PY" -m nnspec.bench.precompile --list
else
    step precompile 120 "$PY" -m nnspec.bench.precompile --gpu --dtypes bfloat16,float32,float16 --processes "${GPU_CHECK_PROCESSES:-14}"
fi

PER_TEST=()
"$PY" -c "import pytest_timeout" 2>/dev/null && PER_TEST=(--timeout "${GPU_CHECK_TEST_TIMEOUT:-120}")
if [ "$DRY" = 1 ]; then
    step tests 120 "$PY" -m pytest -m cuda -p no:cacheprovider -q --collect-only tests
else
    step tests 120 "$PY" -m pytest -m cuda -p no:cacheprovider -rA --durations=15 "${PER_TEST[@]}" \
        --junitxml="$WORK/tests-cuda.xml" tests
fi

for kernel in softmax_cross_entropy:ce linear_leaky_relu:linear batch_norm:bn; do
    name=${kernel#*:}
    if [ "$DRY" = 1 ]; then
        step "bench-$name" 60 "$PY" -m nnspec.bench kernels --suite tiny --device cpu --only "${kernel%%:*}" \
            --peers eager --budget 0.01 --threads 1 --no-interpreter-check --out "$WORK/bench-$name"
    else
        step "bench-$name" 70 "$PY" -m nnspec.bench kernels --suite gpu-check --device cuda --only "${kernel%%:*}" \
            --dtypes float32,bfloat16 --peers eager,compile --out "$WORK/bench-$name"
    fi
done

if [ "$DRY" = 1 ]; then
    step models 90 "$PY" -m nnspec.bench models specs/mlp.yaml --device cpu --variants torch --budget 0.02 \
        --threads 1 --out "$WORK/bench-models"
else
    step models 60 "$PY" -m nnspec.bench models specs/mlp.yaml specs/mnist_cnn.yaml --device cuda \
        --out "$WORK/bench-models"
fi

# ------------------------------------------------------------------------------ always
cp "$OUT/steps.tsv" "$WORK/" 2>/dev/null
(cd "$WORK" && timeout 15 tar czf "$OUT/artifacts.tar.gz" --exclude triton-cache --exclude hypothesis .) \
    || echo "packing artifacts.tar.gz failed" | tee -a "$LOG"
summarize
echo "gpu-check: done in $(( $(date +%s) - START ))s; report: $OUT/report.md" | tee -a "$LOG"
rm -rf "$WORK"
exit 0
