"""Evaluation: validation loss on token shards, HellaSwag, and code loss on HumanEval.

Every function takes the model and a device/autocast context and returns plain numbers,
so train.py (during training) and eval.py (on a checkpoint) share one implementation.
Pass the raw module, not the torch.compile'd one: the HellaSwag and HumanEval batches
have varying shapes and would make a compiled model recompile.
"""
import math

import torch
import torch.nn.functional as F

import shards


def _ddp_active():
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_sum(values, device):
    """Sum a list of floats across ranks (no-op without torch.distributed)."""
    if not _ddp_active():
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

def num_eval_batches(total_tokens, batch_size, block_size, eval_iters, world_size=1):
    """How many whole batches eval reads: eval_iters, or fewer if the split is small.
    The split is never wrapped around, so a small val set is not counted twice."""
    per_step = world_size * batch_size * block_size
    return min(eval_iters, (total_tokens - 1) // per_step)  # -1: the last target needs one extra token


@torch.inference_mode()
def split_loss(model, data_dir, split, batch_size, block_size, eval_iters, device, autocast_ctx,
               rank=0, world_size=1):
    """Mean cross-entropy over the first eval_iters batches of a split.

    The batches are the same at every call (read in order from the start of the split,
    no shuffling), so successive evals during training are comparable. Under DDP each
    rank reads its own slice of each batch and the result is averaged over ranks.
    """
    loader = shards.TokenLoader(data_dir, split, batch_size, block_size, rank=rank,
                                world_size=world_size, shuffle=False)
    n = num_eval_batches(loader.total_tokens, batch_size, block_size, eval_iters, world_size)
    total = 0.0
    with _eval_mode(model):
        for _ in range(n):
            x, y = loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast_ctx:
                _, loss = model(x, y)
            total += loss.float().item()
    loss = total / n
    if _ddp_active():  # every rank read n batches, so the mean over ranks is the mean over all
        (loss,) = _all_reduce_sum([loss], device)
        loss /= torch.distributed.get_world_size()
    return loss
