"""prepare.py pipeline through the two scripts' specs: token streams checked against tiktoken directly."""
import glob
import json
import io
import os
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
from hypothesis import given, settings, strategies as st

from gptlib import prepare
import prepare_fineweb
import prepare_github_code
from gptlib import shards
from gptlib.errors import ConfigError, run_command
from gptlib.loader import TokenLoader
from gptlib.shards import EOT
from conftest import shakespeare

SHARD = 50_000
ENC = tiktoken.get_encoding("gpt2")
FINEWEB_SCHEMA = pa.schema([("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()),
                            ("date", pa.string()), ("file_path", pa.string()), ("language", pa.string()),
                            ("language_score", pa.float64()), ("token_count", pa.int64())])
EDU_SCHEMA = pa.schema([f for f in FINEWEB_SCHEMA if f.name != "date"] + [("score", pa.float64()), ("int_score", pa.int64())])
CODE_SCHEMA = pa.schema([("code", pa.string()), ("repo_name", pa.string()), ("path", pa.string()),
                         ("language", pa.string()), ("license", pa.string()), ("size", pa.int64())])


def fineweb_rows(texts, edu=False):
    n = len(texts)
    rows = {"text": texts, "id": [f"<urn:uuid:{i}>" for i in range(n)], "dump": ["CC-MAIN-2024-10"] * n,
            "url": [f"https://example.com/{i}" for i in range(n)], "file_path": ["s3://x.warc.gz"] * n,
            "language": ["en"] * n, "language_score": [0.9] * n,
            "token_count": [len(ENC.encode_ordinary(t or "")) for t in texts]}
    if edu:
        rows["score"] = [float(i % 6) for i in range(n)]
        rows["int_score"] = [i % 6 for i in range(n)]
        return pa.table(rows, schema=EDU_SCHEMA)
    rows["date"] = ["2024-03-01T00:00:00Z"] * n
    return pa.table(rows, schema=FINEWEB_SCHEMA)


def write_fineweb(path, texts, edu=False, row_group=200):
    pq.write_table(fineweb_rows(texts, edu), path, row_group_size=row_group)
    return str(path)


def sample_texts(corpus, n=400):
    return pq.read_table(corpus / "fineweb_sample.parquet", columns=["text"]).column(0).to_pylist()[:n]


def code_rows(max_files=300):
    """Real source files of the stdlib in the github-code schema, several 'repositories' and languages."""
    import sysconfig
    root = sysconfig.get_paths()["stdlib"]
    rows = {c: [] for c in CODE_SCHEMA.names}
    for sub, lang in (("json", "Python"), ("email", "Python"), ("asyncio", "Python"), ("http", "Python"),
                      ("xml", "Python"), ("unittest", "Python"), ("logging", "Python"), ("concurrent", "Python")):
        for f in sorted(glob.glob(os.path.join(root, sub, "**", "*.py"), recursive=True)):
            code = open(f, encoding="utf-8").read()
            if not code:
                continue
            repo = f"org{len(rows['code']) % 7}/{sub}"
            for language, text in ((lang, code), ("JavaScript", "// " + code[:300].replace("\n", "\n// "))):
                rows["code"].append(text)
                rows["repo_name"].append(repo)
                rows["path"].append(os.path.relpath(f, root))
                rows["language"].append(language)
                rows["license"].append("mit" if len(rows["code"]) % 3 else "apache-2.0")
                rows["size"].append(len(text))
    return {k: v[:max_files] for k, v in rows.items()}


def write_code(path, rows, row_group=100):
    pq.write_table(pa.table(rows, schema=CODE_SCHEMA), path, row_group_size=row_group)
    return str(path)


def fw_cfg(tmp_path, files, **kw):
    kw = {"out_dir": str(tmp_path / "out"), "data_files": files, "shard_tokens": SHARD, "val_tokens": 20_000,
          "progress_interval": 1e9, **kw}
    return prepare_fineweb.FinewebConfig(**kw)


def run_fw(cfg):
    return prepare.prepare(cfg, prepare_fineweb.make_spec(cfg), *prepare_fineweb.make_sources(cfg))


def run_code(cfg):
    return prepare.prepare(cfg, prepare_github_code.make_spec(cfg), *prepare_github_code.make_sources(cfg))


def stream(out_dir, split):
    paths = shards.list_shards(out_dir, split)
    return np.concatenate([np.load(p) for p in paths]) if paths else np.zeros(0, np.uint16)


def docs_tokens(texts):
    return [np.array([EOT] + ENC.encode_ordinary(t), dtype=np.uint16) for t in texts]


def test_round_trip_matches_tiktoken_and_eot_convention(tmp_path, corpus):
    texts = sample_texts(corpus)
    texts[5] = "A literal <|endoftext|> inside a document is plain text. " + texts[5]
    cfg = fw_cfg(tmp_path, write_fineweb(tmp_path / "a.parquet", texts))
    m = run_fw(cfg)
    expect = docs_tokens(texts)
    nval, tok = 0, 0
    while tok < cfg.val_tokens:  # the first whole documents fill val
        tok += len(expect[nval])
        nval += 1
    val, train = stream(cfg.out_dir, "val"), stream(cfg.out_dir, "train")
    assert np.array_equal(val, np.concatenate(expect[:nval]))
    assert np.array_equal(train, np.concatenate(expect[nval:]))
    # EOT before every document and nowhere else: the literal string was not turned into EOT
    assert train[0] == EOT and val[0] == EOT and (train == EOT).sum() == len(texts) - nval
    assert m["docs"] == {"val": nval, "train": len(texts) - nval}
    # several exactly-full shards, counts recorded in the manifest as on disk
    paths = shards.list_shards(cfg.out_dir, "train")
    assert len(paths) >= 3 and all(len(np.load(p)) == SHARD for p in paths[:-1])
    assert m["shards"] == {os.path.basename(p): len(np.load(p)) for p in glob.glob(cfg.out_dir + "/*.npy")}
    assert m["sources"][0]["name"].endswith("a.parquet") and m["args"]["val_tokens"] == 20_000
    assert sorted(os.listdir(cfg.out_dir)) == sorted([*m["shards"], shards.MANIFEST])  # no .tmp left behind
    # streamed shards are standard .npy files, byte for byte what np.save writes
    for p in paths:
        arr = shards.read_shard(p)
        buf = io.BytesIO()
        np.save(buf, np.asarray(arr))
        assert open(p, "rb").read() == buf.getvalue()
    # the training loader reads it
    x, y = TokenLoader(cfg.out_dir, "train", 2, 16).next_batch()
    assert x.shape == (2, 16) and (x[:, 1:] == y[:, :-1]).all()


def test_deterministic_and_document_larger_than_a_shard(tmp_path, corpus):
    texts = sample_texts(corpus, 60)
    texts[30] = " ".join(texts[:40])  # > 1 shard of tokens
    f = write_fineweb(tmp_path / "a.parquet", texts, row_group=7)
    a = fw_cfg(tmp_path, f, shard_tokens=20_000, val_tokens=5_000, out_dir=str(tmp_path / "a"))
    b = replace(a, out_dir=str(tmp_path / "b"), batch_rows=3, num_threads=1)  # batching does not change the output
    run_fw(a), run_fw(b)
    names = sorted(os.listdir(a.out_dir))
    assert names == sorted(os.listdir(b.out_dir))
    for n in names:
        if n.endswith(".npy"):
            assert open(os.path.join(a.out_dir, n), "rb").read() == open(os.path.join(b.out_dir, n), "rb").read()
    assert len(docs_tokens([texts[30]])[0]) > 20_000
    both = np.concatenate([stream(a.out_dir, "val"), stream(a.out_dir, "train")])
    assert np.array_equal(both, np.concatenate(docs_tokens(texts)))


def test_fineweb_edu_min_int_score(tmp_path, corpus):
    texts = sample_texts(corpus, 120)
    cfg = fw_cfg(tmp_path, write_fineweb(tmp_path / "edu.parquet", texts, edu=True), dataset="fineweb-edu",
                 min_int_score=3, val_tokens=0)
    m = run_fw(cfg)
    kept = [t for i, t in enumerate(texts) if i % 6 >= 3]
    assert np.array_equal(stream(cfg.out_dir, "train"), np.concatenate(docs_tokens(kept)))
    assert m["skipped"]["int_score_below_min"] == len(texts) - len(kept)
    # FineWeb has no int_score: a clear error, not an empty dataset
    fw = fw_cfg(tmp_path, write_fineweb(tmp_path / "fw.parquet", texts), min_int_score=3, out_dir=str(tmp_path / "x"))
    with pytest.raises(shards.DataError, match="no column 'int_score'"):
        run_fw(fw)


def code_cfg(tmp_path, files, **kw):
    kw = {"out_dir": str(tmp_path / "code"), "data_files": files, "shard_tokens": SHARD, "val_tokens": 10**9,
          "val_repo_fraction": 0.3, "val_tokens_per_language": 10**9, "progress_interval": 1e9, **kw}
    return prepare_github_code.GithubCodeConfig(**kw)


def test_github_code_split_by_repository_and_per_language_val(tmp_path):
    rows = code_rows()
    cfg = code_cfg(tmp_path, write_code(tmp_path / "c.parquet", rows))
    m = run_code(cfg)
    held = [prepare.key_fraction(r) < cfg.val_repo_fraction for r in rows["repo_name"]]
    assert any(held) and not all(held)
    toks = docs_tokens(rows["code"])
    train = [t for t, h in zip(toks, held) if not h]
    val = [t for t, h in zip(toks, held) if h]
    assert np.array_equal(stream(cfg.out_dir, "train"), np.concatenate(train))
    assert np.array_equal(stream(cfg.out_dir, "val"), np.concatenate(val))
    for lang in ("Python", "JavaScript"):
        want = [t for t, h, lg in zip(toks, held, rows["language"]) if h and lg == lang]
        assert np.array_equal(stream(cfg.out_dir, prepare.language_split(lang)), np.concatenate(want))
    assert set(shards.list_splits(cfg.out_dir)) == {"train", "val", "val-python", "val-javascript"}
    assert sum(m["tokens_by_language"].values()) == sum(map(len, toks))
    assert prepare.language_split("C++") == "val-cpp" and prepare.language_split("Visual Basic") == "val-visual-basic"


def test_every_language_gets_its_val_set_even_with_no_repository_in_the_held_out_fraction(tmp_path, capsys):
    rows = code_rows()
    solo = next(f"solo{i}/lib" for i in range(100) if prepare.key_fraction(f"solo{i}/lib") > 0.5)  # never held out
    for i in range(5):  # one C repository: by its hash alone, C would get no val-c
        for k, v in {"code": f"int f{i}(void) {{ return {i}; }}\n", "repo_name": solo, "path": f"f{i}.c",
                     "language": "C", "license": "mit", "size": 30}.items():
            rows[k].append(v)
    cfg = code_cfg(tmp_path, write_code(tmp_path / "c.parquet", rows))
    m = run_code(cfg)
    assert m["held_out_extra"] == {"C": solo}
    err = capsys.readouterr().err
    assert f"held out by language (no repository of theirs fell in the held-out fraction 0.3, so their smallest is " \
           f"held out): C ({solo})" in err and err.count("held out by language") == 1
    c_docs = docs_tokens(rows["code"][-5:])
    assert np.array_equal(stream(cfg.out_dir, "val-c"), np.concatenate(c_docs))
    assert "val-c" in shards.list_splits(cfg.out_dir) and m["tokens_by_language"]["C"] == sum(map(len, c_docs))
    train = stream(cfg.out_dir, "train")
    assert len(train) == sum(len(t) for t, r in zip(docs_tokens(rows["code"]), rows["repo_name"])
                             if prepare.key_fraction(r) >= cfg.val_repo_fraction and r != solo)


def test_github_code_val_budget_never_leaks_held_out_repos_into_train(tmp_path):
    rows = code_rows(300)
    cfg = code_cfg(tmp_path, write_code(tmp_path / "c.parquet", rows), val_tokens=3_000, val_tokens_per_language=2_000)
    m = run_code(cfg)
    held = [prepare.key_fraction(r) < cfg.val_repo_fraction for r in rows["repo_name"]]
    toks = docs_tokens(rows["code"])
    assert np.array_equal(stream(cfg.out_dir, "train"), np.concatenate([t for t, h in zip(toks, held) if not h]))
    assert m["skipped"]["held_out_overflow"] > 0
    assert 3_000 <= len(stream(cfg.out_dir, "val")) < 3_000 + max(map(len, toks))


def test_github_code_filters(tmp_path):
    rows = code_rows(300)
    f = write_code(tmp_path / "c.parquet", rows)
    cfg = code_cfg(tmp_path, f, languages=["python"], licenses=["MIT"], val_repo_fraction=0.0)
    m = run_code(cfg)
    kept = [c for c, lg, li in zip(rows["code"], rows["language"], rows["license"]) if lg == "Python" and li == "mit"]
    assert 0 < len(kept) < len(rows["code"])
    assert np.array_equal(stream(cfg.out_dir, "train"), np.concatenate(docs_tokens(kept)))
    assert m["skipped"]["language_filtered"] + m["skipped"]["license_filtered"] == len(rows["code"]) - len(kept)
    small = run_code(replace(cfg, out_dir=str(tmp_path / "small"), max_file_bytes=100))  # the size column decides
    assert small["skipped"]["too_large"] == sum(size > 100 for size in rows["size"]) > 0  # before the other filters
    with pytest.raises(ConfigError, match="unknown language 'Pyhton'"):
        prepare_github_code.make_spec(replace(cfg, languages=["Pyhton"]))


def test_source_dir_quickstart(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text("def f():\n    return 1\n")
    (src / "pkg" / "b.c").write_text("int main(void) { return 0; }\n")
    (src / "top.py").write_text("print('<|endoftext|>')\n")
    (src / "notes.bin").write_bytes(b"\x00\x01")
    (src / "bad.py").write_bytes(b"x = '\xff\xfe'\n")
    (src / "site-packages").mkdir()
    (src / "site-packages" / "skip.py").write_text("skipped = True\n")
    with open(src / "huge.py", "wb") as f:  # 3 GB, sparse: reading it would take 3 GB of RAM (issue 10)
        f.truncate(3 * 10**9)
    cfg = code_cfg(tmp_path, "", source_dir=str(src), val_repo_fraction=0.0)
    m = run_code(cfg)
    expect = docs_tokens(["print('<|endoftext|>')\n", "def f():\n    return 1\n", "int main(void) { return 0; }\n"])
    train = stream(cfg.out_dir, "train")
    assert sorted(map(bytes, np.split(train, np.flatnonzero(train == EOT)[1:]))) == sorted(map(bytes, expect))
    assert {k: n for k, n in m["skipped"].items() if n} == {"not_code": 1, "invalid_utf8": 1, "too_large": 1}
    assert m["tokens_by_language"].keys() == {"Python", "C"} and m["args"]["max_file_bytes"] == 1_000_000
    assert "1 documents larger than the size limit" in prepare.summary(m)


def test_stats_percentiles_and_png(tmp_path, corpus, capsys):
    texts = sample_texts(corpus, 200)
    cfg = fw_cfg(tmp_path, write_fineweb(tmp_path / "a.parquet", texts))
    run_fw(cfg)
    lengths = prepare.print_stats(cfg.out_dir)
    out = capsys.readouterr().out
    want = sorted(len(t) for t in docs_tokens(texts))
    assert sorted(np.concatenate(list(lengths.values())).tolist()) == want
    assert "p50=" in out and "val" in out and "train" in out
    png = os.path.join(cfg.out_dir, prepare.HIST_PNG)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert shards.list_splits(cfg.out_dir) == ["train", "val"]  # the PNG is not taken for a shard


def test_input_smaller_than_the_val_split_is_refused_before_the_pass(tmp_path, corpus, capsys):
    """FineWeb's default val_tokens (10M) on a small input: refused up front from the input's size, not after
    a full pass, and nothing is written."""
    path = tmp_path / "small.parquet"
    write_fineweb(path, sample_texts(corpus, n=50))
    cfg = fw_cfg(tmp_path, str(path), val_tokens=10_000_000)
    assert run_command(lambda argv: prepare.run(cfg, prepare_fineweb.make_spec, prepare_fineweb.make_sources), []) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "val_tokens=10,000,000 would take all of it" in err[0] and "--val_tokens=" in err[0]
    assert not os.path.exists(cfg.out_dir)


def test_filters_that_leave_only_val_name_the_cause(tmp_path, corpus, capsys):
    """The input is big enough for val_tokens, but the filter keeps so little that val takes it all."""
    texts = sample_texts(corpus, 200)
    kept = sum(len(t) for i, t in enumerate(docs_tokens(texts)) if i % 6 == 5)  # int_score is i % 6
    cfg = fw_cfg(tmp_path, write_fineweb(tmp_path / "e.parquet", texts, edu=True), min_int_score=5, val_tokens=kept + 1)
    assert run_command(lambda argv: prepare.run(cfg, prepare_fineweb.make_spec, prepare_fineweb.make_sources), []) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error:") and "no train tokens: all" in err and "went to the val sets" in err, err
    assert "lower --val_tokens" in err and not os.path.exists(cfg.out_dir)


def test_one_kept_document_is_not_blamed_on_val_tokens(tmp_path, corpus, capsys):
    """One huge kept document goes to val whole, whatever val_tokens is: the advice was to lower val_tokens
    (issue 28); it says what can help instead."""
    cfg = fw_cfg(tmp_path, write_fineweb(tmp_path / "e.parquet", sample_texts(corpus, 6), edu=True), min_int_score=5,
                 val_tokens=1)
    assert run_command(lambda argv: prepare.run(cfg, prepare_fineweb.make_spec, prepare_fineweb.make_sources), []) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "one document was kept" in err and "--val_tokens=0" in err and "lower --val_tokens" not in err, err


def test_text_jsonl_and_directory_inputs(tmp_path, corpus):
    """Tiny Shakespeare in one command (.txt: blank-line-separated blocks are documents), .jsonl with a text
    field, and a directory holding both: the same tokens as tiktoken gives."""
    text = shakespeare()[:20_000]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text(text)
    docs = [d.strip("\n") for d in text.split("\n\n") if d.strip()]
    extra = ["first json document", "second one, with <|endoftext|> as text"]
    (tmp_path / "in" / "b.jsonl").write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(extra)) + "\n")
    cfg = fw_cfg(tmp_path, str(tmp_path / "in"), val_tokens=500)
    m = run_fw(cfg)
    assert [os.path.basename(s["name"]) for s in m["sources"]] == ["a.txt", "b.jsonl"]
    everything = np.concatenate([stream(cfg.out_dir, "val"), stream(cfg.out_dir, "train")])
    assert np.array_equal(everything, np.concatenate(docs_tokens(docs + extra)))
    lines = run_fw(fw_cfg(tmp_path, str(tmp_path / "in" / "a.txt"), out_dir=str(tmp_path / "lines"),
                          txt_documents="lines", val_tokens=500))
    assert sum(lines["docs"].values()) == sum(1 for line in text.splitlines() if line.strip())


def test_list_settings_take_spaces_after_commas():
    from gptlib.settings import load_config
    cfg = load_config(prepare_github_code.GithubCodeConfig, ["--languages", "Python, C", "--licenses=mit , apache-2.0"])
    assert cfg.languages == ["Python", "C"] and cfg.licenses == ["mit", "apache-2.0"]
    prepare_github_code.make_spec(cfg)  # both are known languages


@settings(max_examples=300, deadline=None)
@given(text=st.lists(st.sampled_from(list("ab1 \n\t.'é中") + ["\u00a0", "\u2028", "\x1c", "'s", "  ", "\n\n", "ll"]),
                     max_size=50).map("".join),
       size=st.integers(1, 12))
def test_a_long_document_in_pieces_has_the_whole_documents_tokens(text, size):
    """encode_ordinary cuts a document longer than its piece size just before a space or newline that follows
    non-whitespace, where no GPT-2 pre-token can span: the tokens are the whole text's, for any text (hypothesis:
    letters, digits, contractions, punctuation, Unicode spaces and separators), unless a stretch of `size`
    characters has no such point, where a cut is forced; the pieces always decode to the text."""
    pieces = list(prepare.text_pieces(text, size))
    assert "".join(pieces) == text and all(len(p) <= size for p in pieces)
    ours = prepare.encode_ordinary(ENC, text, piece_chars=size)
    assert ENC.decode(ours.tolist()) == text
    forced = any(len(p) == size and not (i + 1 < len(pieces) and pieces[i + 1][:1] in (" ", "\n") and not p[-1:].isspace())
                 for i, p in enumerate(pieces[:-1]))
    if not forced:
        assert ours.tolist() == ENC.encode_ordinary(text)


def test_real_documents_as_one_long_document_in_pieces(corpus):
    """400 FineWeb documents as one 1.5M-character text, in pieces of 64K characters: the same tokens."""
    text = "\n\n".join(sample_texts(corpus))
    assert len(text) > 1_000_000
    assert prepare.encode_ordinary(ENC, text, piece_chars=1 << 16).tolist() == ENC.encode_ordinary(text)


def test_a_document_longer_than_a_piece_prepares_with_its_own_tokens(tmp_path, corpus):
    """A jsonl line of 2.8M characters (more than PIECE_CHARS: a 1 GB line died inside the tokenizer, issue 28)
    among ordinary ones: prepared, with exactly the tokens tiktoken gives the whole document."""
    texts = sample_texts(corpus, 60)
    huge = " ".join(texts) * 7
    assert len(huge) > 2 * prepare.PIECE_CHARS
    docs = texts[:20] + [huge] + texts[20:]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    cfg = fw_cfg(tmp_path, str(tmp_path / "in.jsonl"), val_tokens=500)
    run_fw(cfg)
    everything = np.concatenate([stream(cfg.out_dir, "val"), stream(cfg.out_dir, "train")])
    assert np.array_equal(everything, np.concatenate(docs_tokens(docs)))


def test_empty_inputs_are_skipped_alike_and_all_empty_is_one_line(tmp_path, capsys):
    """An empty .txt aborted prepare while an empty .jsonl was skipped (issue 28): any input file with no documents
    is named in a note and adds nothing; when every input is empty, that is the error; one document cannot be
    split into train and val, said before the pass, however large it is."""
    (tmp_path / "in").mkdir()
    text = shakespeare()[:20_000]
    (tmp_path / "in" / "a.txt").write_text(text)
    (tmp_path / "in" / "b.txt").write_text("\n\n  \n")
    (tmp_path / "in" / "c.jsonl").write_text("")
    cfg = fw_cfg(tmp_path, str(tmp_path / "in"), val_tokens=500)
    m = run_fw(cfg)
    assert "note: 2 input files with no documents (empty, or only blank lines) add nothing: b.txt, c.jsonl" in \
        capsys.readouterr().err
    assert sum(m["docs"].values()) == sum(1 for d in text.split("\n\n") if d.strip())
    for files, says in ((f"{tmp_path / 'in' / 'b.txt'},{tmp_path / 'in' / 'c.jsonl'}",
                         "none of the 2 input files holds any text (each is empty"),
                        (str(tmp_path / "in" / "c.jsonl"), "c.jsonl holds no text"),
                        (f"{tmp_path / 'in' / 'b.txt'},{tmp_path / 'one.jsonl'}", "one.jsonl is the only document")):
        (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}) + "\n")
        out = tmp_path / "refused"
        code = run_command(lambda argv: prepare.run(fw_cfg(tmp_path, files, out_dir=str(out)), prepare_fineweb.make_spec,
                                                    prepare_fineweb.make_sources), [])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("error:") and says in err[-1], err
        assert not out.exists()
