"""The token-shard format: one module that every reader and writer uses.

A dataset is a directory holding
    train_000000.npy, train_000001.npy, ...      training shards
    val_000000.npy, ...                           the main validation set
    val-python_000000.npy, ...                    optional named validation sets
    manifest.json                                 see `new_manifest`

Each shard is a 1-D uint16 .npy file of GPT-2 BPE tokens. Convention: an
<|endoftext|> token (EOT, 50256) comes *before* every document, so a shard
starts with EOT and every document is preceded by one (as in llm.c's fineweb.py).
Shards hold `shard_tokens` tokens (default 100M); the last one of a split may be shorter.
Readers memory-map shards and keep at most one open, so memory stays flat
whatever the number of shards.
"""
import contextlib
import errno
import json
import os
import re

import numpy as np

FORMAT_VERSION = 1
TOKENIZER = "gpt2"
VOCAB_SIZE = 50257  # GPT-2 BPE vocabulary; every token id is below this
EOT = 50256  # <|endoftext|>, placed before every document
DTYPE = np.uint16
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per shard
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9][A-Za-z0-9.\-]*)_(?P<index>\d{6})\.npy$")


class DataError(Exception):
    """A problem with a dataset directory or shard, with a message that says how to fix it."""


# ----------------------------------------------------------------------------- names

def shard_name(split, index):
    return f"{split}_{index:06d}.npy"


def list_shards(data_dir, split):
    """Sorted paths of the shards of one split ('train', 'val', 'val-python', ...)."""
    if not os.path.isdir(data_dir):
        raise DataError(f"data dir {data_dir!r} does not exist; run prepare_fineweb.py or prepare_github_code.py to create it")
    names = []
    for name in os.listdir(data_dir):
        m = _SHARD_RE.match(name)
        if m and m.group("split") == split:
            names.append(name)
    return [os.path.join(data_dir, n) for n in sorted(names)]


def list_splits(data_dir):
    """Names of all splits present in data_dir, e.g. ['train', 'val', 'val-python']."""
    if not os.path.isdir(data_dir):
        return []
    found = {m.group("split") for m in map(_SHARD_RE.match, os.listdir(data_dir)) if m}
    return sorted(found)


def gpt2_encoding():
    """tiktoken's GPT-2 BPE, the tokenizer of every shard."""
    import tiktoken
    try:
        return tiktoken.get_encoding(TOKENIZER)
    except Exception as e:  # tiktoken downloads its files on first use: offline, this fails with network errors
        raise DataError(f"cannot load the GPT-2 tokenizer ({type(e).__name__}); connect once so tiktoken can cache "
                        f"it, or set TIKTOKEN_CACHE_DIR to a folder that holds its files") from None


# ----------------------------------------------------------------------------- manifest

def new_manifest(args=None, sources=None):
    """The manifest of a new dataset; writers fill `shards` and `sources` as they go."""
    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": TOKENIZER,
        "vocab_size": VOCAB_SIZE,
        "eot_token": EOT,
        "eot_position": "before_each_document",
        "dtype": np.dtype(DTYPE).name,
        "shards": {},  # file name -> token count
        "sources": list(sources or []),  # input files the dataset was made from
        "args": dict(args or {}),  # the arguments that created the dataset
    }


def write_json_atomic(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_manifest(data_dir, manifest):
    write_json_atomic(os.path.join(data_dir, MANIFEST), manifest)


def read_manifest(data_dir, required=True):
    """The dataset's manifest, checked against this format. None if absent and not required."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        if required:
            raise DataError(f"{path} is missing; re-create the dataset with prepare_fineweb.py or prepare_github_code.py")
        return None
    try:
        with open(path) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path} is not readable JSON ({e}); re-create the dataset") from None
    if not isinstance(m, dict):
        raise DataError(f"{path} is not a manifest (expected a JSON object); re-create the dataset")
    for key, want in (("format_version", FORMAT_VERSION), ("tokenizer", TOKENIZER),
                      ("vocab_size", VOCAB_SIZE), ("dtype", np.dtype(DTYPE).name)):
        if m.get(key) != want:
            raise DataError(f"{path}: {key} is {m.get(key)!r}, this code reads {want!r}; re-create the dataset with this version's prepare scripts")
    return m


# ----------------------------------------------------------------------------- writing

def write_shard(path, tokens):
    """Write one shard atomically: a temporary file, fsync, then rename.
    A crash leaves either the old file or the complete new one, never a partial shard."""
    tokens = np.asarray(tokens)
    if tokens.dtype != DTYPE or tokens.ndim != 1:
        raise ValueError(f"a shard is a 1-D {np.dtype(DTYPE).name} array, got {tokens.dtype} {tokens.shape}")
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, tokens, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise DataError(f"disk full while writing {path} (nothing partial was left); free some space or "
                            f"choose another out_dir, then re-run: it resumes") from None
        raise


def npy_header(ntokens):
    """The .npy header of a 1-D shard of ntokens tokens. numpy pads the length field to
    21 digits (GROWTH_AXIS_MAX_DIGITS), so the header has the same size (NPY_HEADER_BYTES)
    whatever ntokens is: a shard can be streamed behind a placeholder and its header
    rewritten in place at the end. Byte-identical to what np.save writes."""
    import io
    from numpy.lib import format as npy
    buf = io.BytesIO()
    npy.write_array_header_1_0(buf, {"descr": npy.dtype_to_descr(np.dtype(DTYPE)), "fortran_order": False,
                                     "shape": (int(ntokens),)})
    return buf.getvalue()


NPY_HEADER_BYTES = len(npy_header(0))  # 128; the same for any shard length
WRITE_BUFFER = 1 << 20  # bytes buffered in memory before each write to the .tmp file


class ShardWriter:
    """Packs token arrays into fixed-size shards, streaming them to disk.

    The shard being filled is `<name>.tmp`: a placeholder .npy header, then the tokens as
    they are added. When it is full (or at close()) the header is rewritten with the real
    length, the file is fsynced and renamed, so a file named like a shard is always complete.
    Memory is a WRITE_BUFFER whatever the shard size. A document longer than the space left
    is split across shards, so shards are exactly full. `on_shard(name, ntokens)` is called
    after each shard is safely on disk.

    Resumable: sync() makes the .tmp durable and returns a state; load_state_dict(state)
    after a crash truncates the .tmp back to that state (tokens added after it are dropped,
    the caller re-adds them) and continues appending.
    """

    def __init__(self, out_dir, split, shard_tokens=DEFAULT_SHARD_TOKENS, start_index=0, on_shard=None):
        assert shard_tokens > 0
        self.out_dir, self.split, self.shard_tokens = out_dir, split, shard_tokens
        self.index = start_index  # index of the shard being filled
        self.fill = 0  # tokens in the shard being filled
        self.file = None  # the open .tmp file, once a token was added
        self.on_shard = on_shard
        self.written = {}  # shard file name -> token count
        self.total_tokens = 0

    def _paths(self):
        path = os.path.join(self.out_dir, shard_name(self.split, self.index))
        return path, path + ".tmp"

    def add(self, tokens):
        """Append tokens (any integer array-like, all < VOCAB_SIZE)."""
        tokens = np.asarray(tokens)
        pos = 0
        with self._disk_full_is_data_error():
            while pos < len(tokens):
                if self.file is None:
                    self.file = open(self._paths()[1], "wb", buffering=WRITE_BUFFER)
                    self.file.write(npy_header(0))  # placeholder, rewritten by _finish
                n = min(len(tokens) - pos, self.shard_tokens - self.fill)
                self.file.write(memoryview(np.ascontiguousarray(tokens[pos:pos + n], dtype=DTYPE)))
                self.fill += n
                pos += n
                if self.fill == self.shard_tokens:
                    self._finish()
        self.total_tokens += len(tokens)

    def _finish(self):
        """Give the .tmp its real header, make it durable, rename it to the shard's name."""
        if self.file is None:
            return
        path, tmp = self._paths()
        self.file.seek(0)
        self.file.write(npy_header(self.fill))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        self.file = None
        os.replace(tmp, path)
        name = os.path.basename(path)
        self.written[name] = int(self.fill)
        if self.on_shard is not None:
            self.on_shard(name, int(self.fill))
        self.index += 1
        self.fill = 0

    @contextlib.contextmanager
    def _disk_full_is_data_error(self):
        try:
            yield
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            if self.file is not None:  # what it holds is the caller's to keep or cut: abort(state)
                f, self.file = self.file, None
                with contextlib.suppress(OSError):  # its buffered tail cannot be written either
                    f.close()
            raise DataError(f"disk full while writing {self._paths()[1]} (no partial shard was left); free some "
                            f"space or choose another out_dir, then re-run: it resumes") from None

    def abort(self, state=None):
        """After a failure: close the .tmp and cut it back to `state` (from a sync() whose
        result the caller saved; a resume re-adds the rest), or remove it if `state` needs
        nothing of it, giving the space back."""
        if self.file is not None:
            f, self.file = self.file, None
            with contextlib.suppress(OSError):  # the buffered tail may not be writable either; cut below
                f.close()
        tmp = self._paths()[1]
        keep = state["fill"] if state and state["index"] == self.index else 0
        with contextlib.suppress(OSError):
            if keep:
                os.truncate(tmp, NPY_HEADER_BYTES + keep * np.dtype(DTYPE).itemsize)
            elif os.path.exists(tmp):
                os.remove(tmp)

    def sync(self):
        """Make every token added so far durable; returns the state to resume from."""
        if self.file is not None:
            with self._disk_full_is_data_error():
                self.file.flush()
                os.fsync(self.file.fileno())
        return self.state_dict()

    def state_dict(self):
        return {"index": self.index, "fill": self.fill, "total_tokens": self.total_tokens}

    def load_state_dict(self, state):
        """Continue from a state returned by sync() before a crash: the shard being filled
        then is reopened and cut back to the tokens it held at that point."""
        self.index, self.fill, self.total_tokens = state["index"], state["fill"], state["total_tokens"]
        if self.fill == 0:
            return
        path, tmp = self._paths()
        if not os.path.exists(tmp) and os.path.exists(path):
            os.replace(path, tmp)  # it was completed after the sync; its first `fill` tokens are the same
        want = NPY_HEADER_BYTES + self.fill * np.dtype(DTYPE).itemsize
        if not os.path.exists(tmp) or os.path.getsize(tmp) < want or self.fill >= self.shard_tokens:
            raise DataError(f"{tmp} should hold the first {self.fill:,} tokens of shard '{self.split}' "
                            f"{self.index} and does not; re-run with --overwrite")
        self.file = open(tmp, "r+b", buffering=WRITE_BUFFER)
        self.file.truncate(want)
        self.file.seek(want)

    def close(self):
        """Write the last, possibly shorter, shard."""
        with self._disk_full_is_data_error():
            self._finish()
        return self.written


# ----------------------------------------------------------------------------- reading

def open_shard(path):
    """Memory-map a shard (no data is read until used) after checking its format."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"shard {path} is unreadable ({e}); delete it and re-run the prepare script") from None
    if arr.dtype != DTYPE or arr.ndim != 1:
        raise DataError(f"shard {path} is {arr.dtype} with shape {arr.shape}, expected 1-D uint16 GPT-2 tokens; re-create it with the prepare scripts")
    return arr


def shard_lengths(paths):
    """Token counts of shards, read from the .npy headers only."""
    lengths = []
    for p in paths:
        lengths.append(len(open_shard(p)))
    return lengths


class TokenLoader:
    """Yields (x, y) batches of shape (B, T) from one split, resumably.

    The split is read as one continuous token stream: the shards concatenated in an
    order shuffled per epoch (seeded, without replacement), so every token is seen once
    per epoch and batches may straddle shard boundaries. Each call to next_batch
    consumes world*B*T tokens of the stream; rank r takes the r-th B*T slice, so ranks
    read disjoint data. The state is one global position (epoch, offset) that does not
    depend on B or world size, so a run resumed with another micro-batch or number of
    ranks continues where the stream stopped. Only the epoch's tail shorter than one
    global batch is dropped.
    """

    def __init__(self, data_dir, split, B, T, rank=0, world_size=1, seed=1337, shuffle=True):
        self.paths = list_shards(data_dir, split)
        if not self.paths:
            raise DataError(f"no '{split}' shards ({split}_000000.npy, ...) in {data_dir}; run a prepare script to create them")
        self.split, self.B, self.T = split, B, T
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.lengths = shard_lengths(self.paths)
        self.total_tokens = sum(self.lengths)
        if self.total_tokens < world_size * B * T + 1:
            raise DataError(f"split '{split}' in {data_dir} has {self.total_tokens:,} tokens, fewer than one batch "
                            f"({world_size}x{B}x{T}+1); lower batch_size or block_size, or prepare more data")
        self.epoch, self.offset = 0, 0
        self._set_epoch(0)

    def _set_epoch(self, epoch):
        self.epoch = epoch
        order = np.arange(len(self.paths))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        self.order = order
        self.starts = np.concatenate([[0], np.cumsum([self.lengths[i] for i in order])])  # stream offset of each shard
        self._open = (None, None)  # (position in order, memmap): only one shard is open

    def _shard(self, k):
        if self._open[0] != k:
            self._open = (k, open_shard(self.paths[self.order[k]]))
        return self._open[1]

    def _read(self, start, n):
        """n tokens of this epoch's stream from offset start."""
        out = np.empty(n, dtype=np.int64)
        got = 0
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        while got < n:
            shard = self._shard(k)
            lo = start + got - self.starts[k]
            take = min(n - got, len(shard) - lo)
            out[got:got + take] = shard[lo:lo + take]
            got += take
            k += 1
        return out

    def next_batch(self):
        import torch
        B, T, W = self.B, self.T, self.world_size
        if self.offset + W * B * T + 1 > self.total_tokens:
            self._set_epoch(self.epoch + 1)
            self.offset = 0
        buf = self._read(self.offset + self.rank * B * T, B * T + 1)
        self.offset += W * B * T
        if buf.max() >= VOCAB_SIZE:
            raise DataError(f"split '{self.split}' holds token id {int(buf.max())} >= vocab size {VOCAB_SIZE}: "
                            f"not GPT-2 tokens; re-create the dataset with the prepare scripts")
        buf = torch.from_numpy(buf)
        x = buf[:-1].view(B, T)  # (B*T+1,) -> (B, T) inputs
        y = buf[1:].view(B, T)  # targets, shifted by one
        return x, y

    def state_dict(self):
        return {"split": self.split, "seed": self.seed, "epoch": self.epoch, "offset": self.offset,
                "num_shards": len(self.paths), "total_tokens": self.total_tokens}

    def load_state_dict(self, state):
        if state["num_shards"] != len(self.paths) or state["total_tokens"] != self.total_tokens:
            raise DataError(f"the '{self.split}' shards changed since the checkpoint ({state['num_shards']} shards, "
                            f"{state['total_tokens']:,} tokens then; {len(self.paths)} and {self.total_tokens:,} now); "
                            f"resume on the same data, or start with init_from='scratch'")
        self.seed = state["seed"]
        self._set_epoch(state["epoch"])
        self.offset = state["offset"]
