"""plot.py: a real PNG from metrics.jsonl files written by monitor.MetricsLog, interval-averaged train loss,
the best marker on the primary val set, and a one-line error for a directory without metrics."""
import math
import subprocess
import sys

import pytest

import plot
from gptlib.errors import run_command
from gptlib.monitor import METRICS_FILE, MetricsLog

REPO = plot.__file__.rsplit("/", 1)[0]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fake_run(out_dir, n_steps, eval_every, floor, tokens_per_step=4096):
    """A run whose loss decays towards `floor`, logged exactly as train.py logs it."""
    out_dir.mkdir()
    log = MetricsLog(str(out_dir / METRICS_FILE))
    for it in range(n_steps):
        if it % eval_every == 0:
            val = floor + 8 * math.exp(-it / 40) + (0.05 if it == 80 else 0.0)
            log.log_eval(it, it * tokens_per_step, {"val": val, "val-python": val + 0.3}, train_loss=val - 0.02)
        loss = floor + 8 * math.exp(-it / 40) + 0.2 * math.sin(it)  # noisy per-step loss
        log.log_step(it, (it + 1) * tokens_per_step, loss=loss, lr=6e-4, grad_norm=1.0, ms=50.0, tok_per_sec=8e4)
    log.close()
    return out_dir


def test_average_intervals_means_steps_and_skips_nan():
    steps = [{"tokens": 10 * (i + 1), "loss": float(i + 1)} for i in range(10)]
    steps[2]["loss"] = float("nan")  # a skipped step
    xs, ys = plot.average_intervals(steps, points=5)
    assert xs == [20, 40, 60, 80, 100]
    assert ys == [1.5, 4.0, 5.5, 7.5, 9.5]


def test_best_point_follows_primary_val_set():
    evals = [{"tokens": 0, "val/val": 5.0, "val/val-python": 1.0},
             {"tokens": 100, "val/val": 3.0, "val/val-python": 2.0},
             {"tokens": 200, "val/val": 3.5, "val/val-python": 0.5}]
    curves = plot.val_curves(evals)
    assert plot.best_point(curves, plot.primary_key(evals, curves)) == ("val/val", 100, 3.0)
    assert plot.best_point({}) is None
    # train.py's primary_val may name another set; the records say which
    evals[-1]["primary"] = "val-python"
    assert plot.best_point(curves, plot.primary_key(evals, curves)) == ("val/val-python", 200, 0.5)


def test_plot_writes_a_readable_png_comparing_runs(tmp_path):
    import matplotlib.image
    a = _fake_run(tmp_path / "run-a", 200, 20, floor=3.0)
    b = _fake_run(tmp_path / "run-b", 120, 30, floor=3.5)
    out = tmp_path / "cmp.png"
    plot.main([str(a), str(b), "--out", str(out)])
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(str(out))
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    assert img.std() > 0.05  # lines were drawn, not a blank canvas


def test_plot_cli_missing_metrics_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    r = subprocess.run([sys.executable, "plot.py", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith("error:") and "metrics.jsonl" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_refuses_an_empty_metrics_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / METRICS_FILE).write_text("")
    assert run_command(plot.main, [str(tmp_path / "run"), "--out", str(tmp_path / "x.png")]) == 1


def test_resume_labels_stay_short_and_the_best_at_zero_tokens_reads_0():
    changes = ["learning_rate 0.0006 -> 0.0003", "max_iters 100 -> 20000", "seed 1 -> 2: kept at the checkpoint's seed",
               "data_order 'stream' -> 'windows': kept", "the learning rate at iter 50 is now 3e-4 (it would have been 6e-4)"]
    label = plot.resume_label(changes)
    assert label == "resumed (learning_rate, max_iters, seed +2)" and len(label) < 60
    assert plot.resume_label([]) == "resumed (same settings)"
    from gptlib.monitor import human_count
    assert f"@ {human_count(0)} tok" == "@ 0 tok"
