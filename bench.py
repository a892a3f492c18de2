"""Measure training throughput for a config: tokens/s, MFU, peak memory, ms per step.

    python bench.py config/train_gpt2_124m_4070.py                      # table
    python bench.py config/train_gpt2_124m_4070.py --json               # one JSON line
    python bench.py config/train_gpt2_124m_4070.py --find_batch_size    # largest micro-batch that fits

The model, optimizer, precision and torch.compile are set up as train.py sets them, from the same
TrainConfig settings. One optimizer step of the config is grad_accum micro-steps (forward + backward
of batch_size x block_size tokens) plus one optimizer step (clip + AdamW); both are timed, after
warm-up (and compilation), with the device synchronised before every clock read, and combined into
the time of a full step. Tokens are random (the speed does not depend on them) unless --use_data.
"""
import dataclasses
import gc
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass

import torch

from gptlib import evals, memory, monitor, optim, runtime, schedules, shards, step
from gptlib.errors import ConfigError, OutOfMemory, is_out_of_memory, run_command
from gptlib.loader import TokenLoader
from gptlib.settings import load_config, setting
from gptlib.step import TrainStep
from gptlib.train_settings import TrainConfig
from model import GPT, GPTConfig

DEFAULT_MAX_BATCH_CUDA = 1024  # --find_batch_size upper bound on a GPU (OOM ends the search earlier)
DEFAULT_MAX_BATCH_CPU = 16  # on CPU the kernel's OOM killer usually strikes before malloc fails, so the search stops here
GIB = 2 ** 30
MAX_TIMED_MICRO_STEPS = 8  # micro-steps in a timed step (a run's 64 would make a bench take minutes a step on a 4070)


@dataclass
class BenchConfig(TrainConfig):
    # --- bench.py (the settings above are train.py's: the run it measures)
    iters: int = setting(20, ge=1)  # timed training steps (each: up to 8 micro-steps, gradients accumulating, and the optimizer step)
    warmup_iters_bench: int = setting(5, ge=0)  # untimed iterations first: compilation, autotuning, allocator warm-up
    json: bool = setting(False)  # print one JSON line instead of the table
    find_batch_size: bool = setting(False)  # search the largest micro-batch that fits (training step and eval), then bench it
    max_batch_size: int = setting(0, ge=0)  # upper bound of the search; 0: 1024 on GPU, 16 on CPU
    use_data: bool = setting(False)  # read batches from data_dir's train shards instead of random tokens
    memory_margin: float = setting(memory.FIT_MARGIN, ge=0, lt=1)  # --find_batch_size on GPU: fraction of the card kept free (fragmentation, other processes)
    phases: int = setting(0, ge=0, le=64)  # parts of the run timed, each at its middle iteration's window (the average and the slowest part are reported); 0: 4 when the window grows, else 1

    def problems(self):
        out = super().problems()
        if self.use_data and self.vocab_size < shards.VOCAB_SIZE:
            out.append(f"use_data reads GPT-2 tokens (ids up to {shards.VOCAB_SIZE - 1}) but vocab_size={self.vocab_size}; "
                       f"raise vocab_size or bench on random tokens")
        return out


def progress(msg):
    """What a long phase is doing, on stderr (stdout carries the result)."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def cap_memory(device, gib):
    """Make this process see a card of `gib` GiB: PyTorch's allocator may reserve what such a card would leave
    after the CUDA context and other processes already on this one. Returns the emulated card's bytes."""
    free, total = torch.cuda.mem_get_info(device)
    others = total - free - torch.cuda.memory_reserved(device)  # CUDA context, other processes
    card = gib * GIB
    if card > total:
        raise ConfigError(f"memory_gib={gib:g} is more than this GPU's {total / GIB:.1f} GiB; pick memory_gib <= "
                          f"{total / GIB:.1f}")
    if card <= others:
        raise ConfigError(f"memory_gib={gib:g} leaves nothing beside the {others / GIB:.2f} GiB of CUDA context here; "
                          f"pick a larger memory_gib")
    index = torch.device(device).index
    torch.cuda.set_per_process_memory_fraction((card - others) / total, torch.cuda.current_device() if index is None else index)
    return card


def free_memory(device):
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


class Bench:
    """The model, optimizer and batches of one config, and the pieces of a run it times: training steps
    (gptlib/step.py's, the one train.py runs), an eval batch, HellaSwag's rows."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = runtime.pick_device(cfg.device)
        self.device_type = self.device.split(":")[0]
        self.dtype = runtime.pick_dtype(self.device, cfg.dtype)
        runtime.check_fp8(self.device, cfg.fp8_head)
        self.threads = runtime.prepare_device(self.device, cfg.cpu_threads)  # as train.py
        self.ctx = runtime.autocast(self.device, self.dtype)
        if cfg.use_data:  # the data's problems before any warm-up, not after it
            TokenLoader(cfg.data_dir, "train", cfg.batch_size, cfg.block_size, seed=cfg.seed)
        self.card = None  # bytes of the card the fit is judged against (CUDA only)
        if self.device_type == "cuda":
            self.card = cap_memory(self.device, cfg.memory_gib) if cfg.memory_gib else \
                torch.cuda.mem_get_info(self.device)[1]
        elif cfg.memory_gib:
            raise ConfigError(f"memory_gib emulates a smaller GPU, but this bench runs on {self.device}; drop "
                              f"--memory_gib or run it on a CUDA GPU")
        torch.manual_seed(cfg.seed)
        model_args = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(GPTConfig)}
        self.raw_model = runtime.checkpoint_blocks(GPT(GPTConfig(**model_args)).to(self.device), cfg.activation_checkpointing)
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=(self.dtype == "float16"))
        self.optimizer = optim.make_optimizer(self.raw_model, cfg, self.device)
        self.values = dataclasses.replace(schedules.at(cfg.warmup_iters, cfg), window=cfg.attn_window)  # peak rate, full window
        self.wrapped = runtime.Wrapped(model=self.raw_model, raw=self.raw_model, ddp=None, fsdp=False)
        self.compiled = False
        if cfg.compile:
            ok, why = runtime.compile_available(self.device)
            if ok:
                self.compiled = True
                if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):  # never a silent eager fallback
                    torch._dynamo.config.fail_on_recompile_limit_hit = True
                self.recompile()
            else:
                progress(f"compile switched off: {why}")
        self.dynamic_batch = False  # during a compiled batch search: compile the batch dimension dynamic at once
        self.loader = None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.last_fit = None  # (bytes the last fitting run needed, the card's bytes) on CUDA

    def recompile(self):
        """A fresh torch.compile of the model, as train.py makes it for its one micro-batch size: after a batch
        search, the batch that is timed runs in a graph of its own static shape, not the search's dynamic one."""
        torch._dynamo.reset()
        self.wrapped.model = torch.compile(self.raw_model)
        self.graphs_at_compile = compiled_graphs()

    def check_compiled(self):
        """Fail loudly where dynamo gave up and ran eager (it does silently by default): timings and memory would
        be the eager model's under a 'compile: true' label."""
        if self.compiled and compiled_graphs() == self.graphs_at_compile:
            raise RuntimeError("torch.compile produced no graph for the timed steps, so they ran eager; "
                               "the figures would be mislabelled")

    def batch(self, B):
        T = self.cfg.block_size
        if self.cfg.use_data:
            if self.loader is None or self.loader.B != B:
                self.loader = TokenLoader(self.cfg.data_dir, "train", B, T, seed=self.cfg.seed, order=self.cfg.data_order)
            x, y = self.loader.next_batch()
        else:
            vocab = min(shards.VOCAB_SIZE, self.cfg.vocab_size)  # tiny test models may have a smaller vocabulary
            buf = torch.randint(0, vocab, (B, T + 1), generator=self.gen)
            x, y = buf[:, :-1].contiguous(), buf[:, 1:].contiguous()  # (B, T+1) -> inputs, next-token targets (B, T)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.dynamic_batch and B > 1:  # dynamo would specialise a size-1 dimension anyway
            torch._dynamo.mark_dynamic(x, 0)
            torch._dynamo.mark_dynamic(y, 0)
        return x, y

    def trainer(self):
        """train.py's training step (gptlib/step.py), its phases timed."""
        return TrainStep(self.wrapped, self.optimizer, self.scaler, self.ctx, self.cfg, self.dtype,
                         self.cfg.batch_size * self.cfg.block_size, timer=step.clock(self.device))

    def train_step(self, B, micro_steps):
        """One training step: micro_steps micro-batches of B rows, gradients accumulating, then the update. Returns
        the clock's readings: one after each micro-step, one after the update."""
        trainer = self.trainer()
        trainer(lambda: self.batch(B), self.values, micro_steps=micro_steps)
        return trainer.marks

    def eval_step(self, B):
        """An eval batch as train.py runs it: the raw model, no_grad, the chunked loss."""
        with torch.no_grad(), self.ctx:
            x, y = self.batch(B)
            self.raw_model(x, y, window=self.values.window or None)

    def scored_rows_step(self):
        """The largest batch HellaSwag and HumanEval score during a run: rows of up to block_size tokens."""
        rows = max(evals.HELLASWAG_BATCH_ITEMS * 4 if self.cfg.hellaswag_interval else 0,
                   evals.HUMANEVAL_BATCH_ROWS if self.cfg.humaneval_interval else 0)
        if rows:
            with torch.no_grad(), self.ctx:
                x, y = self.batch(rows)
                self.raw_model.token_losses(x, y)

    def clock(self):
        runtime.synchronize(self.device)
        return time.perf_counter()

    def measure(self, B, grad_accum):
        """Median ms of a micro-step and of an optimizer step, over cfg.iters timed training steps of
        min(grad_accum, MAX_TIMED_MICRO_STEPS) micro-steps each: a micro-step that accumulates into the gradients
        of the ones before it, as all but the first of a real step's do (the first of each timed step is left out
        when a step has more than one)."""
        cfg, micro_steps = self.cfg, min(grad_accum, MAX_TIMED_MICRO_STEPS)
        for i in range(cfg.warmup_iters_bench):
            progress(f"warm-up {i + 1}/{cfg.warmup_iters_bench} at micro-batch {B}"
                     + (" (the first compiles the model: a minute on a GPU)" if i == 0 and self.compiled else ""))
            self.train_step(B, micro_steps)
        micro_ms, opt_ms = [], []
        progress(f"timing {cfg.iters} steps of {micro_steps} micro-step(s) at micro-batch {B}")
        for _ in range(cfg.iters):
            marks = [self.clock()] + self.train_step(B, micro_steps)
            micro = [1000 * (b - a) for a, b in zip(marks[:-2], marks[1:-1])]
            micro_ms += micro[1:] if micro_steps > 1 else micro
            opt_ms.append(1000 * (marks[-1] - marks[-2]))
        return statistics.median(micro_ms), statistics.median(opt_ms)

    def fits(self, B):
        """Whether a whole train.py run fits at micro-batch B: a training step (fwd+bwd+optimizer), an eval
        batch, the HellaSwag/HumanEval batches if the config runs them, and on a GPU what the allocator
        reserved (not just allocated) plus the CUDA context and anything else on the card, within
        (1 - memory_margin) of its memory."""
        cuda = self.device_type == "cuda"
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.train_step(B, 1)
            self.eval_step(self.cfg.eval_batch_size or B)
            self.scored_rows_step()
            runtime.synchronize(self.device)
            if cuda:
                free, total = torch.cuda.mem_get_info(self.device)
                others = total - free - torch.cuda.memory_reserved(self.device)  # CUDA context, other processes
                self.last_fit = (torch.cuda.max_memory_reserved(self.device) + others, self.card)
                return self.last_fit[0] <= (1 - self.cfg.memory_margin) * self.card
            return True
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not is_out_of_memory(e):
                raise
            return False
        finally:
            self.optimizer.zero_grad(set_to_none=True)
            free_memory(self.device)


def compiled_graphs():
    """How many graphs dynamo has compiled in this process."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]


def find_max_batch(bench, cap):
    """Largest B <= cap with bench.fits(B): double until a failure or the cap, then binary search.
    Compiled, every candidate runs compiled, in one graph for all sizes: the search starts at 2 with the batch
    dimension marked dynamic (dynamo would compile size 1 on its own, then again once it sees a second size;
    1 is tried only when 2 does not fit)."""
    tried = []

    def fits(B):
        progress(f"batch-size search: trying micro-batch {B}" + (" (compiling)" if bench.compiled and not tried else ""))
        ok = bench.fits(B)
        tried.append((B, ok))
        progress(f"batch-size search: micro-batch {B} {'fits' if ok else 'does not fit'}")
        return ok
    bench.dynamic_batch = bench.compiled
    try:
        best = _search(fits, cap, start=2 if bench.compiled else 1)
    finally:
        bench.dynamic_batch = False
    if not best:
        raise OutOfMemory(f"even batch_size=1 at block_size={bench.cfg.block_size} does not fit; "
                          f"lower block_size or the model size, or use dtype=bfloat16/float16")
    return best, tried


def _search(fits, cap, start=1):
    """Largest B <= cap with fits(B), 0 if none; fits must be monotone. The doubling starts at `start`
    (1 is tried after it only if it does not fit)."""
    start = min(start, cap)
    if not fits(start):
        return 1 if start > 1 and fits(1) else 0
    good = start
    while good < cap and fits(min(2 * good, cap)):
        good = min(2 * good, cap)
    bad = min(2 * good, cap + 1)  # first size known (or assumed, past the cap) not to fit
    while bad - good > 1:
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def phase_iterations(cfg):
    """The iterations bench.py times at: the middle of each of cfg.phases equal parts of the run (0: 4 parts when
    the attention window grows, so the average is over its schedule, else 1), the window and learning rate theirs."""
    n = cfg.phases or (4 if cfg.window_start and cfg.attn_window or cfg.batch_schedule or cfg.seq_schedule else 1)
    return [int((k + 0.5) * cfg.max_iters / n) for k in range(n)] if n > 1 else [max(cfg.warmup_iters, 0)]


def peak_memory_gib(device):
    """(GiB, what it measures): allocator peak on CUDA, else the process's peak resident set."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / GIB, "torch.cuda.max_memory_allocated"
    if device.startswith("mps"):
        return None, "n/a on mps"
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return kib * 1024 / GIB, "process peak RSS"


def run_bench(cfg):
    """The benchmark of cfg as a dict (the --json fields)."""
    bench = Bench(cfg)
    result = {}
    if cfg.find_batch_size:
        default_cap = DEFAULT_MAX_BATCH_CUDA if bench.device_type == "cuda" else DEFAULT_MAX_BATCH_CPU
        cap = cfg.max_batch_size or default_cap
        max_fit, tried = find_max_batch(bench, cap)
        suggestion = monitor.suggest_batch_size(max_fit, cfg.total_batch_size, cfg.block_size)
        if suggestion is None:
            raise ConfigError(f"total_batch_size={cfg.total_batch_size} is not a multiple of block_size={cfg.block_size}; "
                              f"no micro-batch divides it, so pick a total_batch_size that is")
        cfg.batch_size = suggestion[0]
        search_graphs = compiled_graphs() - bench.graphs_at_compile if bench.compiled else None
        if bench.compiled:  # the batch to be timed, compiled for its own shape as train.py will compile it
            bench.recompile()
        progress(f"checking micro-batch {cfg.batch_size} again for its memory figures")
        if not bench.fits(cfg.batch_size):  # the cause seen, named as such (issue 37: an eager run was told 'compiled')
            why = ("compiled for its own shape" if bench.compiled else
                   "on a second try (the allocator's memory is fragmented, or another process took some)")
            smaller = monitor.suggest_batch_size(max(1, cfg.batch_size // 2), cfg.total_batch_size, cfg.block_size)[0]
            raise OutOfMemory(f"micro-batch {cfg.batch_size} fit during the search but not {why}; bench a smaller one "
                              f"with --find_batch_size=False --batch_size={smaller}")
        result.update(max_batch_size_fits=max_fit, batch_size_cap=cap, cap_reached=max_fit == cap,
                      search=[[B, ok] for B, ok in tried],
                      search_graphs=search_graphs,
                      fit_needs_gb=bench.last_fit and bench.last_fit[0] / GIB, card_gb=bench.last_fit and bench.last_fit[1] / GIB,
                      memory_margin=cfg.memory_margin if bench.device_type == "cuda" else None,
                      fit_checks="train step, eval" + (", HellaSwag" if cfg.hellaswag_interval else "")
                      + (", HumanEval" if cfg.humaneval_interval else ""))
    if bench.device_type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    B, T = cfg.batch_size, cfg.block_size
    monitor.batch_line(cfg)  # every part's tokens divide into micro-steps
    phases = []  # (the window, the step's tokens, micro-step ms, optimizer step ms) at the middle of each part
    for it in phase_iterations(cfg):
        bench.values = schedules.at(it, cfg)
        try:
            phases.append((bench.values.window, bench.values.tokens) + bench.measure(B, bench.values.tokens // (B * T)))
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            if not is_out_of_memory(e):
                raise
            raise OutOfMemory(f"batch_size={B} at block_size={T} does not fit in {bench.device} memory; "
                              f"lower --batch_size or run with --find_batch_size") from None
    bench.check_compiled()
    # the run's average: each part takes as long as its steps do (total tokens over total time), and its slowest part
    steps = [(tokens, tokens // (B * T) * m + o) for _, tokens, m, o in phases]  # (tokens, ms) of each part's step
    tokens_per_sec = sum(t for t, _ in steps) / (sum(ms for _, ms in steps) / 1000)
    step_ms = statistics.fmean(ms for _, ms in steps)
    micro_ms, opt_ms = (statistics.fmean(p[i] for p in phases) for i in (2, 3))
    grad_accum = phases[-1][1] // (B * T)
    result["phases"] = [{"window": w, "tokens": t, "micro_step_ms": m, "optimizer_step_ms": o,
                         "tokens_per_sec": t / ((t // (B * T) * m + o) / 1000)} for w, t, m, o in phases]
    flops_per_token = monitor.model_flops_per_token(bench.raw_model, T)
    gpu_name = torch.cuda.get_device_name(bench.device) if bench.device_type == "cuda" else None
    peak, peak_note = monitor.peak_flops(bench.device_type, bench.dtype, gpu_name, cfg.peak_tflops or None)
    mem, mem_kind = peak_memory_gib(bench.device)
    result = {
        "device": bench.device,
        "gpu_name": gpu_name,
        "cpu": runtime.cpu_name(),
        "cpu_threads": bench.threads,
        "torch": torch.__version__,
        "dtype": bench.dtype,
        "compile": bench.compiled,
        "memory_gib": cfg.memory_gib or None,
        "data": f"shards in {cfg.data_dir}" if cfg.use_data else "random tokens" + (
            " (no document ends: its mask removes nothing; --use_data for real documents)" if cfg.doc_mask else ""),
        "n_params": bench.raw_model.get_num_params(),
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_embd": cfg.n_embd,
        "batch_size": B,
        "block_size": T,
        "grad_accum": grad_accum,
        "optimizer": bench.optimizer.describe(),
        "activation_checkpointing": cfg.activation_checkpointing,
        "tokens_per_iter": phases[-1][1],  # (a batch-size schedule: its last part's)
        "run_tokens": schedules.tokens_in(0, cfg.max_iters, cfg),
        "micro_step_ms": micro_ms,  # one that accumulates into the gradients before it
        "optimizer_step_ms": opt_ms,
        "ms_per_iter": step_ms,
        "tokens_per_sec": tokens_per_sec,
        "flops_per_token": flops_per_token,
        "mfu": monitor.mfu(tokens_per_sec, flops_per_token, peak),
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_note": peak_note,
        "peak_mem_gb": mem,
        "peak_mem_kind": mem_kind,
        "planned_mem_gb": memory.step_bytes(bench.raw_model, cfg, bench.dtype,  # train.py --plan's figure
                                            flex=bench.raw_model.uses_flex(torch.device(bench.device)))["total"] / GIB,
        "iters": cfg.iters,
        "warmup_iters": cfg.warmup_iters_bench,
        "max_iters": cfg.max_iters,
        "run_hours": schedules.tokens_in(0, cfg.max_iters, cfg) / tokens_per_sec / 3600,  # the config's run at this speed
        **result,
    }
    return result


def format_table(r):
    mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
    mem = "n/a" if r["peak_mem_gb"] is None else f"{r['peak_mem_gb']:.2f} GiB ({r['peak_mem_kind']})"
    mem += f"; planned {r['planned_mem_gb']:.2f} GiB (train.py --plan, gptlib/memory.py)"
    machine = r["gpu_name"] or r["cpu"]
    rows = [
        ("machine", f"{machine}, {r['device']}" + ("" if r["gpu_name"] else f" ({r['cpu_threads']} torch threads)")
                    + f", torch {r['torch']}"),
        ("model", f"{monitor.human_count(r['n_params'])} params ({r['n_layer']} layers, {r['n_head']} heads, {r['n_embd']} wide)"),
        ("precision", f"{r['dtype']}, compile {r['compile']}, {r['data']}"),
        ("memory options", f"{r['optimizer']}; activation_checkpointing={r['activation_checkpointing']}"),
        *([("card", f"emulated {r['memory_gib']:g} GiB (allocator capped)")] if r["memory_gib"] else []),
        ("step", f"{r['grad_accum']} x micro-batch {r['batch_size']} x {r['block_size']} = {r['tokens_per_iter']:,} tokens"),
        ("micro-step (fwd+bwd)", f"{r['micro_step_ms']:.1f} ms"),
        ("optimizer step", f"{r['optimizer_step_ms']:.1f} ms"),
        ("ms/iter", f"{r['ms_per_iter']:.1f} ms ({monitor.plural(r['grad_accum'], 'micro-step')} + 1 optimizer step; medians of "
                    f"{r['iters']} timed steps after {r['warmup_iters']} warm-up, each up to {MAX_TIMED_MICRO_STEPS} "
                    f"micro-steps whose gradients accumulate)"),
        ("tokens/s", f"{r['tokens_per_sec']:,.0f}" + (
            f" (the run's average over {len(r['phases'])} parts; slowest {min(p['tokens_per_sec'] for p in r['phases']):,.0f} "
            f"at window {min(r['phases'], key=lambda p: p['tokens_per_sec'])['window']}: "
            + ", ".join(f"{p['window']}: {p['tokens_per_sec']:,.0f}" for p in r["phases"]) + ")"
            if len(r["phases"]) > 1 else "")),
        ("MFU", f"{mfu}  [{r['peak_note']}]"),
        ("peak memory", mem),
        ("whole run", f"{r['max_iters']:,} iters = "
                      f"{monitor.human_count(r['run_tokens'])} tokens in "
                      f"{monitor.human_time(r['run_hours'] * 3600)}; pass --tokens_per_sec={r['tokens_per_sec']:.0f} "
                      f"to train.py --plan"),
    ]
    if "max_batch_size_fits" in r:
        cap = " (the cap: raise --max_batch_size to search further)" if r["cap_reached"] else ""
        margin = "" if r["memory_margin"] is None else \
            (f"; needs {r['fit_needs_gb']:.2f} of {r['card_gb']:.2f} GiB (reserved by PyTorch + CUDA context + other "
             f"processes), {100 * r['memory_margin']:.0f}% of the card kept free")
        rows.append(("largest micro-batch", f"{r['max_batch_size_fits']}{cap}; fits: {r['fit_checks']}{margin}"))
        graphs = "" if r["search_graphs"] is None else f"; {r['search_graphs']} compiled graph(s) served every size"
        rows.append(("search", ", ".join(f"{B} {'fits' if ok else 'no'}" for B, ok in r["search"]) + graphs))
        where = ("one GPU; on N GPUs under torchrun, train.py divides the accumulation by N" if r["gpu_name"]
                 else f"one process on {r['device']}")
        rows.append(("suggested", f"--batch_size={r['batch_size']} with {monitor.plural(r['grad_accum'], 'gradient accumulation step')} "
                                  f"for total_batch_size={r['tokens_per_iter']:,} ({where})"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv):
    cfg = load_config(BenchConfig, argv)
    result = run_bench(cfg)
    print(json.dumps(result) if cfg.json else format_table(result))


if __name__ == "__main__":
    sys.exit(run_command(main))
