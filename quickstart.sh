#!/usr/bin/env bash
# Install, prepare the Python standard library as github-code-style shards, train a tiny GPT, sample from it.
# A few minutes on a laptop CPU; uses the GPU if there is one. No download beyond the pip packages.
set -euo pipefail
cd "$(dirname "$0")"
python -m pip install -q -r requirements.txt
STDLIB=$(python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])")
python prepare_github_code.py --source_dir="$STDLIB" --out_dir=data/stdlib --val_repo_fraction=0.05
python train.py config/train_tiny_cpu.py --overwrite=True
python sample.py --out_dir=out-tiny --start="def " --num_samples=2 --max_new_tokens=120
