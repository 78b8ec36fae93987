#!/usr/bin/env bash
# Build the wheel, install it into a fresh virtual environment (no editable install in sight) and use it there:
# this catches package data that the editable install hides (the kernel source, templates, label maps).
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Built from a copy of the working tree's files (tracked, and untracked but not ignored): setuptools would put every
# module left in a stale build/lib of the checkout (e.g. one since moved or deleted) into the wheel.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' file; do if [ -e "$file" ]; then printf '%s\0' "$file"; fi; done |
  tar --null -T - -cf - | tar -xf - -C "$work/src"
python -m build --wheel --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
python -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q torch==2.13.0
"$work/venv/bin/python" -m pip install -q "$work"/dist/*.whl
cd "$work"  # away from the checkout, so that only the installed wheel can be imported
HF_MEDMAMBA_CACHE="$work/cache" "$work/venv/bin/python" - <<'PY'
import pathlib
import hf_medmamba
from hf_medmamba.kernels import cpu_scan
from hf_medmamba.tools import labels, model_card

root = pathlib.Path(hf_medmamba.__file__).parent
assert "site-packages" in str(root), f"imported from {root}, not from the installed wheel"
assert cpu_scan.SOURCE.is_file(), f"kernel source missing from the wheel: {cpu_scan.SOURCE}"
assert cpu_scan.load_cpu_scan() is not None, "the kernel did not build from the wheel's source"
assert model_card.TEMPLATE_PATH.is_file(), f"model-card template missing from the wheel: {model_card.TEMPLATE_PATH}"
assert labels.IMAGENET_ID2LABEL_FILE.is_file(), "ImageNet label map missing from the wheel"
assert len(labels.imagenet_id2label()) == 1000
print(f"wheel OK: hf_medmamba {hf_medmamba.__version__} from {root}; CPU kernel built from the shipped source; "
      "card template and ImageNet labels present")
PY
"$work/venv/bin/hf-medmamba" --version  # the console script resolves to hf_medmamba.tools.cli:main
