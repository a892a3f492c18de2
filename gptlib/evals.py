"""Evaluation: validation loss on token shards, HellaSwag, and code loss on HumanEval.

Every function takes the model and a device/autocast context and returns plain numbers,
so train.py (during training) and eval.py (on a checkpoint) share one implementation.
Pass the raw module, not the torch.compile'd one: the HellaSwag and HumanEval batches
have varying shapes and would make a compiled model recompile.
"""
import math
from dataclasses import dataclass

import numpy as np
import torch

from . import shards
from .attention import padded_length
from .errors import ConfigError
from .loader import TokenLoader

HELLASWAG_BATCH_ITEMS = 8  # items scored together (x 4 endings = rows of up to block_size tokens)
HUMANEVAL_BATCH_ROWS = 4  # HumanEval rows scored together


def _distributed(world_size):
    """Whether results are combined across ranks: only when the caller says world_size > 1,
    so that one evaluating on rank 0 alone under DDP (world_size=1) never waits for the others.
    Without torch.distributed each rank's own result is returned."""
    return world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values, device, world_size):
    """Sum a list of numbers across ranks (see _distributed)."""
    if not _distributed(world_size):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


class _eval_mode:
    """model.eval() inside the block, then the previous train/eval mode back."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.was_training = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


# ----------------------------------------------------------------------------- loss on shards

@dataclass
class SplitLoss:
    """A split's mean loss over the windows scored, how many tokens that is, and the standard error of the
    mean (the spread of the per-window losses / sqrt(windows)): how far the figure may sit from the whole
    split's loss. One window has no spread to measure: stderr None, shown as '±n/a (1 window)'."""
    loss: float
    tokens: int
    windows: int
    stderr: float | None

    def __float__(self):
        return self.loss

    def plus_minus(self):
        return f"±{self.stderr:.4f}" if self.stderr is not None else "±n/a (1 window)"


def eval_windows(total_tokens, block_size, max_tokens=0):
    """Start offsets of the windows (block_size inputs + 1 target) an eval scores: every window of the split
    when max_tokens is 0 or covers it, else max_tokens // block_size of them at even strides over the whole
    split (never its first batches alone: on github-code those are one or two repositories; issue 19). The
    same windows at every call, so the evals of a run compare."""
    whole = (total_tokens - 1) // block_size  # non-overlapping windows; -1: the last target needs one more token
    n = whole if not max_tokens else min(whole, max(1, max_tokens // block_size))
    return [(i * whole // n) * block_size for i in range(n)]


# Evals run under no_grad, not inference_mode: under sharding='fsdp' FSDP2 gathers the weights inside the eval's
# forward, and inference tensors there could not be updated by training afterwards.
@torch.no_grad()
def window_losses(model, loader, starts, batch_size, block_size, device, autocast_ctx, window=None):
    """(windows done, mean loss of each window in the batch (B,) float64 on the device), batch_size windows of
    block_size inputs at a time, read from loader (an unshuffled 'stream' TokenLoader) at token offsets starts.
    window: the attention window a run has grown to (model.GPT.forward's; None: the model's own)."""
    with _eval_mode(model):
        full = _flex_shapes(model, device)  # a last short batch is filled up: compiled FlexAttention sees one shape
        for b in range(0, len(starts), batch_size):
            batch = starts[b:b + batch_size]
            batch = batch + batch[-1:] * ((batch_size - len(batch)) if full else 0)
            rows = np.stack([loader.read_tokens(s, block_size + 1) for s in batch])  # (B, T+1)
            x = torch.from_numpy(rows[:, :-1]).to(device, non_blocking=True)  # inputs (B, T)
            y = torch.from_numpy(rows[:, 1:]).to(device, non_blocking=True)  # targets shifted by one (B, T)
            with autocast_ctx:
                per_window = model.token_losses(x, y, window=window).double().mean(dim=1)  # (B, T) -> (B,)
            yield min(b + batch_size, len(starts)), per_window[:len(starts[b:b + batch_size])]


@torch.no_grad()
def split_loss(model, data_dir, split, batch_size, block_size, max_tokens, device, autocast_ctx,
               rank=0, world_size=1, verify=True, progress=None, window=None):
    """Mean cross-entropy per token over eval_windows(split, block_size, max_tokens), batch_size windows at a
    time, as a SplitLoss. Under DDP (call it on every rank) rank r scores windows r, r + world, ... and the
    sums are combined, so every rank returns the same figure. progress(done, total) after each batch."""
    total_tokens = sum(shards.shard_lengths(shards.list_shards(data_dir, split)))
    starts = eval_windows(total_tokens, block_size, max_tokens)
    if not starts:
        raise shards.DataError(f"split '{split}' in {data_dir} has {total_tokens:,} tokens, fewer than one "
                               f"window of block_size+1 = {block_size + 1}; lower block_size or prepare more data")
    loader = TokenLoader(data_dir, split, 1, block_size, shuffle=False, verify=verify)
    mine = starts[rank::world_size]
    # every rank scores as many windows (repeating its last one, not counted): each forward is a collective under
    # sharding='fsdp', so a rank with one window less would leave the others waiting for it
    real, padded = len(mine), mine + (mine or starts)[-1:] * (-(-len(starts) // world_size) - len(mine))
    stats = torch.zeros(2, dtype=torch.float64, device=device)  # sum and sum of squares of window losses, on the device
    for done, per_window in window_losses(model, loader, padded, batch_size, block_size, device, autocast_ctx, window):
        per_window = per_window[:max(0, real - (done - len(per_window)))]  # the padding's windows are not counted
        stats += torch.stack([per_window.sum(), per_window.square().sum()])
        if progress:
            progress(min(done, real), real)
    total, total_sq = _all_reduce_sum(stats.tolist(), device, world_size)
    n = len(starts)
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return SplitLoss(loss=mean, tokens=n * block_size, windows=n, stderr=math.sqrt(var / n) if n > 1 else None)


# ----------------------------------------------------------------------------- several validation sets

def val_split_names(data_dir):
    """The validation splits of a shard directory: 'val' and any 'val-*' ('val-python', ...)."""
    return [s for s in shards.list_splits(data_dir) if s == "val" or s.startswith("val-")]


def parse_val_sets(specs, default_data_dir):
    """Turn val_sets specs into [(name, data_dir, split)].

    A spec is "split" (a split of default_data_dir) or "DIR:split" (a split of another
    shard directory, e.g. "data/code:val-python"). The name reported in logs is the spec
    itself, so it is also what primary_val must be set to.
    """
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise ConfigError("val_sets is empty; give at least one validation split, e.g. --val_sets=val")
    out, seen = [], set()
    for spec in specs:
        spec = spec.strip()
        data_dir, sep, split = spec.rpartition(":")  # rpartition: DIR may itself hold ':' (C:\...)
        data_dir = data_dir if sep else default_data_dir
        if not split or not data_dir:
            raise ConfigError(f"val_sets entry {spec!r} is malformed; write 'split' or 'DIR:split', e.g. 'val' or 'data/code:val-python'")
        if spec in seen:
            raise ConfigError(f"val_sets lists {spec!r} twice; remove the duplicate")
        seen.add(spec)
        if not shards.list_shards(data_dir, split):  # raises DataError if data_dir is missing
            have = ", ".join(shards.list_splits(data_dir)) or "none"
            raise shards.DataError(f"val_sets entry {spec!r}: no '{split}' shards in {data_dir} (splits there: {have}); "
                                   f"fix the name or prepare that split")
        out.append((spec, data_dir, split))
    return out


def check_primary_val(primary_val, val_sets):
    """The name of the val set that ckpt_best.pt follows: primary_val, which must be one of
    the parsed val_sets' names, or the first of them when primary_val is ''."""
    names = [name for name, _, _ in val_sets]
    if not primary_val:
        return names[0]
    if primary_val not in names:
        raise ConfigError(f"primary_val={primary_val!r} is not one of val_sets {names}; set --primary_val to one of them")
    return primary_val


def eval_val_sets(model, val_sets, batch_size, block_size, max_tokens, device, autocast_ctx, rank=0, world_size=1,
                  verify=True, window=None):
    """{name: SplitLoss} over the parsed val_sets (see parse_val_sets)."""
    return {name: split_loss(model, data_dir, split, batch_size, block_size, max_tokens, device, autocast_ctx,
                             rank=rank, world_size=world_size, verify=verify, window=window)
            for name, data_dir, split in val_sets}


def evals_of_run(model, cfg, it, val_sets, hellaswag_items, device, autocast_ctx, rank, world_size, window):
    """The evals of a training run at iteration it, on the raw model (train.py): ({name: SplitLoss} of every val
    set, {'val/NAME': loss, 'hellaswag/acc_norm': ..., 'humaneval/loss': ...} for the logs and trackers).
    HellaSwag and HumanEval run when `it` is a multiple of their intervals."""
    scored = eval_val_sets(model, val_sets, cfg.eval_batch_size or cfg.batch_size, cfg.block_size, cfg.eval_tokens,
                           device, autocast_ctx, rank, world_size, verify=cfg.verify_data, window=window)
    record = {f"val/{k}": r.loss for k, r in scored.items()}
    if cfg.hellaswag_interval and it % cfg.hellaswag_interval == 0:
        record["hellaswag/acc_norm"] = hellaswag(model, device, autocast_ctx, items=hellaswag_items,
                                                 limit=cfg.hellaswag_limit or None, rank=rank, world_size=world_size,
                                                 window=window)["acc_norm"]
    if cfg.humaneval_interval and it % cfg.humaneval_interval == 0:
        record["humaneval/loss"] = humaneval(model, device, autocast_ctx, cfg.humaneval_path, rank=rank,
                                             world_size=world_size, window=window)["loss"]
    return scored, record


# ----------------------------------------------------------------------------- scoring token spans

def _window(context, continuation, block_size):
    """One row scoring `continuation` given `context`, cut to fit the model.

    Returns (inputs, targets, mask): inputs and targets are the sequence shifted by one
    and mask is 1 where the target is a continuation token. A sequence longer than
    block_size + 1 loses its *left* end (oldest context first), as the model would
    never see it anyway.
    """
    tokens = (context + continuation)[-(block_size + 1):]
    mask = ([0] * len(context) + [1] * len(continuation))[-(block_size + 1):]
    return tokens[:-1], tokens[1:], mask[1:]


def _strided_windows(context, continuation, block_size):
    """Rows that together score every continuation token, however long it is.

    Each window holds up to block_size inputs and scores the targets not scored by the
    previous window; a stride of half a block keeps at least block_size/2 tokens of
    context for every scored token (the strided perplexity of the HF transformers docs).
    """
    tokens = context + continuation
    first = max(len(context), 1)  # index of the first token to score; token 0 has no context
    stride = max(block_size // 2, 1)
    rows = []
    start = first
    while start < len(tokens):
        end = min(start + stride, len(tokens))  # score targets tokens[start:end]
        lo = max(0, end - 1 - block_size)  # inputs tokens[lo:end-1]
        inputs, targets = tokens[lo:end - 1], tokens[lo + 1:end]
        mask = [1 if lo + 1 + i >= start else 0 for i in range(len(targets))]
        rows.append((inputs, targets, mask))
        start = end
    return rows


@torch.no_grad()  # (see window_losses)
def _flex_shapes(model, device):
    """Whether the model's forward goes through compiled FlexAttention on device, so that evals keep to a few
    input shapes (one compiled graph each: issue 36)."""
    return hasattr(model, "uses_flex") and model.uses_flex(torch.device(device))


def _row_losses(model, rows, device, autocast_ctx, batch_rows, progress=None, window=None, full_batch=None, limit=None):
    """Summed cross-entropy and token count of the masked targets of each row.

    Rows are right-padded to the longest row of their batch; with causal attention the padding cannot change the
    logits of the real tokens, and the mask drops its targets. Through compiled FlexAttention a batch is padded to
    one of a few lengths up to limit (attention.padded_length) and to full_batch rows, so every batch is one of
    a few shapes.
    """
    sums, counts = [], []
    flex = _flex_shapes(model, device)
    for b in range(0, len(rows), batch_rows):
        batch = rows[b:b + batch_rows]
        longest = max(len(r[0]) for r in batch)
        T = padded_length(longest, limit or longest, flex)
        n = max(len(batch), full_batch or 0) if flex else len(batch)
        x = torch.zeros(n, T, dtype=torch.long)
        y = torch.zeros(n, T, dtype=torch.long)
        m = torch.zeros(n, T, dtype=torch.bool)
        for i, (inputs, targets, mask) in enumerate(batch):
            n = len(inputs)
            x[i, :n] = torch.tensor(inputs)
            y[i, :n] = torch.tensor(targets)
            m[i, :n] = torch.tensor(mask, dtype=torch.bool)
        x, y, m = x.to(device), y.to(device), m.to(device)
        with autocast_ctx:  # per-position losses in chunks: never (B, T, vocab) logits (issue 12)
            per_row = model.token_losses(x, y.masked_fill(~m, -1), window=window).sum(dim=1)  # (B, T) -> (B,)
        sums += per_row[:len(batch)].tolist()
        counts += m.sum(dim=1)[:len(batch)].tolist()
        if progress:
            progress(b + len(batch), len(rows))
    return sums, counts


def _block_size(model, block_size):
    return block_size or model.config.block_size


# ----------------------------------------------------------------------------- HellaSwag

HELLASWAG_HUB_DATASET = "Rowan/hellaswag"  # Hugging Face copy of rowanz/hellaswag, used when no path is given
HELLASWAG_ENDINGS = 4  # every HellaSwag item has four candidate endings


def read_jsonl(path, what, expected, opener=open):
    """The JSON objects of a jsonl file, naming the file's line where one is not JSON."""
    import json
    items = []
    try:
        with opener(path, "rt") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except ValueError as e:
                        raise shards.DataError(f"{what} file {path} line {number} is not valid JSON ({getattr(e, 'msg', e)}); give "
                                               f"the path of {expected}") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise shards.DataError(f"cannot read {what} file {path} ({e}); give the path of {expected}") from None
    return items


def load_hellaswag(path=None):
    """HellaSwag validation items as dicts with ctx (str), endings (4 str), label (int).

    path: a jsonl file in the original rowanz/hellaswag format. Without a path the
    validation split is fetched from the Hugging Face hub (needs the network once).
    """
    if path is None:
        try:
            import datasets
            rows = datasets.load_dataset(HELLASWAG_HUB_DATASET, split="validation")
        except Exception as e:  # offline, hub down, or a datasets version that cannot read it
            raise shards.DataError(f"could not download HellaSwag from the hub ({type(e).__name__}: {str(e)[:200]}); "
                                   f"pass a local hellaswag_val.jsonl with --hellaswag_path") from None
        items = [{"ctx": r["ctx"], "endings": list(r["endings"]), "label": int(r["label"])} for r in rows]
    else:
        items = read_jsonl(path, "HellaSwag", "hellaswag_val.jsonl")
    for k, item in enumerate(items):
        if not isinstance(item, dict) or not all(key in item for key in ("ctx", "endings", "label")) \
                or len(item["endings"]) != HELLASWAG_ENDINGS:
            raise shards.DataError(f"HellaSwag item {k} of {path or HELLASWAG_HUB_DATASET} lacks ctx/label or 4 endings; "
                                   f"give a file in the rowanz/hellaswag jsonl format")
        item["label"] = int(item["label"])
    return items


def hellaswag_predict(sums, counts):
    """From the summed loss and token count of each item's 4 endings, (B, 4) tensors,
    the predictions (pred, pred_norm): argmin of summed loss, argmin of mean loss per
    ending token. The mean favours no ending for being short (HellaSwag paper §5)."""
    pred = sums.argmin(dim=1)
    pred_norm = (sums / counts).argmin(dim=1)
    return pred, pred_norm


def hellaswag(model, device, autocast_ctx, path=None, limit=None, batch_items=HELLASWAG_BATCH_ITEMS, rank=0, world_size=1,
              block_size=None, items=None, progress=None, window=None):
    """Completion-style HellaSwag accuracy, as in the published GPT-2 / GPT-3 small-model numbers.

    For each item every ending (with a leading space) is appended to the context and the
    ending's tokens are scored; acc picks the ending with the least summed loss, acc_norm
    the least mean loss per token. Contexts too long for the model are left-truncated.
    Under DDP rank r scores items r, r+world, ... and the counts are summed over ranks.
    Pass the raw model, not a torch.compile'd one (batch shapes vary). progress(done, total): after each batch.
    Reference acc_norm: GPT-2 124M 0.2955, GPT-3 Small 0.337.
    """
    if items is None:
        items = load_hellaswag(path)
    items = items[:limit] if limit is not None else items
    mine = items[rank::world_size]
    enc = shards.gpt2_encoding()
    T = _block_size(model, block_size)
    correct = correct_norm = correct_chars = 0
    with _eval_mode(model):
        for b in range(0, len(mine), batch_items):
            batch = mine[b:b + batch_items]
            rows = []
            for item in batch:
                ctx = enc.encode(item["ctx"])
                rows += [_window(ctx, enc.encode(" " + ending), T) for ending in item["endings"]]
            sums, counts = _row_losses(model, rows, device, autocast_ctx, len(rows), window=window,
                                       full_batch=batch_items * HELLASWAG_ENDINGS, limit=T)
            sums = torch.tensor(sums).view(-1, HELLASWAG_ENDINGS)  # (items, 4)
            counts = torch.tensor(counts, dtype=torch.float).view(-1, HELLASWAG_ENDINGS)
            pred, pred_norm = hellaswag_predict(sums, counts)
            labels = torch.tensor([item["label"] for item in batch])
            correct += int((pred == labels).sum())
            correct_norm += int((pred_norm == labels).sum())
            chars = torch.tensor([[float(len(e)) for e in item["endings"]] for item in batch])  # (items, 4)
            correct_chars += int(((sums / chars).argmin(dim=1) == labels).sum())
            if progress:
                progress(b + len(batch), len(mine))
    n = len(mine)
    n, correct, correct_norm, correct_chars = (int(v) for v in _all_reduce_sum([n, correct, correct_norm, correct_chars],
                                                                                 device, world_size))
    # acc_norm divides by the ending's tokens (Karpathy's hellaswag.py); acc_norm_chars by its characters, as
    # lm-evaluation-harness does, so the two tools' figures can be compared
    return {"acc": correct / max(n, 1), "acc_norm": correct_norm / max(n, 1), "acc_norm_chars": correct_chars / max(n, 1),
            "n": n}


# ----------------------------------------------------------------------------- code: HumanEval

def load_humaneval(path):
    """HumanEval problems (dicts with prompt and canonical_solution) from HumanEval.jsonl(.gz)."""
    import gzip
    items = read_jsonl(path, "HumanEval", "HumanEval.jsonl.gz", gzip.open if str(path).endswith(".gz") else open)
    for k, item in enumerate(items):
        if not isinstance(item, dict) or "prompt" not in item or "canonical_solution" not in item:
            raise shards.DataError(f"HumanEval item {k} of {path} lacks prompt/canonical_solution; "
                                   f"give openai/human-eval's HumanEval.jsonl.gz")
    return items


def humaneval(model, device, autocast_ctx, path, limit=None, batch_rows=HUMANEVAL_BATCH_ROWS, rank=0, world_size=1,
              block_size=None, progress=None, window=None):
    """Loss and perplexity of HumanEval's canonical solutions given their prompts.

    loss = summed cross-entropy over all solution tokens / number of solution tokens
    (prompt and solution are tokenized separately, so the count is that of the solutions).
    A solution that does not fit in one block is scored with overlapping windows.
    Pass the raw model, not a torch.compile'd one (shapes vary).
    """
    items = load_humaneval(path)
    items = items[:limit] if limit is not None else items
    mine = items[rank::world_size]
    enc = shards.gpt2_encoding()
    T = _block_size(model, block_size)
    rows = []
    for item in mine:
        rows += _strided_windows(enc.encode(item["prompt"]), enc.encode(item["canonical_solution"]), T)
    with _eval_mode(model):
        sums, counts = _row_losses(model, rows, device, autocast_ctx, batch_rows, progress, window, batch_rows, T)
    total, tokens, n = _all_reduce_sum([sum(sums), sum(counts), len(mine)], device, world_size)
    loss = total / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(loss), "n": int(n), "tokens": int(tokens)}
