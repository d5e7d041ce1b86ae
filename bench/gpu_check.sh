#!/usr/bin/env bash
# The GPU check on a machine without network (see bench/gpu_check.py): install the wheels that travel in
# .whl/ (`make gpu-wheels` downloads them) into .site/, then run the check. Arguments go to gpu_check.py.
# When $OUT is set (the device machine's return folder), GPU.md and GPU.json are copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --upgrade --no-index --no-deps --target .site .whl/*.whl
fi
export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false
status=0
$PY bench/gpu_check.py "$@" || status=$?
if [ -n "${OUT:-}" ]; then cp -f bench/GPU.md bench/GPU.json "$OUT"/ 2>/dev/null || true; fi
exit $status
