"""Evaluate a checkpoint (or OpenAI's GPT-2) on token shards, HellaSwag and HumanEval.

    python eval.py --out_dir=out                                   # every val* split of the training data
    python eval.py --out_dir=out --data_dir=data/code --split=val-python
    python eval.py --init_from=gpt2 --data_dir=data/fineweb --hellaswag --hellaswag_path=hellaswag_val.jsonl
    python eval.py --out_dir=out --humaneval --humaneval_path=HumanEval.jsonl.gz

Losses are mean cross-entropy in nats per token over the whole split by default (--max_tokens=N: N tokens in
windows at even strides, as train.py's eval_tokens), with the standard error of the mean; perplexity is exp(loss).
"""
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import ClassVar

from gptlib import evals, paths, shards
from gptlib import checkpoint
from gptlib.checkpoint import init_from_problem
from gptlib.errors import ConfigError, DataError, run_command
from gptlib import runtime
from gptlib.runtime import autocast, pick_device, pick_dtype
from gptlib.settings import DEVICE_PATTERN, DTYPES, MAX_CPU_THREADS, load_config, no_effect_notes, setting
from gptlib.train_settings import NANOGPT_EVAL, TrainConfig


@dataclass
class EvalConfig:
    NANOGPT: ClassVar[dict] = NANOGPT_EVAL  # nanoGPT's eval_iters and eval_only, translated
    init_from: str = setting("resume")  # 'resume' (out_dir's checkpoint), OpenAI's 'gpt2', 'gpt2-medium', 'gpt2-large', 'gpt2-xl', or a checkpoint file (.pt, nanoGPT's too)
    out_dir: str = setting(TrainConfig.out_dir)  # where ckpt_best.pt (preferred) or ckpt.pt is read from; a train config file sets it
    ckpt: str = setting("")  # a checkpoint file to read instead of out_dir's
    data_dir: str = setting("")  # shard directory; '': the data_dir the checkpoint was trained on
    split: str = setting("")  # split(s) of data_dir to evaluate, comma-separated; '': every val* split there
    max_tokens: int = setting(0, ge=0)  # tokens scored per split, in block_size windows at even strides over it; 0: the whole split
    batch_size: int = setting(8, ge=1)  # windows per forward pass (memory, not the result)
    block_size: int = setting(0, ge=0)  # tokens per sequence; 0: the model's context length
    hellaswag: bool = setting(False)  # also run HellaSwag (acc and acc_norm)
    hellaswag_path: str = setting("")  # HellaSwag jsonl; '': download the validation split from the Hugging Face hub
    hellaswag_limit: int = setting(0, ge=0)  # only the first N HellaSwag items (0: all 10,042)
    humaneval: bool = setting(False)  # also compute the loss of HumanEval's canonical solutions
    humaneval_path: str = setting("")  # HumanEval.jsonl.gz (openai/human-eval); required with --humaneval
    humaneval_limit: int = setting(0, ge=0)  # only the first N HumanEval problems (0: all 164)
    json_out: str = setting("", path="file")  # also write the results to this JSON file
    device: str = setting("auto", pattern=DEVICE_PATTERN)  # 'auto', 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = setting("auto", choices=DTYPES)  # 'auto', 'float32', 'bfloat16', 'float16'
    cpu_threads: int = setting(0, ge=0, le=MAX_CPU_THREADS)  # threads torch uses on CPU; 0: torch's default, one per core
    verify_data: bool = setting(True)  # check each shard against manifest.json's checksum before scoring it

    def problems(self):
        out = ["--humaneval needs --humaneval_path=.../HumanEval.jsonl.gz"] if self.humaneval and not self.humaneval_path else []
        if self.ckpt and self.init_from != "resume":  # one would be ignored: say so instead (issue 28)
            out.append(f"--ckpt={self.ckpt} and --init_from={self.init_from} both name a model; give one of them")
        return out + [p for p in [init_from_problem(self.init_from)] if p]

    def no_effect(self):
        """Settings this command ignores, setting -> why (settings.no_effect_notes)."""
        out = {"out_dir": f"init_from={self.init_from!r} names the model"} if self.init_from != "resume" or self.ckpt else {}
        if not self.hellaswag:
            out.update(dict.fromkeys(("hellaswag_path", "hellaswag_limit"), "HellaSwag runs with --hellaswag"))
        if not self.humaneval:
            out.update(dict.fromkeys(("humaneval_path", "humaneval_limit"), "HumanEval runs with --humaneval"))
        return out


def load_model(cfg):
    """(model, description, checkpoint training config or {})."""
    model, described, ckpt = checkpoint.load_model(cfg.init_from, cfg.out_dir, cfg.ckpt)
    return model, described, (ckpt or {}).get("config", {})


def shard_splits(cfg, train_config):
    """(data_dir, [split, ...]) to evaluate, checked to exist; (None, []) if there is nothing to do."""
    data_dir = cfg.data_dir or train_config.get("data_dir", "")
    if not data_dir:
        if cfg.split:
            raise ConfigError("--split needs --data_dir (the model has no training data_dir to default to)")
        return None, []
    if not os.path.isdir(data_dir):
        raise DataError(f"data_dir {data_dir!r} does not exist; pass --data_dir=DIR of token shards")
    if cfg.split:
        splits = [s for s in cfg.split.split(",") if s]
        for s in splits:
            if not shards.list_shards(data_dir, s):
                have = ", ".join(shards.list_splits(data_dir)) or "none"
                raise DataError(f"no '{s}' shards in {data_dir} (splits there: {have}); fix --split")
    else:
        splits = evals.val_split_names(data_dir)
        if not splits:
            have = ", ".join(shards.list_splits(data_dir)) or "none"
            raise DataError(f"no val* splits in {data_dir} (splits there: {have}); pick one with --split")
    return data_dir, splits


def check_json_out(path):
    """--json_out replaces only an earlier result of eval.py: never the checkpoint being evaluated, a run's
    config.json or a dataset's manifest (issue 28: --json_out=OUT/ckpt.pt replaced the checkpoint, exit 0)."""
    if not path or not os.path.exists(path):
        return
    try:
        with open(path, "rb") as f:
            earlier = json.loads(f.read(1 << 24))
    except (OSError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and {"model", "results"} <= set(earlier)):
        raise ConfigError(f"--json_out={path} exists and is not a result of eval.py, which it would replace; "
                          f"give a new file, {paths.elsewhere(path, os.path.splitext(path)[0] + '-eval.json', 'json_out')}")


def check_finite(what, loss, dtype, described):
    """A loss that is NaN/inf is exit 1 with one line, never a result (issue 37)."""
    if not math.isfinite(loss):
        fix = ("run it in float32 with --dtype=float32" if dtype != "float32" else
               "its weights are finite, so its activations overflow: use another checkpoint of the run")
        raise DataError(f"the {what} of {described} is {loss}: the model's outputs are not finite numbers; {fix}")


def run(cfg):
    check_json_out(cfg.json_out)
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    model, described, train_config = load_model(cfg)
    data_dir, splits = shard_splits(cfg, train_config)
    if not splits and not cfg.hellaswag and not cfg.humaneval:
        raise ConfigError("nothing to evaluate: pass --data_dir, --hellaswag or --humaneval")
    # read the eval sets before any long computation, so a bad path fails at once
    hellaswag_items = evals.load_hellaswag(cfg.hellaswag_path or None) if cfg.hellaswag else None
    if cfg.humaneval:
        evals.load_humaneval(cfg.humaneval_path)
    block_size = cfg.block_size or model.config.block_size
    if block_size > model.config.block_size:
        raise ConfigError(f"--block_size={block_size} exceeds the model's context of {model.config.block_size}; lower it")
    model.to(device)
    ctx = autocast(device, dtype)
    threads = runtime.cpu_threads(cfg.cpu_threads)
    where = device if device != "cpu" else f"cpu ({threads} torch threads)"
    print(f"model: {described}, {model.get_num_params() / 1e6:.2f}M parameters, on {where} in {dtype}")

    results = {}

    def bar(what):
        """A progress bar on stderr for one evaluation (on a terminal; tqdm switches itself off elsewhere)."""
        from tqdm import tqdm
        state = {}

        def update(done, total):
            if "bar" not in state:
                state["bar"] = tqdm(total=total, desc=what, unit="batch", leave=False, file=sys.stderr,
                                    mininterval=1.0, disable=None)
            state["bar"].update(done - state["bar"].n)
            if done >= total:
                state["bar"].close()
        return update

    skipped = []
    for split in splits:
        total = sum(shards.shard_lengths(shards.list_shards(data_dir, split)))
        if not evals.eval_windows(total, block_size) and not cfg.split:  # found, not asked for: a tiny language's set
            skipped.append(f"{split} ({total:,})")
            continue
        r = evals.split_loss(model, data_dir, split, cfg.batch_size, block_size, cfg.max_tokens, device, ctx,
                             verify=cfg.verify_data, progress=bar(split))
        check_finite(f"loss on {split}", r.loss, dtype, described)
        results[split] = {"loss": r.loss, "ppl": math.exp(r.loss), "tokens": r.tokens, "stderr": r.stderr,
                          "split_tokens": total}
        share = "the whole split" if r.tokens >= (total - 1) // block_size * block_size else \
            f"{r.windows:,} window{'' if r.windows == 1 else 's'} of {block_size} at even strides over {total:,}"
        print(f"{split:<16} loss {r.loss:.4f} {r.plus_minus()}  ppl {math.exp(r.loss):10.2f}  "
              f"({r.tokens:,} tokens scored: {share}, from {data_dir})")
    if skipped:
        print(f"skipped {len(skipped)} split(s) shorter than one window of {block_size + 1} tokens: {', '.join(skipped)} "
              f"(pass --split=NAME with a smaller --block_size to evaluate one)")
    if splits and not results and not cfg.hellaswag and not cfg.humaneval:
        raise DataError(f"nothing was evaluated: every split of {data_dir} is shorter than one window of "
                        f"{block_size + 1} tokens; pass --block_size=N smaller than the splits")
    if cfg.hellaswag:
        r = evals.hellaswag(model, device, ctx, items=hellaswag_items, limit=cfg.hellaswag_limit or None,
                            progress=bar("hellaswag"))
        results["hellaswag"] = r
        print(f"{'hellaswag':<16} acc {r['acc']:.4f}  acc_norm {r['acc_norm']:.4f}  ({r['n']} items; acc_norm per "
              f"character, as lm-eval computes it: {r['acc_norm_chars']:.4f})")
    if cfg.humaneval:
        r = evals.humaneval(model, device, ctx, cfg.humaneval_path, limit=cfg.humaneval_limit or None,
                            progress=bar("humaneval"))
        check_finite("HumanEval loss", r["loss"], dtype, described)
        results["humaneval"] = r
        print(f"{'humaneval':<16} loss {r['loss']:.4f}  ppl {r['ppl']:10.2f}  "
              f"({r['n']} problems, {r['tokens']} solution tokens)")
    if cfg.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.json_out)), exist_ok=True)
        shards.write_json_atomic(cfg.json_out, {"model": described, "config": asdict(cfg), "results": results})
    return results


def main(argv):
    cfg = load_config(EvalConfig, argv, foreign=TrainConfig)
    for note in no_effect_notes(cfg):
        print(note, file=sys.stderr)
    run(cfg)


if __name__ == "__main__":
    sys.exit(run_command(main))
