#!/usr/bin/env bash
# Install, prepare the Python standard library as github-code-style shards, train a tiny GPT (the modern
# recipe) for a few minutes, and sample from it. Uses the GPU if there is one. No download beyond packages.
#
# What it installs:
#   torch        only if torch >= 2.9 is not there already. With an NVIDIA GPU (nvidia-smi found) the default
#                build from PyPI, which brings CUDA (several GB); on macOS the PyPI build (CPU + MPS); on any
#                other machine the CPU-only build (about 200 MB) from $TORCH_INDEX_URL (default: PyTorch's
#                CPU index; point it at a mirror if that is not reachable from your network).
#   the rest     requirements.txt: numpy, tiktoken, pyarrow, datasets, huggingface_hub, safetensors, tqdm,
#                matplotlib (about 150 MB).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python}
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
TORCH_SPEC="torch>=2.9"  # the first release with torch.optim.Muon

if "$PYTHON" -c "import sys, torch; v = tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 9))" 2>/dev/null; then
  echo "quickstart: torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is installed; keeping it"
elif command -v nvidia-smi >/dev/null 2>&1; then
  echo "quickstart: an NVIDIA GPU was found: installing torch with CUDA from PyPI (several GB)"
  "$PYTHON" -m pip install "$TORCH_SPEC"
elif [ "$(uname -s)" = "Darwin" ]; then
  echo "quickstart: macOS: installing torch from PyPI (CPU and Apple MPS)"
  "$PYTHON" -m pip install "$TORCH_SPEC"
else
  echo "quickstart: no NVIDIA GPU found: installing the CPU-only build of torch (about 200 MB) from $TORCH_INDEX_URL"
  "$PYTHON" -m pip install "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL" || {
    echo "quickstart: could not install torch from $TORCH_INDEX_URL; set TORCH_INDEX_URL to a reachable mirror of" \
         "PyTorch's CPU wheels, or install torch>=2.9 yourself, then re-run" >&2
    exit 1
  }
fi
"$PYTHON" -m pip install -q -r requirements.txt

STDLIB=$("$PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
"$PYTHON" prepare_github_code.py --source_dir="$STDLIB" --out_dir=data/stdlib --val_repo_fraction=0.05
"$PYTHON" train.py config/train_tiny_cpu.py config/recipe_modern.py --overwrite=True
"$PYTHON" sample.py config/train_tiny_cpu.py --start="def " --num_samples=2 --max_new_tokens=150 --temperature=0.9
