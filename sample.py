"""Sample from a trained model, or from OpenAI's GPT-2, streaming tokens as they are generated.

    python sample.py config/train_tiny_cpu.py --start="def "          # the run a train config wrote
    python sample.py --out_dir=out-fineweb --start="The meaning of life is" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --top_p=0.9
Every prompt is preceded by <|endoftext|>, the marker that comes before each training document,
so the model continues the start of a document (an empty --start samples a document from scratch).
A sample ends where the model writes the next <|endoftext|> (the end of its document), which the
line after it says, or after max_new_tokens.
"""
import codecs
import sys
from dataclasses import dataclass
from typing import ClassVar

import torch

from gptlib import checkpoint
from gptlib.checkpoint import init_from_problem
from gptlib.errors import ConfigError, run_command
from gptlib.runtime import autocast, pick_device, pick_dtype
from gptlib.settings import DEVICE_PATTERN, DTYPES, load_config, no_effect_notes, setting
from gptlib.train_settings import NANOGPT_SAMPLE, TrainConfig
from gptlib.shards import EOT, VOCAB_SIZE, gpt2_encoding

FILE_PREFIX = "FILE:"  # --start=FILE:path reads the prompt from a file
SEPARATOR = "---------------"  # printed after each sample, with how it ended


@dataclass
class SampleConfig:
    NANOGPT: ClassVar[dict] = NANOGPT_SAMPLE  # nanoGPT's sample.py names this one lacks
    out_dir: str = setting(TrainConfig.out_dir)  # training run to sample from (ckpt_best.pt if present, else ckpt.pt); a train config file sets it
    init_from: str = setting("resume")  # 'resume' (out_dir's checkpoint), OpenAI's 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a checkpoint file (.pt, nanoGPT's too)
    start: str = setting("")  # prompt text, or FILE:path to read it from a file
    num_samples: int = setting(3, ge=1)  # number of samples to draw
    max_new_tokens: int = setting(200, ge=1)  # tokens generated per sample
    temperature: float = setting(0.8, ge=0)  # < 1 is more conservative, > 1 more random; 0 is greedy
    top_k: int = setting(200, ge=0)  # sample only among the k most likely tokens (0: no limit)
    top_p: float = setting(1.0, gt=0, le=1)  # nucleus sampling: the smallest set of tokens with this much probability (1.0: off)
    stop_at_eot: bool = setting(True)  # end a sample at <|endoftext|>, where the model starts another document
    use_cache: bool = setting(True)  # KV cache: same tokens, much faster
    seed: int = setting(1337, ge=0)  # random seed; the same seed gives the same samples
    device: str = setting("auto", pattern=DEVICE_PATTERN)  # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = setting("auto", choices=DTYPES)  # 'auto' (bf16/fp16 on GPU, fp32 on CPU), 'float32', 'bfloat16', 'float16'

    def problems(self):
        return [p for p in [init_from_problem(self.init_from)] if p]

    def no_effect(self):
        """Settings this command ignores, setting -> why (settings.no_effect_notes)."""
        out = {"out_dir": f"init_from={self.init_from!r} names the model"} if self.init_from != "resume" else {}
        if self.temperature == 0:
            out.update(dict.fromkeys(("top_k", "top_p", "seed"), "temperature=0 always picks the most likely token"))
        return out


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
    model, described, ckpt = checkpoint.load_model(cfg.init_from, cfg.out_dir)
    if ckpt is not None:
        print(f"loaded {described}", file=sys.stderr)
    return model


def main(argv, out=sys.stdout):
    cfg = load_config(SampleConfig, argv, foreign=TrainConfig)
    for note in no_effect_notes(cfg):
        print(note, file=sys.stderr)
    enc = gpt2_encoding()
    prompt = read_prompt(cfg.start)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg).to(device).eval()
    ids = [EOT] + enc.encode(prompt, allowed_special={"<|endoftext|>"})
    context = model.config.block_size
    if len(ids) + 1 > context:  # the model sees its last block_size tokens only: say so once, not silently
        print(f"note: the prompt is {len(ids) - 1:,} tokens and the model's context is {context}: it sees only the "
              f"last {context - 1} of them (and of what it writes)", file=sys.stderr)
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    stream = StreamDecoder(enc, out)
    for _ in range(cfg.num_samples):
        out.write(prompt)
        on_token = stream
        if cfg.stop_at_eot:
            on_token = lambda t: None if t == EOT else stream(t)  # the document boundary is not printed
        with autocast(device, dtype):
            result = model.generate(idx, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None,
                                    top_p=cfg.top_p, eot_token=EOT if cfg.stop_at_eot else None,
                                    use_cache=cfg.use_cache, on_token=on_token, sample_vocab_size=VOCAB_SIZE)
        stream.finish()
        new = result.size(1) - idx.size(1)
        ended = cfg.stop_at_eot and result[0, -1].item() == EOT
        why = (f"the model ended the document (<|endoftext|>) after {new - 1} tokens" if ended
               else f"{new} tokens (max_new_tokens)")
        out.write(f"\n{SEPARATOR} {why}\n")
        out.flush()


if __name__ == "__main__":
    sys.exit(run_command(main))
