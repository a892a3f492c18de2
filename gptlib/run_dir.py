"""A training run's output folder, from its lock to its last checkpoint, and the signals that stop a run.

Nothing is written until every check has passed: log lines wait in `pending`, and a new run that fails before its
first checkpoint (a full or read-only disk) takes the files it created with it, so a refused or failed start
leaves out_dir as it was. Only rank 0 writes; the others call the same methods, which gather what a checkpoint
needs from every rank and write nothing.
"""
import contextlib
import dataclasses
import json
import os
import shutil
import signal

import torch

from . import monitor
from .checkpoint import BEST_NAME, CKPT_NAME, PREDECAY_NAME, remove_stale_temps, save_checkpoint
from .locks import DirLock
from .settings import format_config


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes its step, writes a checkpoint and exits with 128 + the
    signal. Under torchrun the agent forwards the signal to every worker and SIGKILLs them after its
    --shutdown_timeout (30 s by default), so the step plus the checkpoint must fit in that."""

    def __init__(self):
        self.signal = None
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second Ctrl-C: stop now, the last checkpoint is intact
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)

    def agreed(self, procs):
        """The signal every rank acts on (None: go on): under torchrun any rank's, all-reduced, so all stop
        after the same step."""
        if not procs.ddp:
            return self.signal
        flag = torch.tensor([self.signal or 0], dtype=torch.int32, device=procs.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return signal.Signals(flag.item()) if flag.item() else None


class RunDir:
    """out_dir of one run: the lock, the log (held back until the run is valid), the files it created, and the
    checkpoints with their hard links (ckpt_predecay.pt, ckpt_NNNNNNN.pt, ckpt_final_*.pt)."""

    def __init__(self, cfg, master, cleanup):
        self.cfg, self.master, self.cleanup = cfg, master, cleanup
        self.ckpt_path = os.path.join(cfg.out_dir, CKPT_NAME)
        self.best_path = os.path.join(cfg.out_dir, BEST_NAME)
        self.pending = []  # log lines held back until every check has passed: a refused run writes nothing
        self.created = []  # files this run created (removed if it fails before its first checkpoint)
        self.wrote_checkpoint = False
        self.last_good = None  # the checkpoint a failure can go back to
        self.checkpoint_bytes = 0  # a checkpoint's size with its optimizer state, for a full disk's message
        self.log_file = None

    def lock(self):
        """One train.py per out_dir (an out_dir made for the lock is removed with it if the run is refused
        before writing); temporary files a killed run left are removed under the lock."""
        if self.master:
            self.cleanup.enter_context(DirLock(self.cfg.out_dir, "train.py"))
            remove_stale_temps(self.cfg.out_dir)

    def log(self, msg):
        """A line for the terminal and log.txt, on rank 0 (held back until open())."""
        if not self.master:
            return
        if self.pending is not None:
            self.pending.append(msg)
        else:
            self._write(msg)

    def open(self, header, resumed, start_iter, keep_finished=None, changes=(), tokens=0):
        """The run is valid: from here on it writes log.txt (header, then the lines held back), config.json and
        metrics.jsonl. keep_finished: (name, iter) to keep a later ckpt.pt under. Returns the MetricsLog (None off
        rank 0)."""
        if not self.master:
            return None
        if not resumed:  # a new run that fails before its first checkpoint takes its files with it
            self.cleanup.push(lambda exc_type, exc, tb: self._remove_if_failed(exc_type))
        self.log_file = open(self._created("log.txt"), "a")
        self.cleanup.callback(self.log_file.close)
        if keep_finished:
            self._keep_finished(*keep_finished, start_iter)
        held, self.pending = self.pending, None
        for msg in list(header) + held:
            self._write(msg)
        with open(self._created("config.json"), "w") as f:
            json.dump(dataclasses.asdict(self.cfg), f, indent=1)
        metrics = monitor.MetricsLog(self._created(monitor.METRICS_FILE), resume_iter=start_iter if resumed else None)
        if resumed:  # plot.py marks where a run was resumed, and what changed there
            metrics.log("resume", start_iter, tokens=tokens, changes=[c.removeprefix("resume: ") for c in changes])
        return metrics

    def save(self, path, gather):
        """Write the checkpoint gather() makes (checkpoint.training_state: call on every rank, a collective when
        sharded) to path on rank 0; a model holding NaN/inf is never saved. True if the file was written."""
        state = gather()
        if state is None:
            return False
        if not all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()):
            self.log(f"not saving {path}: the model holds NaN/inf values")
            return False
        save_checkpoint(path, state, self.checkpoint_bytes)
        self.wrote_checkpoint = True
        if path == self.ckpt_path:
            self.last_good = path
        return True

    def checkpoint(self, it, gather, predecay=False, numbered=False):
        """ckpt.pt at iteration it, and its hard links (no copy, they survive ckpt.pt being replaced): the wsd
        extension point ckpt_predecay.pt where the decay begins, and ckpt_NNNNNNN.pt with keep_last_n."""
        saved = self.save(self.ckpt_path, gather)
        if predecay and saved:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.cfg.out_dir, PREDECAY_NAME))
            os.link(self.ckpt_path, os.path.join(self.cfg.out_dir, PREDECAY_NAME))
        if self.cfg.keep_last_n and saved and numbered:
            step_path = os.path.join(self.cfg.out_dir, f"ckpt_{it:07d}.pt")
            if not os.path.exists(step_path):
                os.link(self.ckpt_path, step_path)
            old = sorted(n for n in os.listdir(self.cfg.out_dir) if n.startswith("ckpt_") and n[5:12].isdigit())
            for name in old[:-self.cfg.keep_last_n]:
                os.remove(os.path.join(self.cfg.out_dir, name))
        return saved

    def _write(self, msg):
        print(msg, flush=True)
        self.log_file.write(msg + "\n")
        self.log_file.flush()

    def _created(self, name):
        """out_dir/name, noted as created by this run when it does not exist yet."""
        path = os.path.join(self.cfg.out_dir, name)
        if not os.path.exists(path):
            self.created.append(path)
        return path

    def _remove_if_failed(self, exc_type):
        """On the way out of a new run that failed before writing any checkpoint: remove the files it created.
        Returns False: the exception goes on."""
        if exc_type is not None and not self.wrote_checkpoint:
            for path in self.created:
                with contextlib.suppress(OSError):
                    os.remove(path)
        return False

    def _keep_finished(self, name, it, start_iter):
        """A hard link: the finished model this resume would replace stays, under its own name (and its metrics)."""
        out = self.cfg.out_dir
        os.link(self.ckpt_path, os.path.join(out, name))
        metrics_path = os.path.join(out, monitor.METRICS_FILE)
        if os.path.exists(metrics_path):
            shutil.copyfile(metrics_path, os.path.join(out, name.replace("ckpt_", "metrics_").replace(".pt", ".jsonl")))
        self.pending.append(f"resume: {self.ckpt_path} held iter {it}, later than this resume from iter {start_iter}: "
                            f"kept as {name} (and its metrics), so this run's ckpt.pt replaces nothing")
