#!/usr/bin/env bash
# Run ON THE GPU MACHINE (no network), from the repo root, after bench/gpu/prepare.sh filled bench/gpu/wheels
# here and the device call carried it. Installs deepspeed offline into the image's python, then runs
# bench/gpu/mfu.py under a hard total budget (installs included). Extra arguments go to mfu.py.
#
#   bash bench/gpu/run.sh                      # TOTAL_S=450: everything done in < 7.5 min
#   TOTAL_S=300 bash bench/gpu/run.sh --variants eager,compile+pad
#   PY=/tmp/gpuimg/bin/python bash bench/gpu/run.sh --device cpu --presets gpt2-tiny --steps 2   # CPU dry run
#
# Logs and the full JSON go to $OUT (the device tool's output folder) or to /tmp/mfu_out.
set -uo pipefail
T0=$SECONDS
cd "$(dirname "$0")/../.."
PY="${PY:-python3}"
TOTAL_S="${TOTAL_S:-450}"
OUTDIR="${OUT:-/tmp/mfu_out}"
mkdir -p "$OUTDIR"
W=bench/gpu/wheels
export PYTHONUNBUFFERED=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TOKENIZERS_PARALLELISM=false

echo "== run.sh: $(date -u +%FT%TZ), python $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.limit --format=csv
ls "$W"/deepspeed-*.whl >/dev/null 2>&1 || { echo "run.sh: no deepspeed wheel in $W: run bench/gpu/prepare.sh here and carry bench/gpu/wheels"; exit 2; }
DS_WHEEL=$(ls "$W"/deepspeed-*.whl | head -1)
DS_VERSION=$(basename "$DS_WHEEL" | cut -d- -f2)

echo "== installing deepspeed $DS_VERSION offline (only what the image lacks)"
if ! "$PY" -c "import deepspeed" >/dev/null 2>&1; then
  if ! "$PY" -m pip install -q --no-index --find-links "$W" --no-cache-dir --disable-pip-version-check \
        "deepspeed==$DS_VERSION" 2>&1 | tail -5; then :; fi
  if ! "$PY" -c "import deepspeed" >/dev/null 2>&1; then
    # fallback: no dependency resolution, into a side folder that the image's own packages stay ahead of
    echo "run.sh: resolved install failed; installing the missing packages with --no-deps into /tmp/dssite"
    "$PY" -m pip install -q --no-index --find-links "$W" --no-deps --no-cache-dir --target /tmp/dssite \
      "deepspeed==$DS_VERSION" hjson pydantic pydantic-core annotated-types typing-inspection
    export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}/tmp/dssite"
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__, 'gpu', torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1 | grep -v "^\[" \
  || { echo "run.sh: import deepspeed failed"; exit 3; }
if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  # the practical bf16 matmul ceiling of this card (MFU is against 989 TFLOP/s; ~800 is the reachable top)
  "$PY" - <<'PYEOF'
import torch, time
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter(); n = 20
for _ in range(n): a @ b
torch.cuda.synchronize(); dt = (time.perf_counter() - t) / n
print(f"bf16 matmul 8192^3: {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s; flash_sdp_enabled={torch.backends.cuda.flash_sdp_enabled()}")
PYEOF
fi
echo "== install + checks took $((SECONDS - T0)) s"

BUDGET=$((TOTAL_S - (SECONDS - T0) - 25))
if [ "$BUDGET" -lt 60 ]; then echo "run.sh: only $BUDGET s left for mfu.py"; fi
# the parent enforces BUDGET on its children; `timeout` is the backstop for the parent itself
timeout --kill-after=10 $((BUDGET + 20)) "$PY" bench/gpu/mfu.py --budget-s "$BUDGET" --out "$OUTDIR/mfu.json" "$@" 2>&1 \
  | tee "$OUTDIR/mfu.log"
rc=${PIPESTATUS[0]}
echo "== run.sh done in $((SECONDS - T0)) s (mfu.py exit $rc); full results: $OUTDIR/mfu.json, log: $OUTDIR/mfu.log"
grep '^{"device"' "$OUTDIR/mfu.log" | tail -1   # the final JSON line again, as the last line
exit "$rc"
