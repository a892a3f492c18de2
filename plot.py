"""Plot train and validation loss against tokens seen, for one run or several on one chart.

    python plot.py out/gpt2-124m                      # writes out/gpt2-124m/loss.png
    python plot.py out/run-a out/run-b --out cmp.png   # compare runs (legend by directory name)

Reads each OUT_DIR/metrics.jsonl written by train.py (monitor.MetricsLog). The train curve is the mean
step loss over each interval between plotted points, not single noisy micro-batch losses; the best
checkpoint (lowest primary validation loss) is starred. A lower panel shows the learning rate, and a
dotted line marks each point where the run was resumed (labelled with the settings changed there).
"""
import contextlib
import math
import os
import sys
from dataclasses import dataclass

from gptlib import paths
from gptlib.errors import run_command
from gptlib.monitor import METRICS_FILE, MonitorError, human_count, read_metrics
from gptlib.settings import load_config, setting

DEFAULT_POINTS = 200  # train-loss points per run; each is the mean of the steps in its interval
RESUME_LABEL_NAMES = 3  # settings named on a resume line (more are counted): a long label ran off the figure
PRIMARY_VAL = "val/val"  # the best marker's val set when eval records name no "primary" set
FORMATS = (".png", ".pdf", ".svg")  # what --out may be


@dataclass
class PlotConfig:
    runs: list[str] = setting([])  # run directories holding metrics.jsonl (the bare arguments)
    out: str = setting("", path="file")  # image to write (.png, .pdf or .svg); '': loss.png in the first run's directory
    points: int = setting(DEFAULT_POINTS, ge=1)  # train-loss points per run (averaged intervals)

    def problems(self):
        if not self.runs:
            return ["give at least one run directory: python plot.py OUT_DIR [OUT_DIR ...] [--out FILE.png]"]
        if self.out and not self.out.lower().endswith(FORMATS):
            return [f"--out={self.out!r} needs one of the endings {', '.join(FORMATS)}"]
        return []


def load_run(out_dir):
    """(train_points, val_curves, best) of one run directory, ready to draw."""
    bad = paths.problem(out_dir, "dir")
    if bad:
        raise MonitorError(f"{bad[1]}; pass the out_dir of a train.py run")
    path = os.path.join(out_dir, METRICS_FILE)
    if not os.path.isfile(path):
        raise MonitorError(f"{out_dir} has no {METRICS_FILE}; pass the out_dir of a train.py run")
    records = read_metrics(path)
    for k, r in enumerate(records):
        bad = [f for f in ("tokens", "loss", "lr") if r.get(f) is not None and not _is_number(r[f])]
        if bad:
            raise MonitorError(f"{path} record {k + 1} has a non-numeric {bad[0]} ({r[bad[0]]!r}); fix or delete that line")
    steps = [r for r in records if r.get("kind") == "train" and r.get("tokens") is not None]
    evals = [r for r in records if r.get("kind") == "eval" and r.get("tokens") is not None]
    resumes = [r for r in records if r.get("kind") == "resume" and r.get("tokens") is not None]
    if not steps and not evals:
        raise MonitorError(f"{path} holds no train or eval records yet; let the run log a few steps first")
    return steps, evals, resumes


def _is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def average_intervals(steps, points):
    """(tokens, mean loss) per interval of ~len(steps)/points consecutive steps, skipping non-finite losses
    (steps that train.py skipped), placed at the interval's last token count."""
    width = max(1, math.ceil(len(steps) / points))
    xs, ys = [], []
    for i in range(0, len(steps), width):
        chunk = steps[i:i + width]
        losses = [r["loss"] for r in chunk if r.get("loss") is not None and math.isfinite(r["loss"])]
        if losses:
            xs.append(chunk[-1]["tokens"])
            ys.append(sum(losses) / len(losses))
    return xs, ys


def val_curves(evals):
    """{'val/val': (tokens, losses), ...} in the order the sets first appear."""
    curves = {}
    for r in evals:
        for key, v in r.items():
            if key.startswith("val/") and _is_number(v) and math.isfinite(v):
                xs, ys = curves.setdefault(key, ([], []))
                xs.append(r["tokens"])
                ys.append(v)
    return curves


def primary_key(evals, curves):
    """The val set train.py's best checkpoint follows: the records' "primary" field, else val/val, else the first."""
    named = next((r["primary"] for r in reversed(evals) if r.get("primary")), None)
    if named is not None and f"val/{named}" in curves:
        return f"val/{named}"
    return PRIMARY_VAL if PRIMARY_VAL in curves else next(iter(curves), None)


def best_point(curves, key=None):
    """(set name, tokens, loss) of the lowest loss of val set `key` (default: val/val, else the first), or None."""
    key = key or (PRIMARY_VAL if PRIMARY_VAL in curves else next(iter(curves), None))
    if key is None:
        return None
    xs, ys = curves[key]
    i = min(range(len(ys)), key=ys.__getitem__)
    return key, xs[i], ys[i]


def resume_label(changes):
    """'resumed (max_iters, learning_rate, seed +2)': the names of the settings a resume changed, a few at most,
    so the rotated label stays inside the axes."""
    names = [c.split(":")[0].split(" ")[0] for c in changes or []]
    what = ", ".join(names[:RESUME_LABEL_NAMES]) + (f" +{len(names) - RESUME_LABEL_NAMES}" if len(names) > RESUME_LABEL_NAMES else "")
    return f"resumed ({what or 'same settings'})"


def plot_runs(out_dirs, out_path, points=DEFAULT_POINTS):
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    runs = [(d, *load_run(d)) for d in out_dirs]  # read everything first: a bad dir fails before drawing
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(9, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    styles = ["--", ":", "-."]
    for k, (out_dir, steps, evals, resumes) in enumerate(runs):
        name = os.path.basename(os.path.normpath(out_dir))
        color = f"C{k % 10}"
        if steps:
            xs, ys = average_intervals(steps, points)
            ax.plot(xs, ys, color=color, lw=1.2, alpha=0.85, label=f"{name} train")
            lr = [(r["tokens"], r["lr"]) for r in steps if _is_number(r.get("lr"))]
            if lr:
                ax_lr.plot(*zip(*lr), color=color, lw=1.2, label=name)
        for r in resumes:
            for a in (ax, ax_lr):
                a.axvline(r["tokens"], color=color, ls=":", lw=1)
            note = ax.annotate(resume_label(r.get("changes")), (r["tokens"], 1), xycoords=("data", "axes fraction"), rotation=90,
                               fontsize=7, color=color, va="top", ha="right")
            note.set_in_layout(False)  # a long label may run off the plot; it must not squeeze the axes
        curves = val_curves(evals)
        for j, (key, (xs, ys)) in enumerate(curves.items()):
            ax.plot(xs, ys, styles[j % len(styles)], color=color, lw=1.6, marker=".", label=f"{name} {key}")
        best = best_point(curves, primary_key(evals, curves))
        if best:
            key, x, y = best
            ax.plot([x], [y], "*", color=color, markersize=14, markeredgecolor="black",
                    label=f"{name} best {key} {y:.4f} @ {human_count(x)} tok")
    ax_lr.set_xlabel("tokens seen")
    ax.set_ylabel("loss (cross-entropy, nats)")
    ax_lr.set_ylabel("learning rate")
    ax_lr.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_count(v) if v else "0"))
    ax.grid(alpha=0.3)
    ax_lr.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("train / val loss")
    fig.tight_layout()
    tmp = f"{out_path}.{os.getpid()}.tmp{os.path.splitext(out_path)[1]}"  # whole or not at all (a full disk, issue 28)
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out_path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise OSError(e.errno, e.strerror, out_path) from None  # one line with advice (errors.file_error)
    finally:
        plt.close(fig)
    return out_path


def main(argv):
    cfg = load_config(PlotConfig, argv, positional="runs")
    out = cfg.out or os.path.join(cfg.runs[0], "loss.png")
    plot_runs(cfg.runs, out, cfg.points)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(run_command(main))
