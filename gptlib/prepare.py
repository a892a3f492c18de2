"""The data pipeline shared by prepare_fineweb.py and prepare_github_code.py.

    parquet files --(pyarrow record batches)--> texts --(tiktoken, threaded)--> token arrays
      --(EOT before each document)--> ShardWriter per split --> train_*.npy, val_*.npy, ...

Memory stays flat whatever the data size: files are read one record batch at a time, at
most QUEUE_BATCHES encoded batches wait between the reader thread and the writer, and each
split streams its tokens straight into its shard's .tmp file (shards.ShardWriter), so no
shard is ever held in memory.

Resumable: after every batch in which a shard was written (and after every input file) the
writers' .tmp files are fsynced and the manifest records the input position, counters and
writer states (shard index, tokens in its .tmp). A re-run after a crash (even kill -9) cuts
the .tmp files back to that point and restarts from there, producing byte-identical shards,
because every decision (split, filters) is a deterministic function of the documents in
input order.

The scripts supply a DatasetSpec (columns, filters, how val documents are chosen) and a
list of sources; everything else lives here once.
"""
import codecs
import contextlib
import dataclasses
import errno
import glob
import functools
import hashlib
import json
import os
import queue
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import locks, monitor, shards
from . import paths as paths_mod  # (this module names its file lists "paths")
from .errors import ConfigError, DataError, Interrupted, short
from .locks import DirLock
from .settings import setting
from .shards import EOT

READ_BUFFER = 1 << 20  # bytes read from a parquet file at a time
BYTES_PER_TOKEN = 4.0  # rough UTF-8 bytes per GPT-2 token of English text, to size the input before a pass
QUEUE_BATCHES = 2  # encoded chunks buffered between the reader thread and the writer
CHUNK_CHARS = 1 << 21  # characters of text encoded at once (~0.6-1M tokens, a few MB as uint32 arrays)
PIECE_CHARS = 1 << 20  # a longer document is tokenized in pieces of at most this many characters (encode_ordinary)
HIST_PNG = "doc_lengths.png"  # --stats writes the document-length histogram here, inside the dataset dir
STATS_CHUNK = 1 << 24  # tokens scanned at a time by --stats (bounded memory on 100M-token shards)
PERCENTILES = (10, 50, 90, 99)  # document-length percentiles printed by --stats


@dataclass
class PrepareConfig:
    out_dir: str = setting("", path="dir")  # output directory of shards and manifest.json; '': data/<dataset>
    data_files: str = setting("")  # local .parquet, .jsonl or .txt files or directories of them, comma-separated paths or globs; never touches the network
    txt_documents: str = setting("paragraphs", choices=["paragraphs", "lines", "file"])  # .txt inputs: what one document is (blank-line-separated blocks, single lines, or the whole file)
    encoding: str = setting("utf-8")  # text encoding of .txt and .jsonl inputs (Python's codec names: utf-16 for a file with a byte-order mark or NULs between its characters, latin-1, cp1252, ...)
    num_files: int = setting(1, ge=1)  # download mode (no data_files): how many parquet files of the dataset to fetch
    revision: str = setting("main")  # download mode: hub branch, tag or commit; the resolved commit goes in manifest.json
    shard_tokens: int = setting(shards.DEFAULT_SHARD_TOKENS, ge=1)  # tokens per shard (2 bytes each)
    val_tokens: int = setting(10_000_000, ge=0)  # tokens (whole documents) sent to the 'val' split
    batch_rows: int = setting(256, ge=1)  # documents per parquet record batch; peak memory grows with it (x document size)
    num_threads: int = setting(0, ge=0)  # tokenizer threads; 0: all CPU cores
    overwrite: bool = setting(False)  # replace a dataset already in out_dir (never done without it)
    stats: str = setting("")  # print the statistics of this prepared directory, write its doc_lengths.png, and exit
    progress_interval: float = setting(10.0, gt=0)  # seconds between plain progress lines when stderr is not a terminal


    def problems(self):
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            return [f"encoding={self.encoding!r} is not a text encoding Python knows; use e.g. --encoding=utf-16 or "
                    f"--encoding=latin-1"]
        return []


# settings that do not change the output: a resumed run may change them
NON_DATA_SETTINGS = ("out_dir", "num_threads", "batch_rows", "overwrite", "stats", "progress_interval",
                     "encoding")  # (the encoding is part of each text source's identity, as its documents are)


@dataclass
class DatasetSpec:
    """What a prepare script tells the pipeline about its dataset."""
    name: str  # recorded in the manifest, e.g. 'fineweb-edu'
    text_column: str  # the column holding the document text
    columns: list  # every column the pipeline or `keep` reads
    keep: object = None  # keep(record_batch) -> (bool mask or None, {reason: dropped count}); the filters
    split_column: str = ""  # '': the first documents go to val; else val holds documents whose hash of this column is low
    val_fraction: float = 0.0  # with split_column: fraction of its values (e.g. repositories) held out for val
    language_column: str = ""  # with it: per-language token counts and val-<language> sets
    language_val_tokens: int = 0  # tokens of each val-<language> set
    size_column: str = ""  # with it: the column of document sizes (bytes), to size repositories
    filters: dict = dataclasses.field(default_factory=dict)  # skip reason -> the setting behind it, for messages


# ----------------------------------------------------------------------------- sources

class ParquetSource:
    """One parquet file, read one record batch at a time."""

    def __init__(self, path, name=None):
        self.path, self.name = path, name or os.path.abspath(path)
        self.size = os.path.getsize(path)
        self._meta = None

    def _file(self):
        import pyarrow.parquet as pq
        try:
            # pre_buffer=False and a read buffer: column chunks are streamed, not cached whole for the
            # file's life (pyarrow's default pre_buffer=True held ~170 MB more on a 400 MB-of-text file)
            return pq.ParquetFile(self.path, pre_buffer=False, buffer_size=READ_BUFFER)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError with long messages
            raise DataError(f"{self.path} is not a readable parquet file ({short(e)}); "
                            f"re-download it or remove it from the inputs") from None

    def check(self, columns):
        """Fail early, before anything is written, on an unreadable file or a missing column."""
        pf = self._file()
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{self.path} has no column {missing[0]!r} (it has {', '.join(names)}); "
                            f"this is not the dataset this script prepares")
        self.num_rows = pf.metadata.num_rows

    def batches(self, columns, start_row, batch_rows):
        """Record batches from row start_row on (earlier row groups are not read)."""
        pf = self._file()
        md = pf.metadata
        first, skip = 0, start_row
        while first < md.num_row_groups and skip >= md.row_group(first).num_rows:
            skip -= md.row_group(first).num_rows
            first += 1
        try:
            it = pf.iter_batches(batch_size=batch_rows, columns=columns, row_groups=range(first, md.num_row_groups))
            for batch in it:
                if skip:
                    cut = min(skip, batch.num_rows)
                    batch, skip = batch.slice(cut), skip - cut
                if batch.num_rows:
                    yield batch
        except DataError:
            raise
        except Exception as e:
            raise DataError(f"{self.path} is corrupt or truncated ({short(e)}); "
                            f"re-download it or remove it from the inputs, then re-run (it resumes)") from None

    def identity(self):
        return {"name": self.name, "bytes": self.size}


    def estimated_tokens(self, column):
        """Tokens the text column holds, roughly, from the file's metadata alone (nothing is read)."""
        md = self._file().metadata
        i = self._file().schema_arrow.names.index(column)
        total = 0
        for g in range(md.num_row_groups):
            col = md.row_group(g).column(i)
            if not (col.statistics and col.statistics.has_null_count and col.statistics.null_count == col.num_values):
                total += col.total_uncompressed_size  # (a row group of null texts holds no tokens)
        return total / BYTES_PER_TOKEN


SNIFF_BYTES = 1 << 16  # bytes read from the start of a text input to tell its encoding
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"))  # longest first: UTF-32 LE's begins with UTF-16 LE's
NUL_SHARE = 0.2  # text whose bytes are this much NUL is UTF-16/32 (each ASCII character carries 1 or 3 NULs)


def sniffed_encoding(path):
    """'utf-16' or 'utf-32' when the start of the file says so with a byte-order mark, 'utf-16-le' (and the like)
    when it holds NULs between its characters (which UTF-8 text never does: ASCII in UTF-16 is a NUL a character),
    else None."""
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    for bom, name in BOMS:
        if head.startswith(bom):
            return name
    nul = head.count(0) / max(1, len(head))
    if nul < NUL_SHARE:
        return None
    width = 4 if nul > 0.6 else 2
    little = head[::width].count(0) < head[width - 1::width].count(0)  # ASCII's NULs follow its byte (LE)
    return f"utf-{8 * width}-{'le' if little else 'be'}"


def text_lines(path, encoding):
    """(line number, line as UTF-8 bytes) of a text file in `encoding`; UTF-8 files are read as bytes, so a line
    that is not valid UTF-8 is skipped later, not the whole file."""
    if codecs.lookup(encoding).name == "utf-8":
        with open(path, "rb") as f:
            yield from enumerate(f, 1)
        return
    try:
        with open(path, encoding=encoding, newline="") as f:
            for n, line in enumerate(f, 1):
                yield n, line.encode("utf-8")
    except UnicodeError as e:
        raise DataError(f"{path} is not {encoding} text ({short(e, 100)}); give its encoding with --encoding") from None


class TextInput:
    """What .txt and .jsonl inputs share: their encoding, checked first (issue 37: a UTF-16 file read as UTF-8
    is NULs between characters, and was diagnosed by its document count)."""

    def check_encoding(self):
        found = sniffed_encoding(self.path)
        if found and codecs.lookup(self.encoding).name == "utf-8":
            raise DataError(f"{self.path} is {found.upper()} text (a byte-order mark, or NULs between its characters), "
                            f"not UTF-8; read it with --encoding={found}, or convert it: iconv -f {found.upper()} "
                            f"-t UTF-8 {self.path} > {os.path.splitext(self.path)[0]}.utf8{os.path.splitext(self.path)[1]}")

    def not_utf8(self):
        """The error for an input none of whose documents is valid UTF-8 (a latin-1 file, say): named as such,
        before any count of its documents."""
        return DataError(f"no document of {self.path} is valid UTF-8: it is in another encoding; give it with "
                         f"--encoding (e.g. --encoding=latin-1 or --encoding=cp1252)")


class JsonlSource(TextInput):
    """One .jsonl file: a JSON object per line, e.g. {"text": "..."}; read batch_rows lines at a time."""

    def __init__(self, path, encoding="utf-8"):
        self.path, self.size, self.encoding = path, os.path.getsize(path), encoding

    def _lines(self):
        for n, line in text_lines(self.path, self.encoding):
            if line.strip():
                yield n, line

    def check(self, columns):
        """Every line parsed once before anything is written, so a bad line is an error, not a half dataset."""
        self.num_rows = 0
        for n, line in self._lines():
            row = self._parse(n, line)
            missing = [c for c in columns if c not in row]
            if missing:
                raise DataError(f"{self.path} line {n} has no field {missing[0]!r} (it has "
                                f"{', '.join(row) or 'none'}); each line must be a JSON object with {', '.join(columns)}")
            self.num_rows += 1

    def _parse(self, n, line):
        try:
            row = json.loads(line)
        except UnicodeDecodeError as e:  # (a ValueError too: named as what it is, not as bad JSON)
            raise DataError(f"{self.path} line {n} is not UTF-8 ({short(e, 80)}); give the file's encoding with "
                            f"--encoding (e.g. --encoding=latin-1)") from None
        except ValueError as e:
            raise DataError(f"{self.path} line {n} is not valid JSON ({getattr(e, 'msg', e)}); fix or remove that line") from None
        if not isinstance(row, dict):
            raise DataError(f"{self.path} line {n} is a JSON {type(row).__name__}, not an object like {{\"text\": ...}}")
        return row

    def batches(self, columns, start_row, batch_rows):
        import pyarrow as pa
        rows = []
        for i, (n, line) in enumerate(self._lines()):
            if i < start_row:
                continue
            row = self._parse(n, line)
            rows.append({c: row.get(c) for c in columns})
            if len(rows) == batch_rows:
                yield pa.RecordBatch.from_pylist(rows)
                rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows)

    def identity(self):
        return {"name": os.path.abspath(self.path), "bytes": self.size, **encoding_of(self)}

    def estimated_tokens(self, column):
        return self.size / BYTES_PER_TOKEN


def encoding_of(source):
    """The encoding in a text source's identity (manifest.json), when it is not UTF-8 (older manifests have none)."""
    return {} if codecs.lookup(source.encoding).name == "utf-8" else {"encoding": source.encoding}


class TextSource(TextInput):
    """One plain-text file (UTF-8, or --encoding), as documents: blank-line-separated blocks ('paragraphs'),
    single lines ('lines') or the whole file ('file'). It has one column, the text."""

    def __init__(self, path, documents="paragraphs", encoding="utf-8"):
        self.path, self.documents, self.size, self.encoding = path, documents, os.path.getsize(path), encoding

    def _docs(self):
        """The documents as UTF-8 bytes: each is decoded later, and one that is not valid UTF-8 is skipped and
        counted (column_texts), not the whole file."""
        lines = (line for _, line in text_lines(self.path, self.encoding))
        if self.documents == "file":
            yield b"".join(lines)
            return
        block = []
        for line in lines:
            if self.documents == "lines":
                if line.strip():
                    yield line.rstrip(b"\r\n")
            elif line.strip():
                block.append(line)
            elif block:
                yield b"".join(block).rstrip(b"\r\n")
                block = []
        if block:
            yield b"".join(block).rstrip(b"\r\n")

    def check(self, columns):
        if len(columns) != 1:
            raise DataError(f"{self.path}: a .txt file holds only text, and this dataset needs the columns "
                            f"{', '.join(columns)}; use parquet or jsonl inputs")
        self.num_rows = valid = 0  # 0 rows: an empty input (check_not_all_empty)
        for doc in self._docs():
            if doc.strip():
                self.num_rows += 1
                valid += _is_utf8(doc)
        if self.num_rows and not valid:
            raise self.not_utf8()

    def batches(self, columns, start_row, batch_rows):
        import pyarrow as pa
        texts = []
        for i, doc in enumerate(d for d in self._docs() if d.strip()):
            if i >= start_row:
                texts.append(doc)
            if len(texts) == batch_rows:
                yield pa.RecordBatch.from_pydict({columns[0]: pa.array(texts, pa.binary())})
                texts = []
        if texts:
            yield pa.RecordBatch.from_pydict({columns[0]: pa.array(texts, pa.binary())})

    def identity(self):
        return {"name": os.path.abspath(self.path), "bytes": self.size, "documents": self.documents, **encoding_of(self)}

    def estimated_tokens(self, column):
        return self.size / BYTES_PER_TOKEN


INPUT_KINDS = (".parquet", ".jsonl", ".txt")


def _is_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def local_sources(data_files, txt_documents="paragraphs", encoding="utf-8"):
    """Sources of comma-separated paths, globs and directories (every .parquet/.jsonl/.txt below them),
    sorted within each, so a dataset is made in the same order every time."""
    paths = []
    for pattern in [p.strip() for p in data_files.split(",") if p.strip()]:
        found = sorted(glob.glob(os.path.expanduser(pattern)))
        if not found:
            raise DataError(f"--data_files: nothing matches {pattern!r}; check the path (quote globs in the shell)")
        for path in found:
            bad = paths_mod.problem(path, "dir" if os.path.isdir(path) else "file")
            if bad and bad[0] != "missing":  # a glob lists links to nothing and loops: say what they are
                raise DataError(f"--data_files: {bad[1]}; fix it, or remove it from the inputs")
            if os.path.isdir(path):
                inside = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                                if n.endswith(INPUT_KINDS))
                if not inside:
                    raise DataError(f"--data_files: the directory {path} holds no {', '.join(INPUT_KINDS)} files")
                paths.extend(inside)
            else:
                paths.append(path)
    out = []
    for p in paths:
        if p.endswith(".jsonl"):
            out.append(JsonlSource(p, encoding))
        elif p.endswith(".txt"):
            out.append(TextSource(p, txt_documents, encoding))
        elif p.endswith(".parquet"):
            out.append(ParquetSource(p))
        else:
            raise DataError(f"--data_files: {p} is not a .parquet, .jsonl or .txt file; convert it, or remove it "
                            f"from the inputs")
    return out


def pinned_revision(cfg, repo_id):
    """The commit out_dir's dataset was started from, when it was made from this repo at this --revision:
    a re-run (to resume after a crash, or to check a finished dataset) then fetches the very same files even
    if the branch has moved on since. Otherwise (a new dataset, or --overwrite) cfg.revision itself."""
    m = None if cfg.overwrite else shards.read_manifest(cfg.out_dir, required=False)
    hub = (m or {}).get("hub") or {}
    if hub.get("repo") == repo_id and hub.get("revision") == cfg.revision and hub.get("commit"):
        return hub["commit"]
    return cfg.revision


def hub_sources(repo_id, folder, num_files, revision):
    """Download (or find in the HF cache) the first num_files parquet files under `folder`
    of a hub dataset at `revision`. Returns (sources, commit). The revision (e.g. the branch
    'main', which moves) is resolved to a commit first and every file is fetched at that commit,
    which is recorded. A complete cached file is not fetched again; with HF_HUB_OFFLINE=1 only
    the cache is used."""
    from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
    try:
        if constants.HF_HUB_OFFLINE:
            root = snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=True)
            commit = os.path.basename(os.path.normpath(root))  # the cache's .../snapshots/<commit>
            names = sorted(os.path.relpath(p, root).replace(os.sep, "/")
                           for p in glob.glob(os.path.join(root, folder, "*.parquet")))
        else:
            api = HfApi()
            commit = api.dataset_info(repo_id, revision=revision).sha
            tree = api.list_repo_tree(repo_id, path_in_repo=folder, repo_type="dataset", revision=commit)
            names = sorted(f.path for f in tree if f.path.endswith(".parquet"))
    except Exception as e:  # network, unknown repo/revision, nothing cached offline
        raise DataError(f"cannot list {repo_id}/{folder} at revision {revision!r} ({short(e)}); check the "
                        f"name/--revision and the network, or pass local files with --data_files") from None
    if len(names) < num_files:
        where = "in the local HF cache (HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else "on the hub"
        raise DataError(f"{repo_id}/{folder} has {len(names)} parquet files {where}, --num_files asks for {num_files}")
    sources = []
    for name in names[:num_files]:
        try:
            path = hf_hub_download(repo_id, name, repo_type="dataset", revision=commit)
        except Exception as e:
            raise DataError(f"download of {repo_id}/{name} failed ({short(e)}); re-run to retry") from None
        sources.append(ParquetSource(path, name=f"hf://datasets/{repo_id}@{commit}/{name}"))
    return sources, commit


# ----------------------------------------------------------------------------- documents

def column_texts(col, counts):
    """Python strings of a text column; None where a document is skipped (counted by reason)."""
    import pyarrow as pa
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            values = col.to_pylist()
        except UnicodeDecodeError:  # invalid UTF-8 stored in a string column: check each value
            values = col.view(pa.large_binary() if pa.types.is_large_string(t) else pa.binary()).to_pylist()
    elif pa.types.is_binary(t) or pa.types.is_large_binary(t):
        values = col.to_pylist()
    else:
        raise DataError(f"text column has type {t}, expected string or binary; this is not the expected dataset")
    out = []
    for v in values:
        if isinstance(v, bytes):
            try:
                v = v.decode("utf-8")
            except UnicodeDecodeError:
                counts["invalid_utf8"] = counts.get("invalid_utf8", 0) + 1
                out.append(None)
                continue
        if v is None:
            counts["null_text"] = counts.get("null_text", 0) + 1
        elif not v:
            counts["empty_text"] = counts.get("empty_text", 0) + 1
            v = None
        out.append(v)
    return out


def language_split(language):
    """'C++' -> 'val-cpp': a split name safe in file names (shards._SHARD_RE)."""
    safe = language.lower().replace("+", "p").replace("#", "sharp")
    return "val-" + (re.sub(r"[^a-z0-9.]+", "-", safe).strip("-") or "unknown")


def key_fraction(key):
    """A stable number in [0, 1) for a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(str(key).encode("utf-8"), digest_size=8).digest(), "little") / 2.0 ** 64


def pack(docs):
    """uint16 array of the documents (token arrays), each preceded by EOT."""
    out = np.empty(sum(map(len, docs)) + len(docs), dtype=shards.DTYPE)
    pos = 0
    for t in docs:
        out[pos] = EOT
        out[pos + 1:pos + 1 + len(t)] = t  # ids < VOCAB_SIZE fit in uint16
        pos += 1 + len(t)
    return out


def encode_ordinary(enc, text, piece_chars=PIECE_CHARS):
    """enc.encode_ordinary(text) as a uint32 array: the same tokens (no special token is
    recognised, so a literal "<|endoftext|>" is plain text), but 4 bytes a token instead of
    ~40 as a Python list of ints, which is what kept peak memory high. Releases the GIL,
    so a thread pool encodes documents in parallel as encode_ordinary_batch does.
    A document longer than piece_chars is encoded in pieces (text_pieces): one 1 GB line died inside
    the tokenizer (issue 28)."""
    if len(text) <= piece_chars:
        return enc.encode_to_numpy(text, disallowed_special=())
    return np.concatenate([enc.encode_to_numpy(p, disallowed_special=()) for p in text_pieces(text, piece_chars)])


_CUT = re.compile(r"[ \n]\S")  # searched in reversed text: a space or newline just after a non-whitespace character


def text_pieces(text, size):
    """text as consecutive pieces of at most `size` characters, each cut just before a space or newline that
    follows a non-whitespace character. No GPT-2 pre-token spans such a point (each of its regex's patterns is
    non-whitespace after one optional leading space, or whitespace only; BPE merges stay inside pre-tokens), so
    the pieces' tokens are the whole text's. A stretch of `size` characters with no such point (a run of 1M
    characters without whitespace, where BPE is quadratic) is cut at `size`: still tokens that decode to the text."""
    start = 0
    while len(text) - start > size:
        end = start + size
        m = _CUT.search(text[start:end + 1][::-1])  # r[k] = text[end - k]: the first match is the last cut point
        cut = end - m.start() if m and end - m.start() > start else end
        yield text[start:cut]
        start = cut
    yield text[start:]


def encoded_batches(spec, sources, start, batch_rows, enc, num_threads):
    """Yield the documents from position start=(file, row) as dicts of: `tokens`, a uint16
    array of the kept documents each preceded by EOT, `ends` their end offsets in it, their
    split keys and languages, skip counts, and `position`, the input position after it
    (None inside a record batch: only batch boundaries are resumable). A record batch is
    encoded CHUNK_CHARS of text at a time, on num_threads threads."""
    with ThreadPoolExecutor(num_threads) as pool:
        yield from _encoded_batches(spec, sources, start, batch_rows, functools.partial(encode_ordinary, enc), pool)


def _encoded_batches(spec, sources, start, batch_rows, encode, pool):
    import pyarrow.compute as pc
    cols = list(dict.fromkeys(spec.columns))
    for fi in range(start[0], len(sources)):
        row = start[1] if fi == start[0] else 0
        for batch in sources[fi].batches(cols, row, batch_rows):
            nrows = batch.num_rows  # read, before the filters
            row += nrows
            counts = {}
            if spec.keep is not None:
                mask, dropped = spec.keep(batch)
                for k, v in dropped.items():
                    counts[k] = counts.get(k, 0) + v
                if mask is not None and not pc.all(mask).as_py():  # a copy of the batch, only when something is dropped
                    batch = batch.filter(mask)
            texts = column_texts(batch.column(spec.text_column), counts)
            keep = [i for i, t in enumerate(texts) if t is not None]
            keys = batch.column(spec.split_column).to_pylist() if spec.split_column else None
            langs = batch.column(spec.language_column).to_pylist() if spec.language_column else None
            lo = 0
            while True:  # at least once, so every record batch reports its rows and counts
                hi, size = lo, 0
                while hi < len(keep) and (hi == lo or size < CHUNK_CHARS):
                    size += len(texts[keep[hi]])
                    hi += 1
                idx = keep[lo:hi]
                docs = list(pool.map(encode, [texts[i] for i in idx]))
                last = hi >= len(keep)
                yield {
                    "tokens": pack(docs), "ends": np.cumsum([len(t) + 1 for t in docs], dtype=np.int64),
                    "keys": [keys[i] for i in idx] if keys else None,
                    "langs": [langs[i] or "unknown" for i in idx] if langs else None,
                    "counts": counts if last else {}, "rows": nrows if last else 0,
                    "position": (fi, row) if last else None, "file_done": False,
                }
                del docs
                lo = hi
                if last:
                    break
        yield {"tokens": pack([]), "ends": np.zeros(0, np.int64), "keys": None, "langs": None, "counts": {},
               "rows": 0, "position": (fi + 1, 0), "file_done": True}


def threaded(gen, maxsize=QUEUE_BATCHES):
    """Run a generator in a thread, QUEUE_BATCHES items ahead, so reading and encoding the
    next batch overlap with writing this one (tiktoken and pyarrow release the GIL)."""
    q, stop, done = queue.Queue(maxsize), threading.Event(), object()

    def work():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as e:  # handed to the consumer, raised there
            q.put(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# ----------------------------------------------------------------------------- progress

class Progress:
    """tqdm bars (files; tokens with tokens/s and ETA) on a terminal, else a plain line every `interval` s
    (the first after `interval` s: a short run prints none)."""

    def __init__(self, num_files, num_rows, done_files, done_rows, tokens, interval):
        self.num_files, self.num_rows, self.rows, self.tokens = num_files, num_rows, done_rows, tokens
        self.t0, self.tok0, self.interval = time.time(), tokens, interval
        self.last = self.t0
        self.tty = sys.stderr.isatty()
        if self.tty:
            from tqdm import tqdm
            self.fbar = tqdm(total=num_files, initial=done_files, desc="files", unit="file", position=0)
            self.tbar = tqdm(total=None, initial=tokens, desc="tokens", unit="tok", unit_scale=True, position=1)

    def update(self, rows, tokens, file_done):
        self.rows += rows
        self.tokens += tokens
        est_total = int(self.tokens * self.num_rows / self.rows) if self.rows else None  # for the ETA
        if self.tty:
            self.tbar.total = est_total
            self.tbar.update(tokens)
            if file_done:
                self.fbar.update(1)
        elif time.time() - self.last >= self.interval:
            self.last = time.time()
            rate = (self.tokens - self.tok0) / max(self.last - self.t0, 1e-9)
            eta = f"{(est_total - self.tokens) / rate / 60:.1f} min" if est_total and rate > 0 else "n/a"
            print(f"prepare: {self.rows:,}/{self.num_rows:,} documents, {self.tokens:,} tokens, "
                  f"{rate / 1e6:.2f}M tok/s, ETA {eta}", file=sys.stderr, flush=True)

    def close(self):
        if self.tty:
            self.fbar.close()
            self.tbar.close()


# ----------------------------------------------------------------------------- the pipeline

def dataset_args(cfg):
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NON_DATA_SETTINGS}


def _our_files(out_dir):
    """Files of a prepared dataset in out_dir (shards, their .tmp files, manifest, histogram)."""
    names = [n for n in os.listdir(out_dir)
             if shards._SHARD_RE.match(n.removesuffix(".tmp")) or n in (shards.MANIFEST, HIST_PNG)]
    return [os.path.join(out_dir, n) for n in names]


def _remove_dataset(out_dir):
    for p in _our_files(out_dir):
        os.remove(p)


def _nothing_written(m):
    """A manifest whose prepare wrote no token yet (no shard, no partial shard, still at the first row)."""
    prog = m.get("progress", {})
    return (not m.get("shards") and not prog.get("complete") and tuple(prog.get("position", (0, 0))) == (0, 0)
            and not any((st or {}).get("total_tokens") or (st or {}).get("fill") for st in prog.get("writers", {}).values()))


def _forget_if_nothing_written(out_dir):
    """After a failed prepare: if it wrote no token, remove what it made (manifest, empty partial shards), so a
    corrected re-run starts afresh (issue 18). True if it did."""
    try:
        m = shards.read_manifest(out_dir, required=False)
    except DataError:
        return False
    if m is None or not _nothing_written(m):
        return False
    _remove_dataset(out_dir)
    return True


def _existing(out_dir, args, sources, overwrite):
    """The manifest to resume from, None to start afresh; refuses to touch a different dataset."""
    if not os.path.isdir(out_dir):
        return None
    if overwrite:
        _remove_dataset(out_dir)
        return None
    try:
        m = shards.read_manifest(out_dir, required=False)
    except DataError as e:
        raise DataError(f"{e}; or pass --overwrite to replace it") from None
    if m is not None and _nothing_written(m):  # a start that wrote nothing binds no re-run to its inputs
        _remove_dataset(out_dir)
        return None
    if m is None:
        if shards.list_splits(out_dir):
            raise DataError(f"{out_dir} holds shards but no manifest.json (not made by this script, or by an "
                            f"older version); use another --out_dir, or --overwrite to replace them")
        return None
    old_args = m.get("args", {})
    for k in sorted(set(old_args) | set(args)):
        if old_args.get(k) != args.get(k):
            raise DataError(f"{out_dir} holds a dataset prepared with {k}={old_args.get(k)!r}, not {args.get(k)!r}; "
                            f"use another --out_dir, or --overwrite to replace it")
    if m.get("sources") != [s.identity() for s in sources]:
        raise DataError(f"{out_dir} holds a dataset prepared from other input files (see its manifest.json); use "
                        f"the same inputs (and --revision), another --out_dir, or --overwrite to replace it")
    return m


def held_out_per_language(spec, sources, batch_rows):
    """{language: repository} for each language none of whose repositories falls in the held-out fraction
    (a language of 75M tokens used to get no val-<language> set): its smallest repository is held out too,
    unless that one alone holds more than val_fraction of the input, which would move too much out of
    train (then the language gets no val set, and this says so before the pass). Two pre-passes over the
    split, language and size columns only: which languages lack a held-out repository and which
    repositories could serve, then the sizes of those candidates."""
    cols = [spec.split_column, spec.language_column] + ([spec.size_column] if spec.size_column else [])

    def rows():
        for source in sources:
            for batch in source.batches(cols, 0, batch_rows):
                values = [batch.column(c).to_pylist() for c in cols]
                sizes = values[2] if spec.size_column else [1] * batch.num_rows
                yield from zip(values[0], values[1], sizes)

    covered, candidates = set(), {}  # languages with a held-out repository; language -> repositories with it
    for key, lang, _ in rows():
        if lang is None or key is None or lang in covered:
            continue
        if key_fraction(key) < spec.val_fraction:
            covered.add(lang)
            candidates.pop(lang, None)
        else:
            candidates.setdefault(lang, set()).add(key)
    if not candidates:
        return {}
    wanted = set().union(*candidates.values())
    size, total = dict.fromkeys(wanted, 0), 0
    for key, _, n in rows():
        total += n or 0
        if key in size:
            size[key] += n or 0
    extra, none = {}, []
    for lang, repos in sorted(candidates.items()):
        key = min(repos, key=lambda r: (size[r], r))
        if size[key] <= spec.val_fraction * total or key in extra.values():
            extra[lang] = key
        else:
            none.append(lang)
    # one line each, however many languages (the quickstart printed nine lines here)
    if extra:
        print(f"held out by language (no repository of theirs fell in the held-out fraction {spec.val_fraction:g}, so "
              f"their smallest is held out): {', '.join(f'{lang} ({repo})' for lang, repo in extra.items())}",
              file=sys.stderr)
    if none:
        print(f"no val set for {', '.join(none)}: each one's smallest repository holds more than val_repo_fraction="
              f"{spec.val_fraction:g} of the input (raise it to give them one)", file=sys.stderr)
    return extra


def save_manifest(out_dir, m):
    """shards.write_manifest, with a full disk reported as a DataError (the old manifest stays intact)."""
    try:
        shards.write_manifest(out_dir, m)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        with contextlib.suppress(OSError):
            os.remove(os.path.join(out_dir, shards.MANIFEST + ".tmp"))
        raise DataError(f"disk full while writing {os.path.join(out_dir, shards.MANIFEST)} (the previous one is "
                        f"intact); free some space, then re-run: it resumes") from None


def prepare(cfg, spec, sources, extra=None, enc=None):
    """Tokenize `sources` into cfg.out_dir; resume an interrupted run; return the manifest."""
    out_dir = cfg.out_dir
    if not sources:
        raise DataError("no input files; pass --data_files=... or download with --num_files=N")
    for s in sources:  # a dataset folder is re-created whole (--overwrite): never around its own inputs (issue 28)
        src = getattr(s, "root", None) or s.path
        if paths_mod.inside(src, out_dir):
            alt = os.path.join(os.path.dirname(os.path.abspath(out_dir)), "tokens")
            raise ConfigError(f"--out_dir={out_dir} holds the input {src}; write the dataset to a folder of its own, "
                              f"{paths_mod.elsewhere(out_dir, alt, 'out_dir')}")
    for s in sources:  # the input checks in a fixed order, specific before generic: encoding, structure, counts
        if hasattr(s, "check_encoding"):
            s.check_encoding()
    for s in sources:
        s.check(list(dict.fromkeys(spec.columns)))
    check_not_all_empty(sources)
    args = dataset_args(cfg)
    m = None if cfg.overwrite else _existing(out_dir, args, sources, overwrite=False)
    if m is not None and m.get("progress", {}).get("complete"):
        print(f"{out_dir} is already complete ({sum(m['shards'].values()):,} tokens); nothing to do "
              f"(--overwrite re-creates it)", file=sys.stderr)
        return m
    if not spec.split_column and cfg.val_tokens:  # the first val_tokens go to val: check they leave some to train
        if sum(s.num_rows for s in sources) == 1:  # however large, it cannot be cut by val_tokens (issue 28)
            one = next(s for s in sources if s.num_rows)
            raise DataError(f"{one.path} is the only document" + (" (--txt_documents=file)" if getattr(
                one, "documents", "") == "file" else "") + ", which cannot be split into train and val (the val "
                "set takes whole documents); pass more documents (--txt_documents=paragraphs or lines cuts a .txt "
                "into documents), or --val_tokens=0")
        estimate = sum(s.estimated_tokens(spec.text_column) for s in sources)
        if estimate and cfg.val_tokens >= estimate / 2:
            raise DataError(f"the input holds about {estimate:,.0f} tokens (from its size), and val_tokens="
                            f"{cfg.val_tokens:,} would take {'all' if cfg.val_tokens >= estimate else 'half or more'} "
                            f"of it; lower --val_tokens (e.g. --val_tokens={max(1, int(estimate / 20))}, 5%)")
    if cfg.overwrite:  # only now that the new dataset can be made is the old one removed
        _existing(out_dir, args, sources, overwrite=True)
    os.makedirs(out_dir, exist_ok=True)
    enc = enc or shards.gpt2_encoding()
    if m is None:
        m = shards.new_manifest(args, [s.identity() for s in sources])
        m.update({"dataset": spec.name, "docs": {}, "tokens": {}, "skipped": {}, "tokens_by_language": {},
                  "progress": {"complete": False, "position": [0, 0], "writers": {}}})
        m.update(extra or {})
        if spec.split_column and spec.language_column and spec.language_val_tokens and spec.val_fraction:
            m["held_out_extra"] = held_out_per_language(spec, sources, cfg.batch_rows)
        save_manifest(out_dir, m)  # before any shard: shards without a manifest are never ours
    prog = m["progress"]

    writers = {}

    def on_shard(name, n, crc):
        m["shards"][name] = n
        m.setdefault("checksums", {})[name] = crc
        state["flushed"] = True

    def writer(split):
        if split not in writers:
            writers[split] = shards.ShardWriter(out_dir, split, cfg.shard_tokens, on_shard=on_shard)
        return writers[split]

    for split, st in prog["writers"].items():  # resume: reopen each writer's .tmp at the checkpoint
        writer(split).load_state_dict(st)
    state = {"flushed": False, "saved": dict(prog["writers"])}  # saved: the writer states in the manifest on disk

    def checkpoint(final=False):
        if final:
            for w in writers.values():
                w.close()
        # the .tmp files are made durable before the manifest says how much of them to keep
        prog.update(position=list(position), complete=final, writers={s: w.sync() for s, w in writers.items()})
        save_manifest(out_dir, m)
        state["flushed"], state["saved"] = False, dict(prog["writers"])

    position = tuple(prog["position"])
    extra_held_out = set(m.get("held_out_extra", {}).values())
    docs, skipped, lang_tokens, routed = m["docs"], m["skipped"], m["tokens_by_language"], m["tokens"]
    num_threads = cfg.num_threads or os.cpu_count() or 1
    num_rows = sum(s.num_rows for s in sources)
    done_rows = sum(s.num_rows for s in sources[:position[0]]) + position[1]
    progress = Progress(len(sources), num_rows, position[0], done_rows,
                        sum(w.total_tokens for w in writers.values()), cfg.progress_interval)
    items = threaded(encoded_batches(spec, sources, position, cfg.batch_rows, enc, num_threads))
    try:
        for item in items:
            pieces = {}  # split -> slices of this item's tokens, in document order
            toks, ends = item["tokens"], item["ends"]
            for i in range(len(ends)):
                lo, hi = (ends[i - 1] if i else 0), ends[i]
                n = int(hi - lo)  # the document's tokens and its EOT
                lang = item["langs"][i] if item["langs"] else None
                if spec.split_column:
                    held_out = key_fraction(item["keys"][i]) < spec.val_fraction or item["keys"][i] in extra_held_out
                else:  # the first documents fill val
                    held_out = routed.get("val", 0) < cfg.val_tokens
                dests = []
                if held_out:
                    if routed.get("val", 0) < cfg.val_tokens:
                        dests.append("val")
                    if lang is not None and routed.get(language_split(lang), 0) < spec.language_val_tokens:
                        dests.append(language_split(lang))
                    if not dests:  # a held-out repository while the val sets are full: never into train
                        skipped["held_out_overflow"] = skipped.get("held_out_overflow", 0) + 1
                else:
                    dests.append("train")
                for d in dests:
                    pieces.setdefault(d, []).append(toks[lo:hi])
                    docs[d] = docs.get(d, 0) + 1
                    routed[d] = routed.get(d, 0) + n
                if lang is not None and dests:
                    lang_tokens[lang] = lang_tokens.get(lang, 0) + n
            for d, parts in pieces.items():
                writer(d).add(parts[0] if len(parts) == 1 else np.concatenate(parts))
            for k, v in item["counts"].items():
                skipped[k] = skipped.get(k, 0) + v
            progress.update(item["rows"], len(toks), item["file_done"])
            if item["position"] is not None:
                position = item["position"]
                if state["flushed"] or item["file_done"]:
                    checkpoint()
        checkpoint(final=True)
    except BaseException:
        for split, w in writers.items():  # give back the space written since the last saved checkpoint
            w.abort(state["saved"].get(split))
        raise
    finally:
        items.close()
        progress.close()
    return m


def check_not_all_empty(sources):
    """An input file with no documents (empty, or only blank lines) adds nothing: of a .txt, .jsonl or .parquet
    alike, it is named in one note and the others are prepared; when every input is empty, that is the error."""
    empty = [s.path for s in sources if getattr(s, "num_rows", 1) == 0]
    if empty and len(empty) == len(sources):
        what = f"{empty[0]} holds no text (it is" if len(empty) == 1 else \
            f"none of the {len(empty)} input files holds any text (each is"
        raise DataError(f"{what} empty or only blank lines); give --data_files with documents in them")
    if empty:
        print(f"note: {monitor.plural(len(empty), 'input file')} with no documents (empty, or only blank lines) "
              f"add nothing: {', '.join(os.path.basename(p) for p in empty[:5])}{' ...' * (len(empty) > 5)}",
              file=sys.stderr)


def describe_inputs(sources):
    """'tinyshakespeare.txt', '3 files (a.parquet, b.parquet, ...)', 'the 2,450 files under /usr/lib/python3.11'."""
    if len(sources) == 1 and "files" in sources[0]:  # a --source_dir walk
        return f"the {monitor.plural(sources[0]['files'], 'file')} under {sources[0]['name']}"
    names = [os.path.basename(str(s.get("name", "?"))) for s in sources]
    if len(names) == 1:
        return names[0]
    return f"{monitor.plural(len(names), 'file')} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"


def summary(m):
    """A few lines describing a prepared dataset from its manifest."""
    per_split = {}
    for name, n in m["shards"].items():
        split = shards._SHARD_RE.match(name).group("split")
        per_split.setdefault(split, [0, 0])
        per_split[split][0] += n
        per_split[split][1] += 1
    lines = [f"dataset from {describe_inputs(m.get('sources', []))}"]
    for split in sorted(per_split):
        tok, ns = per_split[split]
        lines.append(f"  {split:<16} {tok:>15,} tokens in {ns} shard(s), {m.get('docs', {}).get(split, 0):,} documents")
    for lang, n in sorted(m.get("tokens_by_language", {}).items(), key=lambda kv: -kv[1]):
        lines.append(f"  language {lang:<16} {n:>15,} tokens")
    for reason, n in sorted(m.get("skipped", {}).items()):
        if n:
            lines.append(f"  skipped {n:>15,} documents {SKIP_REASONS.get(reason, reason)}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- --stats

def doc_lengths(paths):
    """Lengths in tokens (EOT included) of the documents of a split: EOT starts each document,
    so documents are the spans between EOTs, possibly straddling shards."""
    starts, offset = [], 0
    for p in paths:
        reader = shards.ShardReader(p)
        for lo in range(0, len(reader), STATS_CHUNK):
            chunk = reader.read(lo, min(STATS_CHUNK, len(reader) - lo))
            starts.append(np.flatnonzero(chunk == EOT) + offset + lo)
        offset += len(reader)
        reader.close()
    starts = np.concatenate(starts) if starts else np.empty(0, np.int64)
    return np.diff(np.append(starts, offset))


def print_stats(data_dir, png_path=None):
    """Tokens and documents per split and language, document-length percentiles, and a
    histogram PNG (default data_dir/doc_lengths.png). Returns {split: lengths array}."""
    m = shards.read_manifest(data_dir)
    print(summary(m))
    lengths = {}
    for split in shards.list_splits(data_dir):
        lens = doc_lengths(shards.list_shards(data_dir, split))
        lengths[split] = lens
        if len(lens):
            pct = ", ".join(f"p{p}={int(v):,}" for p, v in zip(PERCENTILES, np.percentile(lens, PERCENTILES)))
            print(f"  {split:<16} document length (tokens): mean={lens.mean():,.0f}, {pct}, max={lens.max():,}")
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 4.5))
    all_lens = [v for v in lengths.values() if len(v)]
    if all_lens:
        hi = max(int(v.max()) for v in all_lens)
        bins = np.logspace(0, np.log10(max(hi, 2)), 60)  # lengths span orders of magnitude
        for split, lens in lengths.items():
            if len(lens):
                ax.hist(lens, bins=bins, histtype="step", label=f"{split} ({len(lens):,} docs)")
        ax.set_xscale("log")
        ax.legend()
    ax.set_xlabel("document length (tokens)")
    ax.set_ylabel("documents")
    ax.set_title(f"{m.get('dataset', data_dir)}: document lengths")
    png_path = png_path or os.path.join(data_dir, HIST_PNG)
    fig.savefig(png_path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {png_path}")
    return lengths


def run(cfg, make_spec, make_sources):
    """main() of a prepare script: --stats, or prepare and print the summary.
    make_spec(cfg) -> DatasetSpec; make_sources(cfg) -> (sources, extra manifest fields)."""
    if cfg.stats:
        print_stats(cfg.stats)
        return
    spec = make_spec(cfg)
    sources, extra = make_sources(cfg)
    t0 = time.time()
    # one writer per dataset, and never under a train.py reading it (issue 10: mixed datasets, replaced shards);
    # a folder made for the lock goes with it if the run is refused or leaves nothing
    with DirLock(cfg.out_dir, locks.command_name()):
        try:
            m = prepare(cfg, spec, sources, extra)
        except BaseException as e:
            if _forget_if_nothing_written(cfg.out_dir):  # a refused start leaves out_dir as it found it
                if isinstance(e, KeyboardInterrupt):
                    raise Interrupted("interrupted before any token was written; nothing was kept") from None
            elif isinstance(e, KeyboardInterrupt):
                raise Interrupted("interrupted; re-run the same command to resume") from None
            raise
        print(summary(m))
        empty = not any(name.startswith("train_") for name in m["shards"])
        if empty:
            _remove_dataset(cfg.out_dir)  # a dataset with nothing to train on is of no use, and would block a re-run
    if empty:
        raise DataError(f"{cfg.out_dir} got no train tokens: {why_no_train(m, spec, cfg)}")
    print(f"done in {time.time() - t0:.2f}s -> {cfg.out_dir}")


SKIP_REASONS = {  # manifest "skipped" keys, as words
    "null_text": "with null text", "empty_text": "with empty text", "invalid_utf8": "not valid UTF-8",
    "int_score_below_min": "below the minimum int_score", "language_filtered": "in other languages",
    "license_filtered": "under other licenses", "not_code": "not code (no known language extension)",
    "too_large": "larger than the size limit", "held_out_overflow": "in held-out repositories after val was full"}


def why_no_train(m, spec, cfg):
    """Why a dataset ended with no train tokens, naming the filter or setting responsible and its counts."""
    kept = sum(m["docs"].values())
    skipped = sorted(((k, n) for k, n in m["skipped"].items() if n), key=lambda kv: -kv[1])
    parts = [f"{n:,} {SKIP_REASONS.get(k, k)}" + (f" ({spec.filters[k]})" if k in spec.filters else "") for k, n in skipped]
    if not kept:
        if not skipped:
            return "the input holds no documents; check --data_files"
        top = skipped[0][0]
        fix = f"change {spec.filters[top]}" if top in spec.filters else "check the input files"
        return f"no document was kept ({'; '.join(parts)}); {fix} and re-run"
    if kept == 1 and not spec.split_column:  # no val_tokens above 0 can help: the val set takes whole documents
        return (f"one document was kept ({sum(m['tokens'].values()):,} tokens) and it went to val, which takes "
                f"whole documents, so no val_tokens above 0 leaves any for train; give more documents, or "
                f"--val_tokens=0 for no val split")
    return (f"all {kept:,} kept documents went to the val sets (val_tokens={cfg.val_tokens:,}"
            + (f", held out by repository: val_repo_fraction={spec.val_fraction:g}" if spec.split_column else "")
            + "); the input is too small for them: lower --val_tokens and re-run")
