"""What a FlexAttention BlockMask costs to build, each way (issue 36): torch's create_block_mask, which evaluates the
mask at all T x T positions (the way gptlib/attention.py built it before), against the BlockMask made from each
128-token block's first and last document id (what it builds now, as modded-nanogpt's records from #16 on).

    python -m benchmarks.bench_masks                  # CPU: 2,048 and 8,192-token rows, token and block windows
    python -m benchmarks.bench_masks --device=cuda

Each case runs in a fresh process and prints its time (median of 5 after 1 warm-up) and the peak memory the builds
added (CUDA: max_memory_allocated; CPU: the peak resident set above the one before the first build). Real documents are not
needed: the rows hold a document every 300 tokens (FineWeb's median is about 400).
"""
import json
import subprocess
import sys
from dataclasses import dataclass

from gptlib.errors import run_command
from gptlib.settings import load_config, setting

CASE = """
import json, resource, statistics, sys, time
import torch
from gptlib import attention
T, way, block, device = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
idx = torch.randint(0, 50000, (1, T), device=device)
idx[:, ::300] = 50256
docs, _ = attention.doc_layout(idx, 50256)
window = torch.tensor(1792, device=device)
def build():
    if way == "bounds":
        return attention.block_mask(docs, window, block)
    from torch.nn.attention.flex_attention import create_block_mask
    def visible(b, h, q, k):
        seen = (k <= q) & (docs[b, q] == docs[b, k])
        return seen & (k // block > q // block - window // block if block else q - k < window)
    return create_block_mask(visible, 1, None, T, T, device=device)
def sync():
    if device.startswith("cuda"):
        torch.cuda.synchronize()
if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
build(); sync()  # the first build's peak counts; its time does not (warm-up)
times = []
for _ in range(5):
    t = time.perf_counter(); build(); sync(); times.append(time.perf_counter() - t)
peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if device.startswith("cuda") else \\
    (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
print(json.dumps({"T": T, "way": way, "block": block, "ms": 1000 * statistics.median(times), "peak_mib": peak}))
"""


@dataclass
class MasksConfig:
    device: str = setting("cpu", pattern=r"cpu|cuda(:\d+)?")  # where the masks are built
    sizes: list[int] = setting([2048, 8192])  # row lengths (multiples of 128)


def main(argv):
    cfg = load_config(MasksConfig, argv)
    rows = []
    for T in cfg.sizes:
        for block in (0, 128):
            for way in ("positions", "bounds"):
                r = subprocess.run([sys.executable, "-c", CASE, str(T), way, str(block), cfg.device], capture_output=True,
                                   text=True, check=True)
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"T {T:6d} | {'block' if block else 'token'} window 1792 | {way:9s} | {rows[-1]['ms']:9.2f} ms | "
                      f"+{rows[-1]['peak_mib']:8.1f} MiB", flush=True)


if __name__ == "__main__":
    sys.exit(run_command(main))
