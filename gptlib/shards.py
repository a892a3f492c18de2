"""The token-shard format: one module that every reader and writer uses.

A dataset is a directory holding
    train_000000.npy, train_000001.npy, ...      training shards
    val_000000.npy, ...                           the main validation set
    val-python_000000.npy, ...                    optional named validation sets
    manifest.json                                 see `new_manifest`

Each shard is a 1-D uint16 .npy file of GPT-2 BPE tokens, with numpy's standard 128-byte header.
Convention: an <|endoftext|> token (EOT, 50256) comes *before* every document (as in llm.c's
fineweb.py). Shards hold `shard_tokens` tokens (default 100M) and are filled exactly, so a document
may continue from one shard into the next: the first shard of a split starts with EOT, later ones
usually start mid-document. A split is meant to be read as one stream, its shards in order.

manifest.json records each shard's token count and CRC-32 checksum. Readers (ShardReader) check
every shard's header and size against it when they open it, and its checksum and token ids the
first time a process reads it, so a changed, swapped, truncated or damaged shard is one DataError
line, never silently wrong data or a crash. They read with positioned reads, one shard open at a
time: memory stays flat whatever the number of shards, and a shard truncated under a running
reader is an error, not a SIGBUS from a memory map.
"""
import contextlib
import errno
import json
import os
import re
import zlib

import numpy as np

from . import paths
from .errors import DataError

FORMAT_VERSION = 1
TOKENIZER = "gpt2"
VOCAB_SIZE = 50257  # GPT-2 BPE vocabulary; every token id is below this
EOT = 50256  # <|endoftext|>, placed before every document
DTYPE = np.uint16
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB per shard
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^(?P<split>[A-Za-z0-9][A-Za-z0-9.\-]*)_(?P<index>\d{6})\.npy$")


# ----------------------------------------------------------------------------- names

def shard_name(split, index):
    return f"{split}_{index:06d}.npy"


def list_shards(data_dir, split):
    """Sorted paths of the shards of one split ('train', 'val', 'val-python', ...)."""
    bad = paths.problem(data_dir, "dir")
    if bad and bad[0] == "missing":
        raise DataError(f"data dir {data_dir!r} does not exist; run prepare_fineweb.py or prepare_github_code.py to create it")
    if bad:
        raise DataError(f"data dir: {bad[1]}; give the folder a prepare script wrote (--data_dir)")
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
        "checksums": {},  # file name -> "crc32:xxxxxxxx" of its tokens' bytes
        "sources": list(sources or []),  # input files the dataset was made from
        "args": dict(args or {}),  # the arguments that created the dataset
    }


def write_json_atomic(path, obj):
    """A temporary file, fsync, rename: the old file or the whole new one, and no temporary left on failure."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def split_of(name):
    """'train_000003.npy' -> 'train'; None for a file that is not a shard."""
    m = _SHARD_RE.match(name)
    return m.group("split") if m else None


def split_tokens(manifest, split):
    """Tokens of one split, as the manifest records them."""
    return sum(n for name, n in manifest["shards"].items() if split_of(name) == split)


def check_dataset(data_dir):
    """The manifest of a dataset a run can read: complete (no prepare interrupted or still writing), and
    listing exactly the shards that are there, with their lengths. Anything else is one DataError line."""
    m = read_manifest(data_dir)
    if not m.get("progress", {}).get("complete", True):
        raise DataError(f"{data_dir} is not completely prepared (its prepare run was interrupted or is still "
                        f"running); re-run the same prepare command to finish it")
    on_disk = {os.path.basename(p) for s in list_splits(data_dir) for p in list_shards(data_dir, s)}
    listed = set(m["shards"])
    if on_disk != listed:
        extra, missing = sorted(on_disk - listed), sorted(listed - on_disk)
        what = f"{extra[0]} is not in its manifest.json" if extra else f"{missing[0]} is missing"
        raise DataError(f"{data_dir} does not match its manifest.json ({what}); re-create the dataset with the "
                        f"prepare scripts (--overwrite)")
    for name in sorted(listed):  # headers and sizes only: cheap; checksums are checked as shards are read
        ShardReader(os.path.join(data_dir, name), expected=m["shards"][name]).close()
    return m


# ----------------------------------------------------------------------------- writing

def checksum(crc):
    return f"crc32:{crc & 0xFFFFFFFF:08x}"


def write_shard(path, tokens):
    """Write one shard atomically: a temporary file, fsync, then rename; returns its checksum.
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
        return checksum(zlib.crc32(memoryview(np.ascontiguousarray(tokens)).cast("B")))
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
    is split across shards, so shards are exactly full. The CRC-32 of each shard's tokens is
    computed as they stream by. `on_shard(name, ntokens, checksum)` is called after each shard
    is safely on disk.

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
        self.checksums = {}  # shard file name -> checksum
        self.crc = 0  # CRC-32 of the tokens in the shard being filled
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
                data = memoryview(np.ascontiguousarray(tokens[pos:pos + n], dtype=DTYPE)).cast("B")
                self.file.write(data)
                self.crc = zlib.crc32(data, self.crc)
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
        self.checksums[name] = checksum(self.crc)
        if self.on_shard is not None:
            self.on_shard(name, int(self.fill), self.checksums[name])
        self.index += 1
        self.fill, self.crc = 0, 0

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
        return {"index": self.index, "fill": self.fill, "total_tokens": self.total_tokens, "crc": self.crc}

    def load_state_dict(self, state):
        """Continue from a state returned by sync() before a crash: the shard being filled
        then is reopened and cut back to the tokens it held at that point."""
        self.index, self.fill, self.total_tokens = state["index"], state["fill"], state["total_tokens"]
        self.crc = state.get("crc", 0)
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
        if "crc" not in state:  # a state saved by an older version: checksum what the .tmp keeps
            self.file.seek(NPY_HEADER_BYTES)
            self.crc = zlib.crc32(self.file.read(want - NPY_HEADER_BYTES))
        self.file.seek(want)

    def close(self):
        """Write the last, possibly shorter, shard."""
        with self._disk_full_is_data_error():
            self._finish()
        return self.written


# ----------------------------------------------------------------------------- reading

TOKEN_BYTES = np.dtype(DTYPE).itemsize
CHECK_TOKENS = 1 << 23  # tokens read at a time to checksum a shard (16 MB)
_HEADER_RE = re.compile(rb"\x93NUMPY\x01\x00v\x00\{'descr': '<u2', 'fortran_order': False, 'shape': \((\d+),\), \} *\n")
_verified = set()  # (path, size, mtime, checksum) this process has checked: each shard is checksummed once


def _describe_npy(path, f):
    """What a .npy file that is not a shard holds, for the error message (numpy parses the header)."""
    from numpy.lib import format as npy
    try:
        f.seek(0)
        version = npy.read_magic(f)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, _, dtype = read(f)
    except Exception:  # a damaged header fails in many ways (ValueError, tokenize.TokenError, SyntaxError...)
        return f"shard {path} has a damaged .npy header"
    return f"shard {path} is {dtype} with shape {shape}, expected 1-D uint16 GPT-2 tokens"


class ShardReader:
    """One shard, opened after checking its header and size (and the manifest's token count, if given).
    verify(checksum) reads it once to check the manifest's CRC-32 and that every id is a GPT-2 token.
    read(start, n) is a positioned read; a shard cut short under a running reader is a DataError."""

    def __init__(self, path, expected=None):
        self.path = path
        try:
            self.file = open(path, "rb", buffering=0)
        except OSError as e:
            raise DataError(f"shard {path} is unreadable ({e.strerror}); re-create the dataset with the prepare "
                            f"scripts") from None
        try:
            m = _HEADER_RE.fullmatch(self.file.read(NPY_HEADER_BYTES))
            if not m or npy_header(int(m.group(1))) != m.group(0):
                raise DataError(f"{_describe_npy(path, self.file)}; re-create it with the prepare scripts")
            self.length = int(m.group(1))
            size = os.fstat(self.file.fileno()).st_size
            if size != NPY_HEADER_BYTES + TOKEN_BYTES * self.length:
                raise DataError(f"shard {path} is {size:,} bytes but its header says {self.length:,} tokens "
                                f"({NPY_HEADER_BYTES + TOKEN_BYTES * self.length:,} bytes): it was truncated or "
                                f"damaged; re-create the dataset")
            if expected is not None and expected != self.length:
                raise DataError(f"shard {path} holds {self.length:,} tokens but manifest.json says {expected:,}: the "
                                f"dataset was changed after it was prepared; re-create it")
        except BaseException:
            self.file.close()
            raise

    def __len__(self):
        return self.length

    def read(self, start, n):
        """Tokens [start, start + n) as a uint16 array."""
        out = np.empty(n, dtype=DTYPE)
        view, got = memoryview(out).cast("B"), 0
        self.file.seek(NPY_HEADER_BYTES + TOKEN_BYTES * start)
        while got < len(view):
            k = self.file.readinto(view[got:])
            if not k:
                raise DataError(f"shard {self.path} ended early while being read: it was truncated or replaced "
                                f"under this run (the last checkpoint is intact); re-create the dataset, then resume")
            got += k
        return out

    def verify(self, want):
        """Check the manifest's checksum (and that every id is below VOCAB_SIZE), once per process."""
        st = os.stat(self.path)
        key = (os.path.abspath(self.path), st.st_size, st.st_mtime_ns, want)
        if key in _verified:
            return
        crc, top = 0, 0
        for lo in range(0, self.length, CHECK_TOKENS):
            chunk = self.read(lo, min(CHECK_TOKENS, self.length - lo))
            crc = zlib.crc32(memoryview(chunk).cast("B"), crc)
            top = max(top, int(chunk.max()))
        if checksum(crc) != want:
            raise DataError(f"shard {self.path} does not match the checksum in manifest.json ({checksum(crc)}, "
                            f"recorded {want}): it was changed, damaged or swapped after prepare; re-create the "
                            f"dataset (or pass --verify_data=False to use it anyway)")
        if top >= VOCAB_SIZE:
            raise DataError(f"shard {self.path} holds token id {top} >= vocab size {VOCAB_SIZE}: not GPT-2 tokens; "
                            f"re-create the dataset with the prepare scripts")
        _verified.add(key)

    def close(self):
        self.file.close()


def read_shard(path):
    """A whole shard in memory (tests and small tools; the loader reads pieces)."""
    r = ShardReader(path)
    try:
        return r.read(0, len(r))
    finally:
        r.close()


def shard_lengths(paths):
    """Token counts of shards, read from their headers only."""
    lengths = []
    for p in paths:
        r = ShardReader(p)
        lengths.append(len(r))
        r.close()
    return lengths


def fingerprint(manifest, split):
    """A short id of a split's exact contents (names, token counts, checksums), kept in checkpoints so a
    resume on other data with the same token count is refused."""
    import hashlib
    items = sorted((n, manifest["shards"][n], manifest.get("checksums", {}).get(n, ""))
                   for n in manifest["shards"] if split_of(n) == split)
    return hashlib.blake2b(json.dumps(items).encode(), digest_size=8).hexdigest()
