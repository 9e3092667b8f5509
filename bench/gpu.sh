#!/usr/bin/env bash
# The one prepared GPU measurement: the project's JAX training step, the same
# step making its views (--augment_in_step), the PyTorch peer, and the NT-Xent
# loss, each in a fresh process, as JSON lines.
#
#   bash bench/gpu.sh --out=DIR [--wheels=DIR] [--budget=SECONDS] [--smoke]
#
# For a Linux machine with one NVIDIA GPU that has JAX, PyTorch and
# torchvision but no TensorFlow. It runs the Python named by $PYTHON, else
# python3 on the PATH. --wheels=DIR installs the wheels of DIR (Keras,
# absl-py and whatever else is missing, pure Python) into a temporary folder
# put on PYTHONPATH first. The parts, in this order:
#
#   loss.jsonl      bench/loss.py: NT-Xent forward + backward, whole at
#                   2N = 8,192 and 16,384, chunked (C = 1,024) at 65,536;
#   then for CIFAR ResNet-18 at 32 px, batch 512, and ResNet-50 at 224 px,
#   batch 256 (bf16: --precision=mixed_bfloat16, autocast for PyTorch):
#   step.jsonl      bench/train_step.py --backend=jax on synthetic views;
#   in_step.jsonl   the same with --augment_in_step, from synthetic uint8
#                   images and draws;
#   torch.jsonl     bench/torch_peer.py, eager and --compile (skipped with
#                   a record where torch is not installed).
#
# environment.json holds the device and the versions. Every measurement
# prints its per-step times (median, min, max over blocks) and peak device
# memory; one that fails is a record with "error". --budget (default 480 s)
# bounds the whole run: each measurement's timeout is what is left, and the
# measurements that no longer fit are records with "skipped". --smoke runs
# every part at tiny sizes, on a CPU in seconds. Exit status: 0 when every
# measurement ran, 1 when one failed or was skipped for time, 2 for a
# mistake in the options.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python3}
OUT=""
WHEELS=""
BUDGET=480
SMOKE=0

usage_error() {
  echo "bench/gpu.sh: error: $1 (usage: bash bench/gpu.sh --out=DIR [--wheels=DIR]" \
       "[--budget=SECONDS] [--smoke])" >&2
  exit 2
}

for arg in "$@"; do
  case "$arg" in
    --out=*) OUT=${arg#--out=} ;;
    --wheels=*) WHEELS=${arg#--wheels=} ;;
    --budget=*) BUDGET=${arg#--budget=} ;;
    --smoke) SMOKE=1 ;;
    *) usage_error "unknown option ${arg}" ;;
  esac
done
[ -n "$OUT" ] || usage_error "--out=DIR is required"
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -gt 0 ] || usage_error "--budget must be a whole number of seconds > 0, got ${BUDGET}"
command -v "$PYTHON" >/dev/null 2>&1 || usage_error "PYTHON=${PYTHON} is not a program on the PATH"
if [ -n "$WHEELS" ]; then
  compgen -G "${WHEELS}/*.whl" >/dev/null || usage_error "--wheels=${WHEELS} holds no .whl files"
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/simclr_gpu_site.XXXXXX")
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" \
      "$WHEELS"/*.whl || { echo "bench/gpu.sh: error: installing --wheels=${WHEELS} failed" >&2; exit 1; }
  export PYTHONPATH="${SITE}${PYTHONPATH:+:${PYTHONPATH}}"
fi
mkdir -p "$OUT" || usage_error "cannot create --out=${OUT}"

export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# A rerun on the same machine reuses the compiled programs.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-${TMPDIR:-/tmp}/simclr_jax_cache}

"$PYTHON" - "$OUT/environment.json" <<'EOF' || { echo "bench/gpu.sh: error: $PYTHON lacks jax, keras, numpy or absl-py" >&2; exit 1; }
import importlib, json, platform, subprocess, sys
versions = {}
for name in ("jax", "jaxlib", "keras", "numpy", "absl", "torch", "torchvision"):
    try:
        versions[name] = getattr(importlib.import_module(name), "__version__", "installed")
    except ImportError:
        versions[name] = None
for name in ("jax", "keras", "numpy", "absl"):
    if versions[name] is None:
        sys.exit(f"{name} is not importable")
import jax
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True,
                         timeout=30).stdout.strip()
except (OSError, subprocess.SubprocessError):
    gpu = None
record = dict(python=platform.python_version(), versions=versions, nvidia_smi=gpu,
              jax_devices=[d.device_kind for d in jax.devices()],
              jax_platform=jax.devices()[0].platform)
with open(sys.argv[1], "w") as f:
    json.dump(record, f)
print(json.dumps(record))
EOF

HAVE_TORCH=0
"$PYTHON" -c "import torch, torchvision" >/dev/null 2>&1 && HAVE_TORCH=1
DEADLINE=$(( $(date +%s) + BUDGET ))
STATUS=0

# measure FILE LABEL SCRIPT ARGS...: one bench script's JSON lines into
# $OUT/FILE and stdout, each tagged with its label; a failure or a timeout is
# a record of its own.
measure() {
  local file=$1 label=$2 script=$3
  shift 3
  local left=$(( DEADLINE - $(date +%s) ))
  if [ "$left" -lt 20 ]; then
    echo "{\"part\": \"${label}\", \"skipped\": \"the --budget of ${BUDGET} s ran out\"}" \
      | tee -a "$OUT/$file"
    STATUS=1
    return
  fi
  local lines
  lines=$(timeout "$left" "$PYTHON" "$HERE/$script" "$@" --timeout="$left" 2>"$OUT/stderr.txt")
  local rc=$?
  if [ "$rc" -ne 0 ] || [ -z "$lines" ]; then
    local why
    why=$(tail -n 1 "$OUT/stderr.txt" | tr -d '"\\' | cut -c1-300)
    lines="{\"error\": \"exit status ${rc}: ${why}\"}"
  fi
  while IFS= read -r line; do
    case "$line" in
      "{"*) ;;
      *) continue ;;
    esac
    case "$line" in
      *'"error"'*|*'"skipped"'*) STATUS=1 ;;
    esac
    echo "{\"part\": \"${label}\", ${line#\{}" | tee -a "$OUT/$file"
  done <<< "$lines"
}

if [ "$SMOKE" -eq 1 ]; then
  LOSS_RUNS=("--smoke --losses=ntxent")
  WORKLOAD_RUNS=("--smoke")
  TORCH_RUNS=("--smoke")
else
  LOSS_RUNS=("--losses=ntxent --sizes=8192,16384 --chunk_size=0"
             "--losses=ntxent --sizes=65536 --chunk_size=1024")
  WORKLOAD_RUNS=("--workload=resnet18_32 --batch=512" "--workload=resnet50_224 --batch=256")
  TORCH_RUNS=("--workload=resnet18_32 --batch=512" "--workload=resnet50_224 --batch=256")
fi

for run in "${LOSS_RUNS[@]}"; do
  # shellcheck disable=SC2086
  measure loss.jsonl loss loss.py --backend=jax $run
done
for i in "${!WORKLOAD_RUNS[@]}"; do
  run=${WORKLOAD_RUNS[$i]}
  # shellcheck disable=SC2086
  measure step.jsonl step train_step.py --backend=jax --precision=mixed_bfloat16 $run
  # shellcheck disable=SC2086
  measure in_step.jsonl in_step train_step.py --backend=jax --precision=mixed_bfloat16 \
    --augment_in_step $run
  for compiled in "" "--compile"; do
    if [ "$HAVE_TORCH" -eq 1 ]; then
      # shellcheck disable=SC2086
      measure torch.jsonl "torch${compiled:+_compile}" torch_peer.py ${TORCH_RUNS[$i]} $compiled
    else
      echo "{\"part\": \"torch${compiled:+_compile}\", \"skipped\": \"torch and torchvision are not importable by ${PYTHON}\"}" \
        | tee -a "$OUT/torch.jsonl"
    fi
  done
done
rm -f "$OUT/stderr.txt"
exit "$STATUS"
