"""The training loader: a split's shards read as one resumable stream of sequences.

Every epoch the shards are visited in an order shuffled per epoch (seeded, without replacement).
Two orders within a shard (the `data_order` setting):
    'stream'   the shard front to back: consecutive sequences are adjacent text (the classic loader)
    'windows'  the shard cut into block_size windows visited in an order shuffled per (epoch, shard),
               so one batch mixes documents from all over the shard (for github-code: many repositories)
Either way every token is seen once per epoch and the state is one global position (epoch, offset)
that does not depend on the micro-batch or the number of ranks: rank r of W reads the r-th slice of
each global batch, and a run resumed with another world size continues on exactly the next unread
sequences. Only the epoch's tail shorter than one global batch is dropped.

The shard format and its checks are shards.py's; the loader opens one shard at a time and checks each
shard's checksum the first time this process reads it (verify=True).
"""
import os

import numpy as np
import torch

from .errors import DataError
from .shards import VOCAB_SIZE, ShardReader, fingerprint, list_shards, read_manifest, shard_lengths

ORDERS = ("stream", "windows")


class TokenLoader:
    """Yields (x, y) int64 batches of shape (B, T) from one split of a dataset, resumably (see module doc)."""

    def __init__(self, data_dir, split, B, T, rank=0, world_size=1, seed=1337, shuffle=True, order="stream",
                 verify=True):
        assert order in ORDERS
        self.paths = list_shards(data_dir, split)
        if not self.paths:
            raise DataError(f"no '{split}' shards ({split}_000000.npy, ...) in {data_dir}; run a prepare script to create them")
        self.data_dir, self.split, self.B, self.T = data_dir, split, B, T
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        manifest = read_manifest(data_dir, required=False) or {"shards": {}}
        self.expected = manifest["shards"]
        self.checksums = manifest.get("checksums", {}) if verify else {}
        self.dataset = fingerprint(manifest, split) if manifest["shards"] else None
        self.lengths = shard_lengths(self.paths)
        self.total_tokens = sum(self.lengths)
        self._set_order(order)
        self.epoch, self.offset = 0, 0
        self._set_epoch(0)

    def _set_order(self, order):
        # units: tokens ('stream') or block_size windows ('windows'); a sequence is T units or 1 window
        self.order_kind = order
        self.units = list(self.lengths) if order == "stream" else [max(0, (n - 1) // self.T) for n in self.lengths]
        if self._epoch_units() < self._per_batch():
            raise DataError(f"split '{self.split}' in {self.data_dir} has {self.total_tokens:,} tokens, fewer than one "
                            f"batch ({self.world_size}x{self.B}x{self.T}+1); lower batch_size or block_size, or "
                            f"prepare more data")

    def _per_batch(self):
        """Units one global batch consumes (+1 in stream order: the last target)."""
        W, B, T = self.world_size, self.B, self.T
        return W * B * T + 1 if self.order_kind == "stream" else W * B

    def _epoch_units(self):
        return sum(self.units)

    def _set_epoch(self, epoch):
        self.epoch = epoch
        order = np.arange(len(self.paths))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        self.shard_order = order
        self.starts = np.concatenate([[0], np.cumsum([self.units[i] for i in order])])  # first unit of each shard
        self._close()

    def _close(self):
        if getattr(self, "_open", None) and self._open[1] is not None:
            self._open[1].close()
        self._open = (None, None, None)  # (position in shard order, reader, window permutation)

    def _shard(self, k):
        """(reader, window order) of the k-th shard of this epoch; only one is open at a time."""
        if self._open[0] != k:
            self._close()
            i = int(self.shard_order[k])
            name = os.path.basename(self.paths[i])
            reader = ShardReader(self.paths[i], expected=self.expected.get(name))
            if name in self.checksums:
                reader.verify(self.checksums[name])
            perm = None
            if self.order_kind == "windows":
                perm = np.arange(self.units[i])
                if self.shuffle:
                    perm = np.random.default_rng([self.seed, self.epoch, i]).permutation(perm)
            self._open = (k, reader, perm)
        return self._open[1], self._open[2]

    def _read_stream(self, start, n):
        """n tokens of this epoch's stream from offset `start`, crossing shards as needed."""
        out = np.empty(n, dtype=np.int64)
        got = 0
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while got < n:
            reader, _ = self._shard(k)
            lo = start + got - self.starts[k]
            take = min(n - got, len(reader) - lo)
            out[got:got + take] = reader.read(lo, take)
            got += take
            k += 1
        return out

    def _read_windows(self, start, n):
        """n windows of T+1 tokens, from window `start` of this epoch's order: (n, T+1)."""
        T = self.T
        out = np.empty((n, T + 1), dtype=np.int64)
        for j in range(n):
            pos = start + j
            k = int(np.searchsorted(self.starts, pos, side="right")) - 1
            reader, perm = self._shard(k)
            out[j] = reader.read(int(perm[pos - self.starts[k]]) * T, T + 1)
        return out

    def next_batch(self):
        """The next (x, y) of this rank, each (B, T) int64 on the CPU."""
        B, T, W = self.B, self.T, self.world_size
        if self.offset + self._per_batch() > self._epoch_units():
            self._set_epoch(self.epoch + 1)
            self.offset = 0
        if self.order_kind == "stream":
            buf = self._read_stream(self.offset + self.rank * B * T, B * T + 1)
            self.offset += W * B * T
            x, y = buf[:-1].reshape(B, T), buf[1:].reshape(B, T)  # (B*T+1,) -> inputs and targets shifted by one
        else:
            buf = self._read_windows(self.offset + self.rank * B, B)
            self.offset += W * B
            x, y = buf[:, :-1], buf[:, 1:]  # (B, T+1) -> inputs (B, T) and targets shifted by one
        self._check_ids(buf)
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))

    def _check_ids(self, buf):
        if buf.max() >= VOCAB_SIZE:
            raise DataError(f"split '{self.split}' holds token id {int(buf.max())} >= vocab size {VOCAB_SIZE}: "
                            f"not GPT-2 tokens; re-create the dataset with the prepare scripts")

    def read_tokens(self, start, n):
        """n tokens (int64) from token offset `start` of the split, its shards in file order (an unshuffled
        'stream' loader: evals read fixed windows this way)."""
        assert self.order_kind == "stream" and not self.shuffle
        buf = self._read_stream(start, n)
        self._check_ids(buf)
        return buf

    def check(self):
        """Open (and verify) the shard the next batch comes from, so bad data fails before a run starts."""
        if self.offset + self._per_batch() <= self._epoch_units():
            k = int(np.searchsorted(self.starts, self.offset, side="right")) - 1
            self._shard(k)

    def state_dict(self):
        return {"split": self.split, "seed": self.seed, "epoch": self.epoch, "offset": self.offset,
                "order": self.order_kind, "block_size": self.T, "num_shards": len(self.paths),
                "total_tokens": self.total_tokens, "dataset": self.dataset}

    def load_state_dict(self, state):
        if state["num_shards"] != len(self.paths) or state["total_tokens"] != self.total_tokens:
            raise DataError(f"the '{self.split}' shards changed since the checkpoint ({state['num_shards']} shards, "
                            f"{state['total_tokens']:,} tokens then; {len(self.paths)} and {self.total_tokens:,} now); "
                            f"resume on the same data, or start a new run in another --out_dir")
        if state.get("dataset") and self.dataset and state["dataset"] != self.dataset:
            raise DataError(f"{self.data_dir} holds other '{self.split}' data than the checkpoint was trained on "
                            f"(the same token count, but other shards or contents); resume on the same data_dir, "
                            f"or start a new run in another --out_dir")
        if state.get("order", "stream") != self.order_kind:  # the run's own order, as its seed: it continues exactly
            self._set_order(state.get("order", "stream"))
        self.seed = state["seed"]
        self._set_epoch(state["epoch"])
        offset = state["offset"]
        old_T = state.get("block_size", self.T)
        if self.order_kind == "windows" and old_T != self.T:
            # windows of another size: continue at the same point of the epoch (a few windows may repeat)
            offset = -(-offset * old_T // self.T)
        self.offset = offset
