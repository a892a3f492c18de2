"""Any value for any setting, on each command, gives a run or one line, never a traceback (issue 28): hypothesis
draws a setting of the command and a value of any type (huge and negative numbers, nan, empty and odd text, the
wrong type), and the command runs on a tiny real input under its own error policy. The process's address space is
capped while it runs, so a value that asks for terabytes is an allocation the allocator refuses (one line), not a
machine swapping. A few examples per command by default; PROPERTY_EXAMPLES=200 (or -m slow) for a deeper search."""
import contextlib
import dataclasses
import io
import os
import resource

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

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
from test_fault_matrix import MAINS, TINY, inputs  # noqa: F401 (a fixture)

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "4"))
CONFIGS = {"train": train.TrainConfig, "sample": sample.SampleConfig, "eval": eval_script.EvalConfig,
           "export": export.ExportConfig, "bench": bench.BenchConfig, "plot": plot.PlotConfig,
           "prepare_fineweb": prepare_fineweb.FinewebConfig, "prepare_github_code": prepare_github_code.GithubCodeConfig}
BASE = {  # a quick real run of each command, which the drawn setting then overrides
    "train": TINY + ["--max_iters=1", "--warmup_iters=1", "--data_dir={data}", "--out_dir={tmp}/run",
                     "--total_batch_size=64", "--eval_tokens=64"],
    "sample": ["--out_dir={run}", "--max_new_tokens=3", "--device=cpu"],
    "eval": ["--out_dir={run}", "--max_tokens=64", "--device=cpu"],
    "export": ["--out_dir={run}", "--to={tmp}/hf"],
    "bench": TINY + ["--iters=1", "--warmup_iters_bench=0"],
    "plot": ["{run}", "--out={tmp}/p.png"],
    "prepare_fineweb": ["--data_files={parquet}", "--out_dir={tmp}/fw", "--val_tokens=100"],
    "prepare_github_code": ["--source_dir={src}", "--out_dir={tmp}/code"],
}
# Settings whose every value is a legitimate run of that length (max_iters=10**12 trains for ever), left out.
LONG = {"train": {"max_iters", "total_batch_size"}, "bench": {"iters", "warmup_iters_bench"},
        "sample": {"num_samples", "max_new_tokens"}}
VALUES = st.one_of(
    st.integers(-2**70, 2**70), st.sampled_from([0, 1, -1, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=12), st.sampled_from(["", " ", "None", "[]", "[1, 'a']", "{}", "/", "~", "..", "a,b,", "\\x00",
                                           "gpt2", "cuda", "cpu", "mps", "1e400", "-0.0", "nan"]))
AS_TEXT = st.one_of(VALUES.map(str), VALUES.map(repr))


@contextlib.contextmanager
def address_space_capped(extra=3 * 2**30):
    """RLIMIT_AS at what the process holds now plus `extra`, restored after (the soft limit goes back up)."""
    held = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (held + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def check_one(command, inputs, tmp, key, text):
    argv = [a.format(tmp=tmp, **inputs) for a in BASE[command]] + [f"--{key}={text}"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), address_space_capped():
        code = run_command(MAINS[command], argv)  # a traceback propagates and fails the test, with the example
    errors = [line for line in err.getvalue().splitlines() if line.startswith("error")]
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue()[-2000:])
    assert (code == 0 and not errors) or (code != 0 and len(errors) == 1), (argv, code, err.getvalue()[-2000:])
    if errors:  # its advice, pasted, gets past it (issue 37)
        assert_advice_works(MAINS[command], command, argv, errors[0])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="caps the address space from /proc's figure")
@pytest.mark.parametrize("command", list(CONFIGS))
def test_any_value_for_any_setting_is_a_run_or_one_line(command, inputs, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # init_from='gpt2', --num_files: the hub is not reached from tests
    names = [f.name for f in dataclasses.fields(CONFIGS[command]) if f.name not in LONG.get(command, ())]

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 10,
              suppress_health_check=list(HealthCheck))
    @given(key=st.sampled_from(names), text=AS_TEXT)
    def check(key, text):
        tmp = tmp_path_factory.mktemp(command)
        with contextlib.chdir(tmp):  # a drawn relative path lands here
            check_one(command, inputs, tmp, key, text)
    check()
