"""Measuring a training run: FLOPs and MFU, the run planner, metrics.jsonl, trackers.

Pure functions and small classes; nothing here reads script globals or runs on import.
    flops_per_token / model_flops_per_token   training FLOPs per token (PaLM appendix B)
    lookup_peak_tflops / peak_flops           vendor peak tensor-core FLOP/s by GPU name
    mfu                                       model FLOPs utilisation
    plan_run / format_plan                    tokens, tokens/param, epochs and ETAs of a run
    grad_accum_steps / suggest_batch_size     micro-batches and gradient accumulation for tokens/step
    Pace / events_left                        steady tok/s and an ETA that counts the evals and checkpoints left
    MetricsLog                                append-only, resume-safe out_dir/metrics.jsonl
    make_tracker                              optional wandb / TensorBoard logging
"""
import collections
import json
import math
import os
import re
import statistics
import time

from .errors import ConfigError, UserError

METRICS_FILE = "metrics.jsonl"  # name of the metrics log inside out_dir
CHINCHILLA_TOKENS_PER_PARAM = 20  # compute-optimal tokens per parameter (Hoffmann et al. 2022, Table 3)
GPT2_VAL = 3.28  # FineWeb val loss of OpenAI's GPT-2 small (124M): the target of modded-nanogpt's records
# Tokens each recipe needed to reach GPT2_VAL at GPT-2 small's shape (12 x 768), as steps x tokens/step read from
# the logs in KellerJordan/modded-nanogpt's records/track_1_short (issue 26). This toolkit has not trained them at
# 124M: they are the records' figures, with the records' own learning rates and batch sizes.
TOKENS_TO_GPT2 = {
    "classic": (10.26e9, "llm.c's GPT-2 (124M) recipe, AdamW: records/track_1_short/2024-10-13_llmc (val 3.2722)"),
    "modern": (4578 * 524288, "record #8, 2024-11-03_UntieEmbed: 4,578 steps x 524,288 tokens, the same architecture "
                       "and optimizer as config/recipe_modern.py"),
    "speedrun": (1390 * 524288, "record #18, 2025-01-04_SoftCap: 1,390 steps x 524,288 tokens, the features of "
                         "config/recipe_speedrun.py (its learning rates differ: BENCHMARKS.md)"),
}
RTX_4070_TOK_S = 52_000  # a real RTX 4070 user's nanoGPT 124M tok/s with torch.compile (issue 26); this toolkit: ~0.97-1.0x
# each recipe's tok/s against the classic recipe's at the 4070 config's tokens per micro-step, compiled, bf16, on an
# H200 (benchmarks/results/2026-12-04_h200_run5.jsonl: modern 425,954, speedrun 307,343 tok/s; run 4 had modern =
# classic within 0.3%): the speedrun step attends over 1792-token windows of 8,192-token rows (1024-token rows
# otherwise) and its 116M-parameter value tables cost AdamW time. Not measured on a 4070.
RECIPE_SPEED = {"classic": 1.0, "modern": 1.0, "speedrun": 0.72}
# The other estimate, from what this project measures: each recipe's MFU on an H200 (run 5, the same benches:
# classic 29.0%, modern 36.8%, speedrun 29.2%, compiled, bf16, the 4070 config's micro-batch), applied to a 4070's
# dense bf16 peak. The 52K report is 76% MFU by this project's FLOP count (issue 36): the two bracket the truth.
RECIPE_MFU = {"classic": 0.290, "modern": 0.368, "speedrun": 0.292}
RTX_4070_TFLOPS = 58.3  # PEAK_TFLOPS's RTX 4070 row (dense bf16)
MAX_GOOD_EPOCHS = 4  # repeated data is almost as good as new up to ~4 epochs (Muennighoff et al. 2023, "Scaling Data-Constrained LMs")


class MonitorError(UserError):
    """A problem with monitoring settings or files, with a message that says how to fix it."""


# ----------------------------------------------------------------------------- FLOPs

def flops_per_token(n_params_non_embedding, n_layer, n_embd, seq_len, vocab_size=None):
    """Training FLOPs (forward + backward) per token of a GPT, following PaLM (Chowdhery et al. 2022) appendix B:

        6 * N  +  12 * L * H * Q * T      with H * Q = n_embd

    6N: every weight in a matmul does one multiply-add (2 FLOPs) per token forward and twice that
    backward (gradients w.r.t. inputs and weights). N counts only weights that take part in a matmul:
    the transformer blocks (n_params_non_embedding; LayerNorm/bias terms are a negligible extra) plus
    the output projection lm_head (n_embd * vocab_size), which is a real matmul on every token whether
    or not it is tied to wte. The embedding lookups (wte, wpe) are gathers, ~0 FLOPs, so they are left out.
    Pass vocab_size=None only to get Kaplan et al. (2020)'s non-embedding count without the lm_head.

    12*L*C*T: attention scores Q@K^T and the weighted sum att@V are 2*T*C FLOPs each per token per
    layer forward, x3 for forward+backward. Counted over the full T x T matrix as PaLM does, although
    causal (flash) attention skips the masked half; so MFU figures compare with nanoGPT/PaLM/llm.c.
    """
    n_matmul = n_params_non_embedding + (n_embd * vocab_size if vocab_size else 0)
    return 6 * n_matmul + 12 * n_layer * n_embd * seq_len


def model_flops_per_token(model, seq_len=None):
    """flops_per_token for a model.GPT, including its lm_head; seq_len defaults to its block_size. A sliding
    window bounds the keys a query sees: the attention term counts attn_window of them when it is shorter
    (document masks are left out: they depend on the data)."""
    cfg = model.config
    seq_len = seq_len or cfg.block_size
    return flops_per_token(model.get_num_params(non_embedding=True), cfg.n_layer, cfg.n_embd,
                           min(seq_len, cfg.attn_window or seq_len), vocab_size=cfg.vocab_size)


def mfu(tokens_per_sec, flops_per_token, peak_flops):
    """Model FLOPs utilisation: achieved model FLOP/s over the hardware's peak FLOP/s (PaLM appendix B).
    None when the peak is unknown (CPU, a GPU not in the table) rather than a guess."""
    if not peak_flops:
        return None
    return tokens_per_sec * flops_per_token / peak_flops


# ----------------------------------------------------------------------------- peak FLOPs

# Dense (no 2:4 sparsity) tensor-core TFLOP/s for bf16 and fp16 inputs with FP32 accumulation, the mode
# PyTorch autocast training uses (cuBLAS accumulates fp16/bf16 GEMMs in fp32). GeForce cards run
# FP16-accumulate at twice these rates; that mode is not what training uses, so it is not listed.
# Datasheets that only quote "with sparsity" figures are halved. Each row: (pattern matched in full
# against the normalised device name, display name, bf16, fp16, source). None = no such tensor-core mode.
PEAK_TFLOPS = [
    # Ampere GA102 whitepaper (v2.0), RTX 3090 spec table: "Peak FP16/BF16 Tensor TFLOPS with FP32 Accumulate" 71/142 (dense/sparse)
    (r"rtx 3090", "RTX 3090", 71.0, 71.0, "NVIDIA Ampere GA102 GPU Architecture whitepaper"),
    # RTX 40-series rows: NVIDIA's product pages give "AI TOPS" = FP8, sparse, FP16 accumulate; dense bf16/fp16
    # with FP32 accumulate is that / 2 (sparsity) / 2 (FP8 -> 16-bit) / 2 (FP32 accumulate on GeForce). Checked
    # against the Ada whitepaper's spec tables, which list 4090 = 165.2 and 4080 = 97.5 for this mode.
    (r"rtx 4070", "RTX 4070", 58.3, 58.3, "nvidia.com RTX 4070 specs: 466 AI TOPS / 8"),
    (r"rtx 4070 super", "RTX 4070 SUPER", 71.0, 71.0, "nvidia.com RTX 4070 SUPER specs: 568 AI TOPS / 8"),
    (r"rtx 4070 ti", "RTX 4070 Ti", 80.2, 80.2, "nvidia.com RTX 4070 Ti specs: 641 AI TOPS / 8"),
    (r"rtx 4070 ti super", "RTX 4070 Ti SUPER", 88.3, 88.3, "nvidia.com RTX 4070 Ti SUPER specs: 706 AI TOPS / 8"),
    (r"rtx 4080", "RTX 4080", 97.5, 97.5, "NVIDIA Ada Lovelace GPU Architecture whitepaper"),
    (r"rtx 4080 super", "RTX 4080 SUPER", 104.5, 104.5, "nvidia.com RTX 4080 SUPER specs: 836 AI TOPS / 8"),
    (r"rtx 4090", "RTX 4090", 165.2, 165.2, "NVIDIA Ada Lovelace GPU Architecture whitepaper"),
    # A100 datasheet (2021): BF16/FP16 Tensor Core 312 TFLOPS dense, same for SXM4 and PCIe, 40 GB and 80 GB
    (r"a100( sxm4?| pcie)?", "A100", 312.0, 312.0, "NVIDIA A100 Tensor Core GPU datasheet"),
    # H100 datasheet: SXM 1,979 and PCIe 1,513 TFLOPS BF16/FP16 "with sparsity"; halved for dense.
    # 'NVIDIA H100 80GB HBM3' is the SXM part (the PCIe part reports 'NVIDIA H100 PCIe').
    (r"h100( sxm5?)?( hbm3)?", "H100 SXM", 989.5, 989.5, "NVIDIA H100 Tensor Core GPU datasheet (SXM, /2 sparsity)"),
    (r"h100 pcie", "H100 PCIe", 756.5, 756.5, "NVIDIA H100 Tensor Core GPU datasheet (PCIe, /2 sparsity)"),
    # H200 datasheet: H200 SXM BF16/FP16 1,979 TFLOPS with sparsity (same compute as H100 SXM); H200 NVL differs
    (r"h200( sxm)?( hbm3e)?", "H200 SXM", 989.5, 989.5, "NVIDIA H200 Tensor Core GPU datasheet (SXM, /2 sparsity)"),
    # L4 datasheet: FP16/BF16 Tensor Core 242 TFLOPS with sparsity
    (r"l4", "L4", 121.0, 121.0, "NVIDIA L4 Tensor Core GPU datasheet (/2 sparsity)"),
    # T4 datasheet: "Mixed Precision (FP16/FP32) 65 TFLOPS"; Turing has no bf16 tensor cores
    (r"t4", "T4", None, 65.0, "NVIDIA T4 Tensor Core GPU datasheet"),
    # A10 datasheet: BF16/FP16 Tensor Core 125 TF dense (250 with sparsity). The AWS A10G is a different part.
    (r"a10", "A10", 125.0, 125.0, "NVIDIA A10 Tensor Core GPU datasheet"),
]
_DROP_WORDS = {"nvidia", "geforce", "tesla"}


def _normalise_gpu_name(name):
    """'NVIDIA A100-SXM4-80GB' -> 'a100 sxm4'; 'NVIDIA GeForce RTX 4070 Ti' -> 'rtx 4070 ti'."""
    words = re.split(r"[\s\-_]+", name.lower().strip())
    return " ".join(w for w in words if w and w not in _DROP_WORDS and not re.fullmatch(r"\d+gb", w))


def lookup_peak_tflops(gpu_name, dtype):
    """(peak dense TFLOP/s or None, note) for a torch.cuda.get_device_name() string and 'bfloat16'/'float16'.
    The whole normalised name must match a row, so a 'Laptop GPU', 'Ti', 'SUPER', 'NVL' or 'A10G' variant is
    never given another card's figure; those come back None with a note saying how to supply the peak."""
    key = _normalise_gpu_name(gpu_name)
    for pattern, display, bf16, fp16, source in PEAK_TFLOPS:
        if re.fullmatch(pattern, key):
            tflops = {"bfloat16": bf16, "float16": fp16}.get(dtype)
            if tflops is None:
                return None, f"no {dtype} tensor-core peak for {display}; MFU not reported (set --peak_tflops to compare)"
            return tflops, f"{display} {dtype} dense peak {tflops:g} TFLOPS ({source})"
    return None, f"GPU {gpu_name!r} is not in monitor.PEAK_TFLOPS; MFU not reported (set --peak_tflops=N from its datasheet)"


def peak_flops(device, dtype, gpu_name=None, override_tflops=None):
    """(peak FLOP/s or None, note) for a run. override_tflops (the --peak_tflops setting) wins; CPU and MPS
    have no meaningful tensor-core peak, so MFU is not reported there."""
    if override_tflops:
        if override_tflops < 0:
            raise MonitorError(f"peak_tflops must be positive, got {override_tflops}; use e.g. --peak_tflops=58.3")
        return override_tflops * 1e12, f"peak {override_tflops:g} TFLOPS from --peak_tflops"
    if not device.startswith("cuda"):
        return None, f"MFU not reported on {device} (no tensor-core peak); set --peak_tflops to compare"
    if gpu_name is None:
        import torch
        gpu_name = torch.cuda.get_device_name(device)
    tflops, note = lookup_peak_tflops(gpu_name, dtype)
    return (tflops * 1e12 if tflops else None), note


# ----------------------------------------------------------------------------- run planner

def batch_line(cfg, world=1):
    """'gradient accumulation 64 x 8 x 1024 = 524,288 tokens/step' (a batch-size schedule: each part's), after
    checking that each part's tokens divide into micro-steps on this many GPUs."""
    sizes = cfg.batch_schedule or [cfg.total_batch_size]
    accum = [grad_accum_steps(t, cfg.batch_size, cfg.block_size, world) for t in sizes]
    parts = f" in {len(sizes)} equal parts of the run (batch_schedule)" if cfg.batch_schedule else ""
    return (f"gradient accumulation {'/'.join(map(str, accum))} x {cfg.batch_size} x {cfg.block_size} x {world} GPU(s) "
            f"= {'/'.join(f'{t:,}' for t in sizes)} tokens/step{parts}")


def grad_accum_steps(total_batch_size, batch_size, block_size, world_size=1):
    """Micro-steps per optimizer step so that each step sees total_batch_size tokens; it must divide exactly."""
    tokens_per_micro = batch_size * block_size * world_size
    if total_batch_size % tokens_per_micro:
        fit = suggest_batch_size(batch_size, total_batch_size, block_size, world_size)
        fix = (f"--batch_size={fit[0]} keeps total_batch_size" if fit else
               f"make total_batch_size a multiple of {block_size * world_size}")
        raise ConfigError(f"total_batch_size={total_batch_size} is not a multiple of batch_size*block_size*world_size "
                          f"= {batch_size}*{block_size}*{world_size} = {tokens_per_micro}; {fix} (or set "
                          f"total_batch_size={tokens_per_micro * max(1, round(total_batch_size / tokens_per_micro))})")
    return total_batch_size // tokens_per_micro


def suggest_batch_size(max_batch_size, total_batch_size, block_size, world_size=1):
    """(micro-batch, grad_accum): the largest micro-batch <= max_batch_size that divides total_batch_size
    into whole micro-steps, or None when none does (total_batch_size not a multiple of block_size*world_size)."""
    for b in range(max_batch_size, 0, -1):
        if total_batch_size % (b * block_size * world_size) == 0:
            return b, total_batch_size // (b * block_size * world_size)
    return None


def plan_run(n_params, n_params_non_embedding, tokens_per_step, max_iters, iter_num=0,
             train_tokens=None, tokens_per_sec=None, n_params_extra_embeds=0, tokens_in=None):
    """The arithmetic of a run, as a dict; values that need a missing input are None.

    n_params counts all parameters: Chinchilla's 20 tokens/param (Hoffmann et al. 2022) was fitted on
    total parameter counts, embeddings included. Times are wall-clock seconds at tokens_per_sec.
    tokens_in(a, b): the tokens of steps a .. b-1 where they vary (a batch-size schedule); tokens_per_step is then
    the last part's.
    """
    tokens_in = tokens_in or (lambda a, b: tokens_per_step * max(b - a, 0))
    total_tokens = tokens_in(0, max_iters)
    remaining_tokens = tokens_in(iter_num, max_iters)
    chinchilla_tokens = CHINCHILLA_TOKENS_PER_PARAM * n_params

    def seconds(tokens):
        return tokens / tokens_per_sec if tokens_per_sec else None

    plan = {
        "n_params": n_params,
        "n_params_non_embedding": n_params_non_embedding,
        "n_params_extra_embeds": n_params_extra_embeds,
        "tokens_per_step": tokens_per_step,
        "max_iters": max_iters,
        "iter_num": iter_num,
        "total_tokens": total_tokens,
        "remaining_tokens": remaining_tokens,
        "tokens_per_param": total_tokens / n_params,
        "tokens_per_non_embedding_param": total_tokens / n_params_non_embedding,
        "chinchilla_multiple": total_tokens / chinchilla_tokens,
        "chinchilla_tokens": chinchilla_tokens,
        "chinchilla_iters": math.ceil(chinchilla_tokens / tokens_per_step),
        "train_tokens": train_tokens,
        "epochs": total_tokens / train_tokens if train_tokens else None,
        "iters_per_epoch": train_tokens // tokens_per_step if train_tokens else None,
        "tokens_per_sec": tokens_per_sec,
        "eta_run_s": seconds(total_tokens),
        "eta_remaining_s": seconds(remaining_tokens),
        "eta_chinchilla_s": seconds(chinchilla_tokens),
        "eta_epoch_s": seconds(train_tokens) if train_tokens else None,
    }
    return plan


def recipe_of(model_config, optimizer):
    """'classic' (GPT-2 and AdamW), 'modern' (the modern switches and Muon), 'speedrun' (and the speedrun
    switches), or None for a mix that no published run matches."""
    if model_config.speedrun():
        return "speedrun" if optimizer == "muon" and model_config.not_gpt2() != model_config.speedrun() else None
    if model_config.not_gpt2():
        return "modern" if optimizer == "muon" else None
    return "classic" if optimizer == "adamw" else None


def gpt2_quality(recipe, shape_124m, tokens_per_step, tokens_per_sec=None, flops_per_token=None):
    """Lines saying how many tokens, steps and hours the recipe ('classic', 'modern', 'speedrun', or None for a
    mix) is expected to need for GPT-2 small's FineWeb val loss, with the source of the figure; without a measured
    tok/s, on a 4070 two ways: a user's reported nanoGPT rate, and the MFU this project measures (flops_per_token:
    this model's)."""
    if recipe is None:
        return [f"GPT-2 quality (FineWeb val {GPT2_VAL}): no published figure for this mix of recipe settings; "
                f"config/recipe_modern.py and config/recipe_speedrun.py have one"]
    tokens, source = TOKENS_TO_GPT2[recipe]
    head = (f"GPT-2 quality (FineWeb val {GPT2_VAL}) with the {recipe} recipe at 124M: about {human_count(tokens)} "
            f"tokens = {math.ceil(tokens / tokens_per_step):,} steps of this run's {tokens_per_step:,} = ")
    if tokens_per_sec:
        lines = [head + f"{human_time(tokens / tokens_per_sec)} at {human_count(tokens_per_sec)} tok/s"]
    else:
        rate = RTX_4070_TOK_S * RECIPE_SPEED[recipe]
        slower = f" x {RECIPE_SPEED[recipe]}, this recipe's speed against it on an H200" if RECIPE_SPEED[recipe] != 1 else ""
        lines = [head + f"{human_time(tokens / rate)} at {human_count(rate)} tok/s (an RTX 4070's "
                 f"{human_count(RTX_4070_TOK_S)} with nanoGPT{slower}; pass --tokens_per_sec from bench.py)"]
        if flops_per_token:
            by_mfu = RTX_4070_TFLOPS * 1e12 * RECIPE_MFU[recipe] / flops_per_token
            lines.append(f"  or {human_time(tokens / by_mfu)} at {human_count(by_mfu)} tok/s: a 4070's "
                         f"{RTX_4070_TFLOPS} TFLOP/s at the {100 * RECIPE_MFU[recipe]:.1f}% MFU this recipe measured "
                         f"on an H200 (the rate above is {100 * mfu(rate, flops_per_token, RTX_4070_TFLOPS * 1e12):.0f}% MFU by "
                         f"this project's FLOP count)")
    lines.append(f"  source: {source}")
    if not shape_124m:
        lines.append("  (a 124M figure: this model has another shape, so expect another number)")
    return lines


# ----------------------------------------------------------------------------- the run's log lines

def step_line(it, loss, lr, norm, ms, tok_s, mfu, eta):
    """train.py's fixed-width line of one step (or the mean since the previous line)."""
    return (f"iter {it:7d} | loss {loss:.4f} | lr {lr:.2e} | norm {norm:7.4f} | {ms:8.1f} ms | {tok_s:9,.0f} tok/s | "
            f"mfu {'   n/a' if mfu is None else f'{100 * mfu:5.1f}%'} | eta {fmt_duration(eta)}")


def eval_line(it, train_loss, record, scored, improved, best):
    """train.py's line of one eval: the train loss since the previous eval, each val set's loss with its standard
    error and the tokens it rests on (scored: evals.SplitLoss by name), HellaSwag/HumanEval, and the best."""
    def part(k, v):
        r = scored.get(k[4:]) if k.startswith("val/") else None
        return f"{k} {v:.4f}" + (f" {r.plus_minus()} ({human_count(r.tokens)} tok)" if r else "")
    return (f"eval {it:7d} | train {'   n/a' if train_loss is None else f'{train_loss:.4f}'} | "
            + " | ".join(part(k, v) for k, v in record.items()) + (" | new best" if improved else f" | best {best:.4f}"))


def run_plan_lines(model, cfg, iter_num=0, train_tokens=None):
    """The plan a run prints (train.py --plan, and every run at its start): tokens, tokens per parameter, epochs,
    wall times, and how long GPT-2 small's quality takes with this recipe."""
    from . import schedules
    plan = plan_run(n_params=model.get_num_params(), n_params_non_embedding=model.get_num_params(True),
                    tokens_per_step=schedules.tokens_at(cfg.max_iters, cfg), max_iters=cfg.max_iters,
                    iter_num=iter_num, train_tokens=train_tokens, tokens_per_sec=cfg.tokens_per_sec or None,
                    n_params_extra_embeds=model.extra_embed_params(),
                    tokens_in=lambda a, b: schedules.tokens_in(a, b, cfg))
    return format_plan(plan) + quality_lines(model, cfg)


def quality_lines(model, cfg):
    """The plan's lines on how long GPT-2 small's quality takes with this run's recipe (TOKENS_TO_GPT2)."""
    c = model.config
    return gpt2_quality(recipe_of(c, cfg.optimizer), (c.n_layer, c.n_embd) == (12, 768), cfg.total_batch_size,
                        cfg.tokens_per_sec or None, model_flops_per_token(model, cfg.block_size))


# ----------------------------------------------------------------------------- pace and ETA

PACE_WINDOW = 20  # steps in the running mean behind tok/s, MFU and the ETA
PACE_SKIP = 2  # steps after a start or resume kept out of it: compilation and allocator warm-up (issue 19)


class Pace:
    """A step's own time jumps (a shard opens, the OS does something); tok/s, MFU and the ETA use the mean of
    the last PACE_WINDOW steps instead, without the first PACE_SKIP of this process (with a batch-size schedule,
    tokens over seconds: steps of different sizes weigh by their tokens). The ETA adds the evals and checkpoints
    still to come at the mean cost of those this process has done (none measured: 0)."""

    def __init__(self, window=PACE_WINDOW, skip=PACE_SKIP):
        self.steps, self.skip, self.seen = collections.deque(maxlen=window), skip, 0
        self.costs = {"eval": [], "ckpt": []}

    def step(self, seconds, tokens=1):
        self.seen += 1
        if self.seen > self.skip:
            self.steps.append((seconds, tokens))

    def event(self, kind, seconds):
        """An eval ('eval', with the best checkpoint it may write) or a checkpoint ('ckpt') took `seconds`."""
        self.costs[kind].append(seconds)

    def step_seconds(self, last):
        """The running mean step time, or `last` (this step's) while the window is still empty."""
        return statistics.fmean(s for s, _ in self.steps) if self.steps else last

    def tokens_per_second(self, tokens, seconds):
        """The running tok/s (tokens over seconds of the recent steps), or this step's while none is counted."""
        return sum(t for _, t in self.steps) / sum(s for s, _ in self.steps) if self.steps else tokens / seconds

    def eta(self, steps_left, evals_left, ckpts_left, last, tokens_left=None, rate=None):
        """Seconds still to go: the steps at the mean step time, or tokens_left at `rate` tok/s, plus the events."""
        events = {"eval": evals_left, "ckpt": ckpts_left}
        extra = sum(n * statistics.fmean(self.costs[k]) for k, n in events.items() if self.costs[k])
        return (tokens_left / rate if tokens_left is not None else steps_left * self.step_seconds(last)) + extra


def events_left(it, max_iters, interval):
    """After step `it`: how many evals (or checkpoints) are still to come, at the multiples of interval in
    [it, max_iters] and at max_iters itself (train.py evaluates and checkpoints at the end whatever the
    interval); the one at `it` happens at the top of the next loop."""
    if it > max_iters:
        return 0
    return max_iters // interval - (it - 1) // interval + (1 if max_iters % interval else 0)


def plural(n, word):
    """'1 file', '2,450 files'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def human_count(n):
    """1234 -> '1.23K', 9999745024 -> '10.0B', 524288 -> '524K' (three significant figures)."""
    if abs(n) < 1000 and float(n).is_integer():
        return f"{int(n)}"  # 0 tokens is '0', not '0.00'
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K"), (1, "")):
        x = n / div
        if abs(x) >= 1 or div == 1:
            decimals = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
            return f"{x:,.{decimals}f}{unit}"


def fmt_duration(seconds):
    """Fixed-width-friendly ETA: '4m05s', '2h03m10s', '3d04h10m'."""
    seconds = int(max(0, seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d{h:02d}h{m:02d}m" if d else (f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s")


def human_time(seconds):
    """45 -> '45 s', 750 -> '12.5 min', 123120 -> '34.2 h / 1.4 d'."""
    if seconds is None:
        return "n/a"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 24 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 3600:.1f} h / {seconds / 86400:.1f} d"


def format_plan(plan):
    """Readable lines for plan_run's dict, for train.py to print at start or with --plan."""
    p = plan
    rate = f" at {human_count(p['tokens_per_sec'])} tok/s" if p["tokens_per_sec"] else " (no tok/s measured yet)"
    lines = [
        f"model: {human_count(p['n_params'])} params ({human_count(p['n_params_non_embedding'])} non-embedding"
        + (f"; {human_count(p['n_params_extra_embeds'])} in extra embedding tables: memory and optimizer state, no FLOPs)"
           if p.get("n_params_extra_embeds") else ")"),
        (f"tokens/step: {p['tokens_per_step']:,}  x  max_iters: {p['max_iters']:,}  =  {human_count(p['total_tokens'])} tokens"
         if p["total_tokens"] == p["tokens_per_step"] * p["max_iters"] else
         f"max_iters: {p['max_iters']:,} steps of a growing batch (batch_schedule; the last part's {p['tokens_per_step']:,} "
         f"tokens/step)  =  {human_count(p['total_tokens'])} tokens"),
        f"tokens/param: {p['tokens_per_param']:.3g} = {p['chinchilla_multiple']:.3g}x Chinchilla's "
        f"{CHINCHILLA_TOKENS_PER_PARAM} ({human_count(p['chinchilla_tokens'])} tokens, {p['chinchilla_iters']:,} iters)",
    ]
    if p["train_tokens"]:
        lines.append(f"dataset: {human_count(p['train_tokens'])} train tokens = {p['iters_per_epoch']:,} iters/epoch; "
                     f"this run is {p['epochs']:.2f} epochs")
        if p["epochs"] > MAX_GOOD_EPOCHS:
            lines.append(f"warning: {p['epochs']:,.0f} epochs repeat the data far beyond the ~{MAX_GOOD_EPOCHS} that still "
                         f"help (Muennighoff et al. 2023): the model will memorise it; prepare more data or lower max_iters")
    else:
        lines.append("dataset: not prepared yet (no manifest.json): epochs and iters/epoch need it; "
                     "everything above does not")
    if p["tokens_per_sec"]:
        eta = f"wall time{rate}: this run {human_time(p['eta_run_s'])}"
        if p["iter_num"]:
            eta += f" ({human_time(p['eta_remaining_s'])} left from iter {p['iter_num']:,})"
        eta += f", Chinchilla-optimal {human_time(p['eta_chinchilla_s'])}"
        if p["eta_epoch_s"] is not None:
            eta += f", one epoch {human_time(p['eta_epoch_s'])}"
        lines.append(eta)
    else:
        lines.append(f"wall time: n/a{rate}; run bench.py with this config for tok/s")
    return lines


# ----------------------------------------------------------------------------- metrics.jsonl

def _plain(v):
    """JSON-ready value: tensors and numpy scalars become Python numbers."""
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def read_metrics(path):
    """The records of a metrics.jsonl, in file order. A torn last line (crash mid-write) is skipped."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if i >= len(lines) - 2:  # only the final line may be partial
                continue
            raise MonitorError(f"{path} line {i + 1} is not JSON; fix or delete that line") from None
        if not isinstance(record, dict) or not isinstance(record.get("iter", 0), int):
            raise MonitorError(f"{path} line {i + 1} is not a metrics record (a JSON object with an integer "
                               f"'iter'); fix or delete that line")
        records.append(record)
    text = "".join(lines).strip()
    if not records and text and not text.startswith("{"):  # content but no record, not even a torn first line
        raise MonitorError(f"{path} holds no metrics records (not a metrics.jsonl written by train.py, or damaged); "
                           f"point at a run's out_dir, or move that file away")
    return records


def _write_records_atomic(path, records):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """One JSON object per line in out_dir/metrics.jsonl, flushed per line so it survives a crash.

    Every record has "kind" ("train" or "eval"), "iter" and "time". A new run (resume_iter=None) keeps an
    existing file by renaming it to metrics.jsonl.1, .2, ... . A resumed run first drops records with
    iter > resume_iter (atomic rewrite), since those iterations will run again; a record then logged for
    resume_iter itself replaces the kept one of the same kind, so the file never holds a duplicate iteration.
    """

    def __init__(self, path, resume_iter=None):
        self.path = path
        self._replace_kinds = set()  # kinds with a kept record at resume_iter that a new one replaces
        self.resume_iter = resume_iter
        if resume_iter is None:
            if os.path.exists(path) and os.path.getsize(path) > 0:
                k = 1
                while os.path.exists(f"{path}.{k}"):
                    k += 1
                os.replace(path, f"{path}.{k}")
        elif os.path.exists(path):
            kept = [r for r in read_metrics(path) if r.get("iter", -1) <= resume_iter]
            self._replace_kinds = {r.get("kind") for r in kept if r.get("iter") == resume_iter}
            _write_records_atomic(path, kept)
        self._f = open(path, "a")

    def log(self, kind, iter, **fields):
        record = {"kind": kind, "iter": int(iter), "time": round(time.time(), 3)}
        record.update({k: _plain(v) for k, v in fields.items()})
        if kind in self._replace_kinds and record["iter"] == self.resume_iter:
            self._replace_kinds.discard(kind)
            self._f.close()
            kept = [r for r in read_metrics(self.path) if not (r.get("kind") == kind and r.get("iter") == self.resume_iter)]
            _write_records_atomic(self.path, kept)
            self._f = open(self.path, "a")
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        return record

    def log_step(self, iter, tokens, loss, lr, grad_norm, ms, tok_per_sec, mfu=None, **extra):
        """One optimizer step. loss should be the mean over the step's micro-batches."""
        return self.log("train", iter, tokens=tokens, loss=loss, lr=lr, grad_norm=grad_norm, ms=ms,
                        tok_per_sec=tok_per_sec, mfu=mfu, **extra)

    def log_eval(self, iter, tokens, val_losses, train_loss=None, best=False, **extra):
        """An evaluation. val_losses maps a split name to its loss, e.g. {'val': 3.2, 'val-python': 2.9};
        stored as "val/<split>" fields. extra holds anything else, e.g. primary='val' (the set the best
        checkpoint follows, which plot.py marks) or **{'hellaswag/acc_norm': 0.29}."""
        fields = {f"val/{name}": loss for name, loss in val_losses.items()}
        return self.log("eval", iter, tokens=tokens, train_loss=train_loss, best=bool(best), **fields, **extra)

    def log_evals(self, iter, tokens, scored, record, train_loss, best, primary):
        """log_eval of train.py's evals (evals.evals_of_run's scored and record), with each val set's tokens and
        standard error."""
        extra = {k: v for k, v in record.items() if not k.startswith("val/")}
        extra.update({f"val_tokens/{k}": r.tokens for k, r in scored.items()})
        extra.update({f"val_stderr/{k}": r.stderr for k, r in scored.items()})
        return self.log_eval(iter, tokens, {k: r.loss for k, r in scored.items()}, train_loss=train_loss, best=best,
                             primary=primary, **extra)

    def close(self):
        self._f.close()


# ----------------------------------------------------------------------------- trackers

class TrackerMixin:
    """A tracker is a context manager: closed when the run ends, however it ends."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class NullTracker(TrackerMixin):
    """Stand-in when no tracker is enabled, so the training loop has no if-statements for it."""

    def log(self, data, step):
        pass

    def close(self):
        pass


def check_trackers(wandb_log=False, tensorboard_log=False):
    """Refuse a tracker whose package is missing before a run writes anything (make_tracker itself writes)."""
    if wandb_log:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise MonitorError("wandb_log=True but the 'wandb' package is not installed; pip install wandb, "
                               "or run with --wandb_log=False") from None
    if tensorboard_log:
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise MonitorError("tensorboard_log=True but the 'tensorboard' package is not installed; "
                               "pip install tensorboard, or run with --tensorboard_log=False") from None


class WandbTracker(TrackerMixin):
    def __init__(self, project, run_name, config):
        check_trackers(wandb_log=True)
        import wandb
        self._wandb = wandb
        self._run = wandb.init(project=project, name=run_name, config=config)

    def log(self, data, step):
        self._run.log(data, step=step)

    def close(self):
        self._run.finish()


class TensorBoardTracker(TrackerMixin):
    def __init__(self, log_dir):
        check_trackers(tensorboard_log=True)
        from torch.utils.tensorboard import SummaryWriter
        self._writer = SummaryWriter(log_dir=log_dir)

    def log(self, data, step):
        for k, v in data.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._writer.add_scalar(k, v, step)
        self._writer.flush()

    def close(self):
        self._writer.close()


class MultiTracker(TrackerMixin):
    def __init__(self, trackers):
        self.trackers = trackers

    def log(self, data, step):
        for t in self.trackers:
            t.log(data, step)

    def close(self):
        for t in self.trackers:
            t.close()


def tracker_for(cfg):
    """The trackers train.py's settings ask for (wandb, TensorBoard in out_dir/tb), or NullTracker."""
    import dataclasses
    return make_tracker(cfg.wandb_log, cfg.tensorboard_log, cfg.wandb_project,
                        cfg.wandb_run_name or os.path.basename(os.path.abspath(cfg.out_dir)), dataclasses.asdict(cfg),
                        os.path.join(cfg.out_dir, "tb"))


def make_tracker(wandb_log=False, tensorboard_log=False, project="nanogpt", run_name=None, config=None, log_dir=None):
    """A tracker with .log(dict, step) and .close(): wandb, TensorBoard (event files in log_dir), both, or none."""
    trackers = []
    if wandb_log:
        trackers.append(WandbTracker(project, run_name, config))
    if tensorboard_log:
        trackers.append(TensorBoardTracker(log_dir))
    if not trackers:
        return NullTracker()
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)
