"""Our token shards as modded-nanogpt's .bin files, so its own train_gpt.py reads the same tokens (issue 36: the
speedrun recipe against modded-nanogpt at the same tokens per step, benchmarks/gpu_followup.sh item modded18).

    python -m benchmarks.modded_shards --data_dir=data/fineweb --out_dir=/tmp/fineweb10B --copies=5

Each split becomes fineweb_<split>_NNNNNN.bin: a header of 256 int32 (20240520, 1, the token count, zeros), then
the tokens as uint16, the format record #18's _load_data_shard reads. Its train loader reads files in order and
never wraps, so --copies writes the train split that many times over (a timing run needs more steps than a small
sample holds). Only the format is produced here; no code of modded-nanogpt is in this repository.
"""
import os
import sys
from dataclasses import dataclass

import numpy as np

from gptlib import shards
from gptlib.errors import run_command
from gptlib.settings import load_config, setting

MAGIC, VERSION, HEADER_INTS = 20240520, 1, 256  # record #18's _load_data_shard


@dataclass
class ModdedConfig:
    data_dir: str = setting("")  # a dataset of token shards (prepare_fineweb.py)
    out_dir: str = setting("", path="dir")  # where the .bin files go
    copies: int = setting(1, ge=1, le=100)  # times the train split is written over (the loader never wraps)


def write_bin(path, tokens):
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = MAGIC, VERSION, len(tokens)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=np.uint16).tobytes())


def read_bin(path):
    """(the header's token count, the tokens) of a .bin file, as record #18 reads it."""
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    assert header[0] == MAGIC and header[1] == VERSION, "not a modded-nanogpt .bin file"
    return int(header[2]), np.fromfile(path, dtype=np.uint16, offset=4 * HEADER_INTS)


def main(argv):
    cfg = load_config(ModdedConfig, argv)
    os.makedirs(cfg.out_dir, exist_ok=True)
    for split, name, copies in (("train", "train", cfg.copies), ("val", "val", 1)):
        tokens = np.concatenate([np.load(p) for p in shards.list_shards(cfg.data_dir, split)])
        for k in range(copies):
            write_bin(os.path.join(cfg.out_dir, f"fineweb_{name}_{k + 1:06d}.bin"), tokens)
        print(f"{split}: {len(tokens):,} tokens x {copies} -> {cfg.out_dir}")


if __name__ == "__main__":
    sys.exit(run_command(main))
