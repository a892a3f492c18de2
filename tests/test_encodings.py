"""Text inputs in other encodings (issue 37): the input checks run encoding first, then structure, then counts, so
a UTF-16/32 file (a byte-order mark, or NULs between its characters) or a latin-1 one is named as such with its fix
(--encoding, or iconv), never blamed on its document count; the advised --encoding then makes the same tokens as
the text in UTF-8."""
import json

import numpy as np
import pytest

import prepare_fineweb
from conftest import shakespeare
from gptlib import shards
from gptlib.errors import run_command

TEXT = shakespeare()[:30_000]


def prepare(capsys, *argv):
    rc = run_command(prepare_fineweb.main, list(argv))
    return rc, capsys.readouterr().err.strip().splitlines()


def tokens(out):
    return np.concatenate([np.load(p) for s in ("val", "train") for p in shards.list_shards(str(out), s)])


@pytest.mark.parametrize("codec, written, named", [("utf-16", "utf-16", "utf-16"), ("utf-16-le", "utf-16-le", "utf-16-le"),
                                                    ("utf-16-be", "utf-16-be", "utf-16-be"), ("utf-32", "utf-32", "utf-32")])
def test_utf16_and_utf32_text_is_named_and_its_fix_makes_the_utf8_tokens(tmp_path, capsys, codec, written, named):
    (tmp_path / "in.txt").write_bytes(TEXT.encode(written))
    (tmp_path / "utf8.txt").write_text(TEXT, encoding="utf-8")
    common = ["--val_tokens=500"]
    rc, err = prepare(capsys, f"--data_files={tmp_path / 'in.txt'}", f"--out_dir={tmp_path / 'a'}", *common)
    assert rc == 1 and len(err) == 1 and f"is {named.upper()} text" in err[0] and f"--encoding={named}" in err[0], err
    assert not (tmp_path / "a").exists()
    fix = next(w for w in err[0].split() if w.startswith("--encoding=")).rstrip(",;")
    assert prepare(capsys, f"--data_files={tmp_path / 'in.txt'}", f"--out_dir={tmp_path / 'a'}", *common, fix)[0] == 0
    assert prepare(capsys, f"--data_files={tmp_path / 'utf8.txt'}", f"--out_dir={tmp_path / 'b'}", *common)[0] == 0
    assert np.array_equal(tokens(tmp_path / "a"), tokens(tmp_path / "b"))


def test_the_encoding_is_named_before_the_document_count(tmp_path, capsys):
    """A UTF-16 file as one document (--txt_documents=file): it used to be 'the only document', and the advised
    --txt_documents=lines then made a dataset of NUL-laden garbage."""
    (tmp_path / "in.txt").write_bytes(TEXT.encode("utf-16-le"))
    rc, err = prepare(capsys, f"--data_files={tmp_path / 'in.txt'}", f"--out_dir={tmp_path / 'a'}", "--txt_documents=file")
    assert rc == 1 and "UTF-16-LE text" in err[0] and "only document" not in err[0], err


def test_a_latin1_file_is_named_and_reads_with_its_encoding(tmp_path, capsys):
    text = "Un café au lait, une crème brûlée.\n\nLa forêt où naît le ruisseau.\n\n" * 200
    (tmp_path / "in.txt").write_bytes(text.encode("latin-1"))
    rc, err = prepare(capsys, f"--data_files={tmp_path / 'in.txt'}", f"--out_dir={tmp_path / 'a'}", "--val_tokens=200")
    assert rc == 1 and "no document of" in err[0] and "--encoding=latin-1" in err[0], err
    assert prepare(capsys, f"--data_files={tmp_path / 'in.txt'}", f"--out_dir={tmp_path / 'a'}", "--val_tokens=200",
                   "--encoding=latin-1")[0] == 0
    enc = shards.gpt2_encoding()
    assert "crème brûlée" in enc.decode(tokens(tmp_path / "a").tolist())


def test_jsonl_in_utf16_or_latin1_is_named(tmp_path, capsys):
    lines = "\n".join(json.dumps({"text": p}, ensure_ascii=False) for p in TEXT.split("\n\n") if p.strip())
    (tmp_path / "u16.jsonl").write_bytes(lines.encode("utf-16"))
    rc, err = prepare(capsys, f"--data_files={tmp_path / 'u16.jsonl'}", f"--out_dir={tmp_path / 'a'}", "--val_tokens=500")
    assert rc == 1 and "UTF-16 text" in err[0], err
    assert prepare(capsys, f"--data_files={tmp_path / 'u16.jsonl'}", f"--out_dir={tmp_path / 'a'}", "--val_tokens=500",
                   "--encoding=utf-16")[0] == 0
    (tmp_path / "l1.jsonl").write_bytes('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    rc, err = prepare(capsys, f"--data_files={tmp_path / 'l1.jsonl'}", f"--out_dir={tmp_path / 'b'}", "--val_tokens=0")
    assert rc == 1 and "line 1 is not UTF-8" in err[0] and "--encoding=latin-1" in err[0], err


def test_an_unknown_encoding_is_a_settings_error(tmp_path, capsys):
    rc, err = prepare(capsys, f"--data_files={tmp_path}", "--encoding=klingon")
    assert rc == 2 and "not a text encoding Python knows" in err[0], err
