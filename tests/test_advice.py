"""Advice checked by construction (issue 37): a fix an error line prints, followed literally, never fails the same
check again: it repeats nothing already in force and brings the settings tied to it along (settings.checked_fix)."""
import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import train
from advice import applicable_advice
from conftest import REPO, shakespeare
from gptlib.errors import ConfigError, run_command
from gptlib.settings import checked_fix, load_config
from gptlib.train_settings import TrainConfig
from test_properties import AS_TEXT, CONFIGS, EXAMPLES
from test_train import TINY, make_dataset


def test_a_fix_brings_the_settings_tied_to_it_and_repeats_nothing():
    cfg = load_config(TrainConfig, [str(REPO / "config" / "recipe_speedrun.py"), "--n_layer=6"])
    # keeping a model without a window must also stop its warmup (window_start=128 grows a window of 0: refused)
    assert checked_fix(cfg, {"attn_window": 0, "window_pattern": "L"}) == \
        "--attn_window=0 --window_pattern=L --window_start=0"
    assert checked_fix(cfg, {"optimizer": "muon"}) == ""  # already in force: no fix at all
    assert checked_fix(cfg, {"warmup_iters": 10**9}) == ""  # a fix whose own error names no fix is dropped


def test_a_recipe_on_another_runs_checkpoint_gets_overrides_that_run(tmp_path, capsys):
    """config/recipe_speedrun.py with --init_from=a classic run's checkpoint: the overrides that keep its model
    used to leave the window's warmup in place, and failed again when pasted."""
    data = make_dataset(tmp_path, shakespeare()[:40_000], val_docs=10)
    assert train.run(TINY + [f"--data_dir={data}", f"--out_dir={tmp_path / 'a'}", "--max_iters=2"]) == 0
    args = [str(REPO / "config" / "recipe_speedrun.py")] + TINY + [
        "--value_embeds=1", f"--data_dir={data}", f"--out_dir={tmp_path / 'b'}", f"--init_from={tmp_path / 'a' / 'ckpt.pt'}",
        "--max_iters=4", "--warmup_iters=0"]
    assert run_command(train.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep its model with" in err[0] and "--window_start=0" in err[0], err
    assert run_command(train.main, args + applicable_advice(err[0])) == 0


@pytest.mark.parametrize("command", list(CONFIGS))
def test_every_fix_a_settings_error_prints_passes_that_check(command):
    """Any value for one or two settings of a command: where its settings are refused with a concrete fix, the
    fix pasted after them is not refused for the same reason."""
    cls = CONFIGS[command]
    names = [f.name for f in dataclasses.fields(cls)]

    @settings(max_examples=25 * EXAMPLES, deadline=None, derandomize=EXAMPLES <= 10,
              suppress_health_check=list(HealthCheck))
    @given(keys=st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True), texts=st.lists(AS_TEXT, min_size=2, max_size=2))
    def check(keys, texts):
        argv = [f"--{k}={t}" for k, t in zip(keys, texts)]
        try:
            load_config(cls, argv, notes=[])
            return
        except ConfigError as e:
            first = str(e)
        fixes = applicable_advice(f"error: {first}")
        if fixes:
            try:
                load_config(cls, argv + fixes, notes=[])
            except ConfigError as e:
                assert str(e) != first, (argv, fixes, first)
    check()
