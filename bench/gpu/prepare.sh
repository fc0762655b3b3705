#!/usr/bin/env bash
# Run HERE (the CPU machine, which reaches PyPI) before the device call: puts into bench/gpu/wheels/ what the
# GPU image lacks to `import deepspeed` (the image has torch, numpy, packaging, tqdm, psutil, py-cpuinfo,
# msgpack, ninja, einops, typing-extensions but not deepspeed, hjson, pydantic, pydantic-core,
# annotated-types, typing-inspection). Every dependency of deepspeed except torch/numpy/packaging/tqdm is
# included anyway (small), so the install also works on an image that lacks them; pip installs only what is
# missing. Compiled wheels come for CPython 3.12 (the GPU image) and 3.11 (this machine, for the local
# install test); pip picks the one that fits.
#
#   bash bench/gpu/prepare.sh            # -> bench/gpu/wheels/*.whl (gitignore it), prints the total size
#   bash bench/gpu/prepare.sh --check    # + install into a fresh venv with --no-index and import deepspeed
#
# DeepSpeed's wheel is pure Python (no prebuilt ops). It compiles an op with nvcc + ninja only when one is
# used: mfu.py hands it our torch AdamW (fused=True on CUDA) via gptscale.runtime.engine.build_engine, so nothing is
# compiled on the GPU machine (the image has nvcc and ninja anyway).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
W="$HERE/wheels"
mkdir -p "$W"

ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
DS_VERSION="${DS_VERSION:-$(ver deepspeed)}"
# Versions known to work with this deepspeed (the ones in .venv).
PURE=("hjson==$(ver hjson)" "pydantic==$(ver pydantic)" "annotated-types==$(ver annotated-types)"
      "typing-inspection==$(ver typing-inspection)" "typing-extensions==$(ver typing-extensions)"
      "py-cpuinfo==$(ver py-cpuinfo)" "einops==$(ver einops)")
BINARY=("pydantic-core==$(ver pydantic-core)" "msgpack==$(ver msgpack)" "psutil==$(ver psutil)"
        "ninja==$(ver ninja)")

echo "== deepspeed $DS_VERSION wheel (pure Python, built from the sdist without ops)"
if ! ls "$W"/deepspeed-"$DS_VERSION"-*.whl >/dev/null 2>&1; then
  "$PY" -m pip wheel -q --no-deps -w "$W" "deepspeed==$DS_VERSION"
fi
echo "== pure-Python dependencies: ${PURE[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: -d "$W" "${PURE[@]}"
for pyv in 3.12 3.11; do
  echo "== compiled dependencies for CPython $pyv: ${BINARY[*]}"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyv" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
    -d "$W" "${BINARY[@]}"
done
# deepspeed must not pull anything we do not carry (torch etc. come from the image)
unzip -p "$W"/deepspeed-"$DS_VERSION"-*.whl '*/METADATA' | grep ^Requires-Dist || true
ls -la "$W"
du -sh "$W"
total=$(du -sb "$W" | cut -f1)
if [ "$total" -gt $((50 * 1024 * 1024)) ]; then echo "prepare.sh: wheels total $total bytes > 50 MiB" >&2; exit 1; fi

if [ "${1:-}" = "--check" ]; then
  # Simulate the GPU image: a fresh venv with only torch (the local CPU wheel), transformers, sentencepiece,
  # pyarrow and tensorboard, then the offline install that run.sh does, then import deepspeed.
  V="${CHECK_VENV:-/tmp/gpuimg}"
  PYV="${CHECK_PYTHON:-python3.11}"
  if [ ! -x "$V/bin/python" ]; then
    "$PYV" -m venv "$V"
    "$V/bin/python" -m pip install -q torch==2.13.0 transformers sentencepiece pyarrow tensorboard
  fi
  "$V/bin/python" -m pip uninstall -q -y deepspeed hjson pydantic pydantic-core annotated-types typing-inspection \
    py-cpuinfo einops msgpack psutil ninja >/dev/null 2>&1 || true
  echo "== offline install into $V"
  # no pip config files, no find-links/index from the environment: only the wheels folder, as on the GPU machine
  env -u PIP_FIND_LINKS -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL -u PIP_CONSTRAINT PIP_CONFIG_FILE=/dev/null \
    "$V/bin/python" -m pip install --no-index --find-links "$W" "deepspeed==$DS_VERSION"
  (cd "$REPO" && DS_ACCELERATOR=cpu PYTHONPATH="$REPO" "$V/bin/python" -c \
    "import deepspeed, gptscale.runtime.engine, gptscale.runtime.dist; print('import deepspeed OK', deepspeed.__version__)")
fi
