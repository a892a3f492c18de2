"""Sample from a trained model, or from OpenAI's GPT-2, streaming tokens as they are generated.

    python sample.py --out_dir=out-fineweb --start="The meaning of life is" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --top_p=0.9
Every prompt is preceded by <|endoftext|>, the marker that comes before each training document,
so the model continues the start of a document (an empty --start samples a document from scratch).
"""
import codecs
import os
import sys
from dataclasses import dataclass

import torch

from config import ConfigError, load_config, run_script
from runtime import (CheckpointError, autocast, find_checkpoint, load_checkpoint, model_from_checkpoint,
                     pick_device, pick_dtype)
from pretrained import HUB_REPOS, PretrainedError, load_pretrained
from shards import EOT, DataError, gpt2_encoding

FILE_PREFIX = "FILE:"  # --start=FILE:path reads the prompt from a file
SEPARATOR = "\n---------------\n"  # printed after each sample


@dataclass
class SampleConfig:
    out_dir: str = "out"  # training run to sample from (ckpt_best.pt if present, else ckpt.pt)
    init_from: str = "resume"  # 'resume' (from out_dir), or OpenAI's 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl'
    start: str = ""  # prompt text, or FILE:path to read it from a file
    num_samples: int = 3  # number of samples to draw
    max_new_tokens: int = 200  # tokens generated per sample
    temperature: float = 0.8  # < 1 is more conservative, > 1 more random; 0 is greedy
    top_k: int = 200  # sample only among the k most likely tokens (0: no limit)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with this much probability (1.0: off)
    stop_at_eot: bool = True  # end a sample at <|endoftext|>, where the model starts another document
    use_cache: bool = True  # KV cache: same tokens, much faster
    seed: int = 1337  # random seed; the same seed gives the same samples
    device: str = "auto"  # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto' (bf16/fp16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16'


class StreamDecoder:
    """Turns token ids into text as they arrive. A character can span tokens (BPE works on bytes),
    so bytes are decoded incrementally and an incomplete UTF-8 sequence waits for the next token."""

    def __init__(self, enc, out):
        self.enc, self.out = enc, out
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token_id):
        self.out.write(self.utf8.decode(self.enc.decode_single_token_bytes(token_id)))
        self.out.flush()

    def finish(self):
        self.out.write(self.utf8.decode(b"", final=True))
        self.utf8.reset()


def read_prompt(start):
    if not start.startswith(FILE_PREFIX):
        return start
    path = start[len(FILE_PREFIX):]
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the prompt file {path!r} ({e}); pass --start=FILE:path of a UTF-8 text file") from None


def load_model(cfg):
    if cfg.init_from in HUB_REPOS:
        return load_pretrained(cfg.init_from)
    if cfg.init_from != "resume":
        raise ConfigError(f"init_from={cfg.init_from!r}: use 'resume' or one of {', '.join(HUB_REPOS)}")
    if not os.path.isdir(cfg.out_dir):
        raise CheckpointError(f"out_dir {cfg.out_dir!r} does not exist; pass the --out_dir of a training run, "
                              f"or --init_from=gpt2 for OpenAI's model")
    path = find_checkpoint(cfg.out_dir)
    ckpt = load_checkpoint(path)
    print(f"loaded {path} (iter {ckpt.get('iter_num', '?')}, best val loss {ckpt.get('best_val_loss', '?')})", file=sys.stderr)
    return model_from_checkpoint(ckpt)


def main(argv, out=sys.stdout):
    cfg = load_config(SampleConfig, argv)
    if cfg.num_samples < 1 or cfg.max_new_tokens < 1:
        raise ConfigError("num_samples and max_new_tokens must be at least 1")
    if cfg.temperature < 0 or cfg.top_k < 0 or not 0 < cfg.top_p <= 1:
        raise ConfigError("need temperature >= 0, top_k >= 0 (0: off) and 0 < top_p <= 1")
    enc = gpt2_encoding()
    prompt = read_prompt(cfg.start)
    device = pick_device(cfg.device)
    try:
        dtype = pick_dtype(device, cfg.dtype)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    torch.manual_seed(cfg.seed)
    model = load_model(cfg).to(device).eval()
    ids = [EOT] + enc.encode(prompt, allowed_special={"<|endoftext|>"})
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    stream = StreamDecoder(enc, out)
    for _ in range(cfg.num_samples):
        out.write(prompt)
        on_token = stream
        if cfg.stop_at_eot:
            on_token = lambda t: None if t == EOT else stream(t)  # the document boundary is not printed
        with autocast(device, dtype):
            model.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                           top_p=cfg.top_p, eot_token=EOT if cfg.stop_at_eot else None,
                           use_cache=cfg.use_cache, on_token=on_token)
        stream.finish()
        out.write(SEPARATOR)
        out.flush()


if __name__ == "__main__":
    run_script(main, sys.argv[1:], (CheckpointError, DataError, PretrainedError))
