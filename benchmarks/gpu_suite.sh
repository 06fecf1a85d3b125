#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md in one run, for a lent GPU machine with little time.
#
#   OUT=results BUDGET=420 bash benchmarks/gpu_suite.sh       # from the repository root
#   SMOKE=1 OUT=/tmp/smoke bash benchmarks/gpu_suite.sh       # every part with tiny sizes on the CPU
#
# ditlab's GPU speed paths are opt-in until measured (--cuda_graphs, --fused_kernels, --compile_blocks;
# cuDNN attention first): every part below turns on explicitly what it measures, next to the defaults.
# Parts run in order of importance, each under its own `timeout`, so one failure does not sink the rest;
# a part is skipped when less than its estimate is left of BUDGET seconds. Everything lands in $OUT:
# suite.log (all output), results.jsonl (one line per part: its JSON or how it ended), profile.txt.
# Optional: WHEELS=dir (wheels to install first, e.g. diffusers), DITLAB_CACHE (holding mnist_v1.npz),
# SMOKE=1 (tiny sizes on the CPU, to check the script itself).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-420}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d)
RES=$OUT/results.jsonl
exec > >(tee -a "$OUT/suite.log") 2>&1
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
PY=${PY:-python3}

left() { echo $((BUDGET - (SECONDS - START))); }

record() {  # record PART STATUS [JSON_FILE] [EXTRA_JSON]: one line of results.jsonl
  "$PY" - "$RES" "$1" "$2" "${3:-}" "${4:-}" <<'EOF'
import json, os, sys
res, part, status, path, extra = sys.argv[1:6]
line = {"part": part, "status": status}
if path and os.path.isfile(path):
    line["result"] = json.load(open(path))
if extra:
    line.update(json.loads(extra))
open(res, "a").write(json.dumps(line) + "\n")
EOF
}

part() {  # part NAME ESTIMATE LIMIT JSON CMD...: run CMD if ESTIMATE seconds are left, at most LIMIT seconds
  local name=$1 est=$2 limit=$3 json=$4
  shift 4
  if (($(left) < est)); then
    echo "== $name: skipped ($(left)s left, needs ~${est}s)"
    record "$name" skipped
    return 1
  fi
  ((limit > $(left) + 20)) && limit=$(($(left) + 20))  # the budget holds, whatever the part's own limit
  echo "== $name (limit ${limit}s, $(left)s left, $(date +%T))"
  local t0=$SECONDS rc
  timeout -k 5 "$limit" "$@"
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  record "$name" "exit $rc after $((SECONDS - t0))s" "$json"
  return $rc
}

demo() {  # demo NAME FLAGS...: `ditlab train --preset mnist --device cuda` timed end to end, with its metrics
  local name=$1
  shift
  local run=$W/runs/$name t0 t1
  t0=$(date +%s.%N)
  timeout -k 5 90 "$PY" -m ditlab.cli train --preset mnist --device "$DEVICE" --run_dir "$run" "$@"
  local rc=$?
  t1=$(date +%s.%N)
  local secs
  secs=$("$PY" -c "print(round($t1 - $t0, 2))")
  echo "== demo $name: exit $rc, ${secs}s end to end"
  record "demo_$name" "exit $rc" "$run/metrics.json" "{\"seconds\": $secs, \"flags\": \"$*\"}"
}

# ------------------------------------------------------------------ set-up
if [[ -n ${WHEELS:-} ]]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl &&
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if ((SMOKE)); then
  DEVICE=cpu
  TRAIN=(--device cpu --model DiT-Test/2 --image-size 32 --dtype fp32 --steps 1 --warmup 1 --peak-tflops 0.1)
  B_BIG=4 B_SMALL=2
  SAMPLING=(--device cpu --model DiT-Test/2 --batches 2 --samplers ddim --steps-lo 1 --steps-hi 2 --check-steps 2
    --vae tiny --dtype fp32)
  TABLE=(--table-models DiT-Test/2 --table-tokens 64)
  SOURCE=(--device cpu --items 256 --batch 4 --batches 5)
  DEMO_FAST=(--steps 4 --vae_steps 4 --eval_num 20 --log_every 2 --ckpt_every 2 --sample_steps 2)
else
  DEVICE=cuda
  TRAIN=(--steps 8 --warmup 3)
  B_BIG=128 B_SMALL=32
  SAMPLING=()
  TABLE=()
  SOURCE=(--batch 128)
  DEMO_FAST=()
fi
echo "== environment"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv 2>/dev/null
"$PY" - <<'EOF'
import importlib, platform, time
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
for name in ("triton", "diffusers", "numpy"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:
        print(name, "missing:", err)
if torch.cuda.is_available():  # the two ceilings (METHOD.md): a big bf16 product and a device-to-device copy
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize(); dt = (time.perf_counter() - t) / 20
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
    y.copy_(x); torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize(); ct = (time.perf_counter() - t) / 20
    print(f"ceilings: bf16 8192^3 matmul {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s; copy {2 * 2**30 / ct / 1e12:.2f} TB/s")
EOF

# ------------------------------------------------------------------ parts, most important first
part tests 30 120 "" "$PY" -m pytest -q -p no:cacheprovider tests/models/test_fused.py tests/models/test_cuda_graph.py \
  tests/training/test_cuda_graph_loop.py tests/diffusion/test_schedules.py tests/sampling/test_pipeline.py \
  -m "not slow"

part train_b$B_BIG 90 220 "$W/train_big.json" "$PY" benchmarks/gpu_train.py "${TRAIN[@]}" --batch $B_BIG \
  --variants eager,graphs,fused,fused+graphs,fused+cudnn+graphs,regional+cudnn,regional+cudnn+graphs \
  --profile "$OUT/profile.txt" --profile-variant regional+cudnn --json "$W/train_big.json"

echo "== demo with the opt-in GPU paths (limit 90s, $(left)s left)"
demo optin --cuda_graphs --fused_kernels "${DEMO_FAST[@]}"

part sampling 90 220 "$W/sampling.json" "$PY" benchmarks/gpu_sampling.py "${SAMPLING[@]}" --json "$W/sampling.json"

if (($(left) > 60)); then
  echo "== demo as shipped: the defaults (limit 90s, $(left)s left)"
  demo default "${DEMO_FAST[@]}"
fi

part train_b$B_SMALL 50 150 "$W/train_small.json" "$PY" benchmarks/gpu_train.py "${TRAIN[@]}" --batch $B_SMALL \
  --variants eager,fused+cudnn+graphs,regional+cudnn+graphs,fused+cudnn+graphs+ckpt14,fused+cudnn+graphs+ckpt \
  --json "$W/train_small.json"

part batch_source 15 60 "$W/source.json" "$PY" benchmarks/batch_source.py "${SOURCE[@]}" \
  --step-rate-json "$W/train_big.json" --json "$W/source.json"

BEST=$("$PY" - "$W/train_big.json" <<'EOF'
import json, sys
try:
    rows = [r for r in json.load(open(sys.argv[1]))["rows"] if "error" not in r]
except Exception:
    rows = []
fast = [r for r in rows if not any(s in r["variant"] for s in ("regional", "whole"))]  # no per-model compile
print(max(fast, key=lambda r: r["samples_per_s"])["variant"] if fast else "fused+cudnn+graphs")
EOF
)
part table 60 170 "$W/table.json" "$PY" benchmarks/gpu_train.py "${TRAIN[@]}" --steps 5 --warmup 2 --table "$BEST" \
  "${TABLE[@]}" --json "$W/table.json"

if (($(left) > 40)); then
  echo "== demo, batch 256 (limit 90s, $(left)s left)"
  demo b256 --cuda_graphs --fused_kernels --global_batch_size 256 --steps 700 --lr 2e-3 --warmup_steps 50 \
    "${DEMO_FAST[@]}"
fi

part train_whole 100 160 "$W/train_whole.json" "$PY" benchmarks/gpu_train.py "${TRAIN[@]}" --batch $B_BIG \
  --variants whole+cudnn --json "$W/train_whole.json"

part train_autotune 120 200 "$W/train_autotune.json" "$PY" benchmarks/gpu_train.py "${TRAIN[@]}" --batch $B_BIG \
  --variants regional+cudnn+autotune --json "$W/train_autotune.json"

echo "== done in $((SECONDS - START))s; results in $OUT"
rm -rf "$W"
