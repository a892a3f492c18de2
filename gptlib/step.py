"""The training step, once: train.py runs it, bench.py times it, the tests compare the two.

One optimizer step = grad_accum micro-steps (forward and backward of one micro-batch each, gradients accumulating,
all-reduced once on the last under DDP) + the update (unscale, clip, optimizer step or a skipped one, zero_grad).
"""
import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import head_loss, optim, runtime


@dataclass
class StepResult:
    loss: float  # the step's mean loss over its micro-batches (and ranks)
    norm: float  # the gradient norm before clipping
    skipped: bool  # the update was skipped: a NaN/inf loss or norm, or a spike (the optimizer state is untouched)


class TrainStep:
    """The step of one run: the wrapped model (runtime.wrap_model), its optimizer and loss scaler, the autocast
    context, and the settings that shape the step (grad_clip, spike_factor, fp8_head). micro_tokens: the tokens of
    one micro-step on all ranks (batch_size x block_size x GPUs): a step of values.tokens makes
    values.tokens / micro_tokens of them (the batch-size schedule moves it). timer: a clock read after each
    micro-step and after the update (bench.py's phases; synchronise the device in it), or None."""

    def __init__(self, wrapped, optimizer, scaler, ctx, cfg, dtype, micro_tokens, timer=None):
        self.wrapped, self.optimizer, self.scaler, self.ctx = wrapped, optimizer, scaler, ctx
        self.cfg, self.dtype, self.micro_tokens, self.timer = cfg, dtype, micro_tokens, timer
        self.device = next(wrapped.raw.parameters()).device
        self.marks = []  # timer readings of the last step: one per micro-step, then one after the update

    def __call__(self, next_batch, values, loss_ema=None, micro_steps=None):
        """One optimizer step at the scheduled values (schedules.StepValues). next_batch() gives the next
        micro-batch on the device; it is called for the next one while this one computes, never across a step,
        so a checkpoint's data position stays exact. loss_ema: the running mean loss, for spike detection.
        micro_steps: fewer micro-steps than the step's tokens make (bench.py times part of a step)."""
        self.marks = []
        return self.update(self.accumulate(next_batch, values, micro_steps), loss_ema)

    def accumulate(self, next_batch, values, micro_steps=None):
        """The step's micro-steps at the scheduled values: gradients accumulate; returns the summed loss."""
        optim.apply_schedule(self.optimizer, values, self.cfg)
        n = micro_steps or values.tokens // self.micro_tokens
        loss_sum = torch.zeros((), device=self.device)
        x, y = next_batch()
        for micro in range(n):
            last = micro == n - 1
            loss_sum += self._micro(x, y, self._forward_args(values), values.seq_len, n, last)
            if not last:
                x, y = next_batch()
            self._mark()
        return loss_sum

    def _forward_args(self, values):
        """The scheduled values the forward takes, as tensors (a compiled model makes no new graph as they move):
        the window, and the MTP weights while more than the next token is predicted; none a model does not use."""
        args = {"window": torch.tensor(values.window, device=self.device)} if values.window else {}
        if len(values.mtp) > 1:
            args["mtp"] = torch.tensor(values.mtp, device=self.device)
        return args

    def update(self, loss_sum, loss_ema=None):
        """The step's update after its micro-steps: the optimizer steps, or skips a bad step (its gradients dropped)."""
        loss, norm = self._reduce(loss_sum)
        skipped = self._bad(loss, norm, loss_ema)
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.update()
        else:
            self.optimizer.step(self.scaler)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
        self._mark()
        return StepResult(loss, norm, skipped)

    def _micro(self, x, y, forward_args, seq_len, n, last):
        """Forward and backward of one micro-batch of n, read as rows of seq_len tokens; its share of the step's
        loss (detached)."""
        w = self.wrapped
        if seq_len and seq_len < x.size(1):  # the sequence-length schedule: (B, T) -> (B * T / seq_len, seq_len)
            x, y = x.view(-1, seq_len), y.view(-1, seq_len)
        # fsdp reduce-scatters every micro-step: accumulating whole gradients would undo its memory saving
        sync = w.ddp.no_sync() if w.ddp is not None and not last else contextlib.nullcontext()
        with sync:  # gradients are all-reduced once per step, on the last micro-step
            with self.ctx, head_loss.fp8(self.cfg.fp8_head):
                loss = w.model(x, y, **forward_args)[1] / n
            self.scaler.scale(loss).backward()
        return loss.detach()

    def _reduce(self, loss_sum):
        """(the step's loss, the gradient norm), averaged over ranks, after unscaling and clipping."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        self.optimizer.unscale_(self.scaler)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.wrapped.raw.parameters(), clip)
        norm = norm.full_tensor() if self.wrapped.fsdp else norm  # a DTensor under fsdp
        return loss_sum.item(), norm.item()

    def _bad(self, loss, norm, loss_ema):
        """Skip an update from a NaN/inf loss or a loss spike, so the optimizer state is never poisoned (fp16: the
        scaler skips inf gradients itself)."""
        if not math.isfinite(loss) or (self.dtype != "float16" and not math.isfinite(norm)):
            return True
        return bool(self.cfg.spike_factor and loss_ema is not None and loss > self.cfg.spike_factor * loss_ema)

    def _mark(self):
        if self.timer is not None:
            self.marks.append(self.timer())


def clock(device):
    """A timer for TrainStep that waits for the device first."""
    import time

    def read():
        runtime.synchronize(device)
        return time.perf_counter()
    return read
