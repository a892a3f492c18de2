"""Every command x every path argument x each pathology of a path (issue 28): a non-zero exit, one line starting
with `error:`, no traceback, and every file that was there before byte-identical afterwards. Run in-process under
the commands' own error policy (gptlib.errors.run_command), as their scripts run them."""
import contextlib
import hashlib
import os
import pathlib
import tempfile

import pytest

import bench
import eval as eval_script
import export
import plot
import prepare_fineweb
import prepare_github_code
import sample
import train
from advice import assert_advice_works
from gptlib.errors import run_command
from conftest import shakespeare
from test_train import make_dataset

MAINS = {"train": train.main, "eval": eval_script.main, "sample": sample.main, "export": export.main,
         "bench": bench.main, "prepare_fineweb": prepare_fineweb.main, "prepare_github_code": prepare_github_code.main,
         "plot": plot.main}
TINY = ["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--compile=False"]
# (command, how the path is given, the other arguments, what kind of path the argument wants; a file's name ends
# as the argument asks, so that the checks on the path itself are what is tried)
ARGUMENTS = [
    ("train", "--data_dir={}", TINY + ["--max_iters=2", "--warmup_iters=1", "--out_dir={out}"], "dir"),
    ("train", "--init_from={}.pt", TINY + ["--max_iters=2", "--warmup_iters=1", "--out_dir={out}", "--data_dir={data}"],
     "file"),
    ("train", "{}", ["--plan"], "file"),  # a config file
    ("eval", "--ckpt={}.pt", ["--device=cpu"], "file"),
    ("eval", "--init_from={}.pt", ["--device=cpu"], "file"),
    ("sample", "--init_from={}.pt", ["--device=cpu", "--max_new_tokens=2"], "file"),
    ("export", "--init_from={}.pt", ["--to={out}"], "file"),
    ("bench", "--data_dir={}", TINY + ["--use_data", "--iters=1", "--warmup_iters_bench=0", "--compile=False"], "dir"),
    ("prepare_fineweb", "--data_files={}.parquet", ["--out_dir={out}"], "file"),
    ("prepare_github_code", "--source_dir={}", ["--out_dir={out}"], "dir"),
    ("plot", "{}", ["--out={out}/p.png"], "dir"),
]


def make(kind, root, wants, suffix):
    """A path of one pathology under root."""
    p = root / f"bad-{kind}{suffix}"
    if kind == "missing":
        pass
    elif kind == "loop":
        os.symlink(p.name, p)
    elif kind == "dangling":
        os.symlink(root / "nothing-here", p)
    elif kind == "wrong_kind":  # a directory where a file is wanted, a file where a directory is
        p.mkdir() if wants == "file" else p.write_text("not a folder\n")
    elif kind == "empty":
        p.mkdir() if wants == "dir" else p.write_bytes(b"")
    return p


SAYS = {"missing": "", "loop": "loops back on itself", "dangling": "symbolic link to", "wrong_kind": "directory",
        "empty": ""}  # an empty input is refused in the words of what it lacks


def snapshot(root):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "link"
            for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@pytest.mark.parametrize("kind", ["missing", "loop", "dangling", "wrong_kind", "empty"])
@pytest.mark.parametrize("command,form,args,wants", ARGUMENTS, ids=[f"{a[0]}:{a[1].split('=')[0] or 'positional'}" for a in ARGUMENTS])
def test_a_bad_path_is_one_error_line_and_nothing_changes(tmp_path, capsys, monkeypatch, command, form, args,
                                                          wants, kind):
    monkeypatch.chdir(tmp_path)
    suffix = form.rsplit("}", 1)[1]
    bad = make(kind, tmp_path, wants, suffix)
    (tmp_path / "keep.txt").write_text("the user's file\n")
    before = snapshot(tmp_path)
    data = ""
    if any("{data}" in a for a in args):  # a good dataset, so that the check of the bad path is what fails
        (tmp_path / "data").mkdir()
        data = make_dataset(tmp_path / "data", shakespeare()[:20_000], val_docs=5)
    argv = [form[:len(form) - len(suffix)].format(bad)] + [a.format(out=tmp_path / "out", data=data) for a in args]
    code = run_command(MAINS[command], argv)
    err = capsys.readouterr().err.strip().splitlines()
    if (command, form, kind) == ("train", "{}", "empty"):  # an empty config file sets nothing: a valid config
        assert code == 0 and not err
        return
    assert code != 0, (argv, err)
    assert len(err) == 1 and err[0].startswith("error:"), err
    assert "Traceback" not in err[0] and bad.name in err[0]  # the line names the path it is about
    assert SAYS[kind] in err[0].lower(), err  # and what is wrong with it
    after = snapshot(tmp_path)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing there before was touched
    assert_advice_works(MAINS[command], command, argv, err[0])  # (issue 37)


def test_an_os_error_nobody_listed_is_one_line_with_its_name(capsys):
    """ELOOP, EBUSY and the others a path can meet are listed with advice; any other errno at a path still gets one
    line, naming the errno, never a traceback. An OSError at no path is not a file problem: it keeps its traceback."""
    import errno

    def fails(err):
        def main(argv):
            raise err
        return main

    assert run_command(fails(OSError(errno.ETXTBSY, "Text file busy", "/data/x.bin")), []) == 1
    line = capsys.readouterr().err.strip()
    assert line == "error: /data/x.bin: Text file busy; check the path and the disk it is on (ETXTBSY)"
    assert run_command(fails(OSError(errno.EBUSY, "Device or resource busy", "/mnt/usb", None, "/mnt/usb.old")), []) == 1
    assert "error: /mnt/usb -> /mnt/usb.old: Device or resource busy; it is in use (a mount point?)" in \
        capsys.readouterr().err
    with pytest.raises(OSError):
        run_command(fails(OSError(errno.ECONNRESET, "Connection reset")), [])


def test_a_jsonl_line_in_latin_1_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    """json.loads of bytes that are not UTF-8 raises UnicodeDecodeError, which has no .msg: the handler that
    formatted its message raised AttributeError instead (issue 28). It is named as the encoding it is (issue 37)."""
    src = tmp_path / "docs.jsonl"
    src.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    before = snapshot(tmp_path)
    code = run_command(prepare_fineweb.main, [f"--data_files={src}", f"--out_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"error: {src} line 2 is not UTF-8 ('utf-8' codec")  # issue 37
    assert "--encoding=latin-1" in err[0]
    assert {p: h for p, h in snapshot(tmp_path).items() if p in before} == before


def test_no_command_deletes_or_replaces_its_own_input_even_with_overwrite(tmp_path, capsys):
    """export.py --to=the run's own folder --overwrite=True deleted the run's checkpoints, log and metrics (exit 0);
    train.py --init_from=OUT/ckpt_predecay.pt into OUT with --overwrite=True replaced the finished ckpt.pt. Both are
    refused now, with advice that keeps everything (issue 28)."""
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:20_000], val_docs=5)
    run = tmp_path / "run"
    tiny = TINY + ["--max_iters=4", "--warmup_iters=1", f"--data_dir={data}", "--eval_interval=2", "--eval_tokens=64",
                   "--total_batch_size=64", "--log_interval=1"]
    assert run_command(train.main, tiny + [f"--out_dir={run}", "--lr_schedule=wsd", "--decay_frac=0.5"]) == 0
    assert (run / "ckpt_predecay.pt").exists()
    capsys.readouterr()
    before = snapshot(tmp_path)
    for argv in ([f"--out_dir={run}", f"--to={run}", "--overwrite=True"],
                 [f"--init_from={run / 'ckpt.pt'}", f"--to={tmp_path}", "--overwrite=True"]):
        assert run_command(export.main, argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "exporting there would delete it; choose another folder" in err[0], err
    assert run_command(train.main, tiny + [f"--out_dir={run}", f"--init_from={run / 'ckpt_predecay.pt'}",
                                           "--overwrite=True", "--max_iters=6"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--init_from=resume --resume_from=ckpt_predecay.pt" in err[0], err
    assert "--overwrite" not in err[0]  # a refusal never suggests what would destroy the run
    assert snapshot(tmp_path) == before
    # the advice, applied, continues from the pre-decay checkpoint and keeps the finished run
    assert run_command(train.main, tiny + [f"--out_dir={run}", "--init_from=resume", "--resume_from=ckpt_predecay.pt",
                                           "--max_iters=6", "--lr_schedule=wsd", "--decay_frac=0.5"]) == 0
    assert list(run.glob("ckpt_final_*.pt"))


def test_eval_refuses_two_models_instead_of_ignoring_one(capsys):
    assert run_command(eval_script.main, ["--ckpt=b.pt", "--init_from=a.pt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --ckpt=b.pt and --init_from=a.pt both name a model; give one of them"]


def test_one_eval_window_has_no_standard_error_to_report(tmp_path, capsys):
    """A spread needs two windows: one window used to be reported as ±0.0000 (issue 28)."""
    (tmp_path / "data").mkdir()
    data = make_dataset(tmp_path / "data", shakespeare()[:20_000], val_docs=5)
    run = tmp_path / "run"
    assert run_command(train.main, TINY + ["--max_iters=2", "--warmup_iters=1", f"--data_dir={data}",
                                           f"--out_dir={run}", "--total_batch_size=64", "--eval_tokens=32"]) == 0
    assert "val/val" in capsys.readouterr().out
    assert "±n/a (1 window) (32 tok)" in (run / "log.txt").read_text()
    assert run_command(eval_script.main, [f"--out_dir={run}", "--device=cpu", "--max_tokens=32"]) == 0
    assert "±n/a (1 window)" in capsys.readouterr().out


# ----------------------------------------------------------------------------- destinations, and unreadable inputs

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """What the commands read: a dataset, a trained tiny run, a parquet file and a folder of source files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    root = tmp_path_factory.mktemp("inputs")
    (root / "data").mkdir()
    data = make_dataset(root / "data", shakespeare()[:20_000], val_docs=5)
    run = root / "run"
    assert run_command(train.main, TINY + ["--max_iters=1", "--warmup_iters=1", f"--data_dir={data}", f"--out_dir={run}",
                                           "--total_batch_size=64", "--eval_tokens=64"]) == 0
    (root / "pq").mkdir()
    pq.write_table(pa.table({"text": [p for p in shakespeare()[:40_000].split("\n\n") if p.strip()]}),
                   root / "pq" / "docs.parquet")
    (root / "src" / "repo").mkdir(parents=True)
    for i in range(20):
        (root / "src" / "repo" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 20)
    return {"data": data, "run": str(run), "parquet": str(root / "pq" / "docs.parquet"), "src": str(root / "src")}


# (command, how the destination is given, the other arguments, the destination that is the command's own input)
OUTPUTS = [
    ("train", "--out_dir={}", TINY + ["--max_iters=1", "--warmup_iters=1", "--data_dir={data}", "--total_batch_size=64",
                                      "--eval_tokens=64"], "{data}"),
    ("prepare_fineweb", "--out_dir={}", ["--data_files={parquet}", "--val_tokens=100"], "{parquet_dir}"),
    ("prepare_github_code", "--out_dir={}", ["--source_dir={src}"], "{src}"),
    ("eval", "--json_out={}", ["--out_dir={run}", "--max_tokens=64", "--device=cpu"], "{run}/ckpt.pt"),
    ("export", "--to={}", ["--out_dir={run}"], "{run}"),
    ("plot", "--out={}", ["{run}"], "{run}/metrics.jsonl"),
]
DEST_NAME = {"eval": "r.json", "plot": "p.png"}  # a file destination's name; the others are folders


def fill(inputs, text):
    return text.format(parquet_dir=os.path.dirname(inputs["parquet"]), **inputs)


@pytest.mark.parametrize("command,form,args,own", OUTPUTS, ids=[o[0] for o in OUTPUTS])
def test_a_destination_on_a_full_disk_or_that_is_its_own_input_is_one_line(inputs, tmp_path, capsys, command, form,
                                                                           args, own):
    """A full disk (a tmpfs filled to the brim before the command) and the command's own input given as its output:
    one error line, the inputs byte-identical, nothing left on the full disk."""
    from test_filesystems import tmpfs
    argv = [fill(inputs, a) for a in args]
    before = snapshot(pathlib.Path(inputs["run"]).parent)
    with tmpfs(tmp_path / "full", 256) as full:
        with open(full / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * 2**20)
        dest = full / DEST_NAME.get(command, "out")
        code = run_command(MAINS[command], [form.format(dest)] + argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code != 0 and len(err) == 1 and err[0].startswith("error:"), err
        assert "No space left on device" in err[0] or "disk full" in err[0], err
        assert sorted(os.listdir(full)) == ["filler"]
    own_argv = [form.format(fill(inputs, own))] + argv
    code = run_command(MAINS[command], own_argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and "--overwrite" not in err[0], err
    assert snapshot(pathlib.Path(inputs["run"]).parent) == before
    with tempfile.TemporaryDirectory() as elsewhere, contextlib.chdir(elsewhere):  # its advice, pasted (issue 37)
        assert_advice_works(MAINS[command], command, own_argv, err[0])


RUNNER = """import contextlib, io, json, sys
sys.path.insert(0, 'tests')
from test_fault_matrix import MAINS
from gptlib.errors import run_command
out = []
for command, argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run_command(MAINS[command], argv)
        except BaseException as e:  # a traceback: reported as such
            code, err = -1, io.StringIO(f"Traceback: {type(e).__name__}: {e}")
    out.append([code, err.getvalue()])
print(json.dumps(out))
"""


def without_root_privileges():
    """For a child process: root reads and writes any file whatever its mode (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH), and CI runs as root. Dropping both from the bounding set before exec leaves a
    root child that mode bits stop, as they stop a user (prctl PR_CAPBSET_DROP; Linux)."""
    if os.geteuid() != 0:
        return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


def run_unprivileged(cases):
    """[(command, argv)] run in one child process that mode bits apply to: [(exit code, stderr)]."""
    import json
    import subprocess
    import sys
    from conftest import REPO
    r = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(cases)], cwd=REPO, capture_output=True, text=True,
                       preexec_fn=without_root_privileges, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not hasattr(os, "geteuid") or not os.path.exists("/proc/self/status"), reason="Linux mode bits")
def test_unreadable_inputs_and_read_only_destinations_are_one_line(inputs, tmp_path):
    """Every path argument of every command, unreadable (mode 000), and every destination inside a read-only
    folder (mode 555): one error line naming the path, no traceback, nothing changed (issue 28)."""
    cases, paths = [], []
    for command, form, args, wants in ARGUMENTS:
        suffix = form.rsplit("}", 1)[1]
        p = tmp_path / f"locked-{len(cases)}{suffix}"
        if wants == "dir":
            p.mkdir()
            (p / "inside.txt").write_text("x\n")
        else:
            p.write_bytes(b"batch_size = 4\n" if command == "train" and form == "{}" else b"not empty\n")
        os.chmod(p, 0)
        data = inputs["data"]
        cases.append((command, [form[:len(form) - len(suffix)].format(p)] +
                      [a.format(out=tmp_path / f"out-{len(cases)}", data=data) for a in args]))
        paths.append(p.name)
    ro = tmp_path / "ro"
    ro.mkdir()
    for command, form, args, own in OUTPUTS:
        cases.append((command, [form.format(ro / DEST_NAME.get(command, "out"))] + [fill(inputs, a) for a in args]))
        paths.append("ro")
    os.chmod(ro, 0o555)
    before = snapshot(pathlib.Path(inputs["run"]).parent)
    try:
        results = run_unprivileged(cases)
    finally:
        for p in tmp_path.iterdir():
            os.chmod(p, 0o755)
    for (command, argv), name, (code, err) in zip(cases, paths, results):
        lines = err.strip().splitlines()
        assert code > 0 and len(lines) == 1 and lines[0].startswith("error:"), (command, argv, lines)
        assert name in lines[0] and "permission" in lines[0].lower(), (command, argv, lines)
    assert os.listdir(ro) == [] and snapshot(pathlib.Path(inputs["run"]).parent) == before


def test_an_empty_mount_point_as_the_export_folder_is_one_line_and_its_advice_works(inputs, tmp_path, capsys):
    """Exporting replaces the folder by renaming: an empty mount point cannot be renamed (EBUSY), which was a
    traceback (issue 28). One line now, whose advice (a folder inside it) works."""
    from test_filesystems import tmpfs
    with tmpfs(tmp_path / "mnt", 64 * 1024) as mnt:
        assert run_command(export.main, [f"--out_dir={inputs['run']}", f"--to={mnt}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Device or resource busy; it is in use (a mount point?): choose a path inside it" \
            in err[0] and str(mnt) in err[0], err
        assert os.listdir(mnt) == [] and sorted(os.listdir(tmp_path)) == ["mnt"]
        assert run_command(export.main, [f"--out_dir={inputs['run']}", f"--to={mnt / 'hf'}"]) == 0
        assert "config.json" in os.listdir(mnt / "hf")
