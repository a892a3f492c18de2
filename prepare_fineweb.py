"""FineWeb / FineWeb-Edu -> GPT-2 token shards for train.py.

    python prepare_fineweb.py --num_files=1                           # download 1 file of sample-10BT (~2 GB)
    python prepare_fineweb.py --dataset=fineweb-edu --subset=sample-10BT --num_files=14 --min_int_score=3
    python prepare_fineweb.py --data_files 'dir/*.parquet' --out_dir data/fineweb   # local files, no network
    python prepare_fineweb.py --stats data/fineweb                    # token/document statistics + histogram

The first val_tokens tokens (whole documents, in file order) go to 'val', the rest to
'train'. Re-running the same command resumes an interrupted run. Settings take --key=value
or --key value. Downloads resolve --revision (default: the branch 'main') to a commit, record
it in manifest.json, and stay pinned to it: re-runs into the same out_dir fetch that commit even
after the branch moves on. Pass the commit as --revision to fetch the same files elsewhere.
See prepare.py.
"""
import sys
from dataclasses import dataclass

from gptlib.errors import run_command
from gptlib.prepare import DatasetSpec, PrepareConfig, hub_sources, local_sources, pinned_revision, run
from gptlib.settings import load_config, setting

HUB_REPOS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
TEXT = "text"  # the document column of both datasets


@dataclass
class FinewebConfig(PrepareConfig):
    dataset: str = setting("fineweb", choices=["fineweb", "fineweb-edu"])  # 'fineweb' or 'fineweb-edu'
    subset: str = setting("sample-10BT")  # download mode: sample-10BT, sample-100BT, sample-350BT, or a dump e.g. CC-MAIN-2024-10
    min_int_score: int = setting(0, ge=0, le=5)  # fineweb-edu: keep documents whose int_score (0-5, educational value) is at least this; 0: all


def hub_folder(subset):
    """'sample-10BT' -> 'sample/10BT', 'CC-MAIN-2024-10' -> 'data/CC-MAIN-2024-10' (the repos' layout)."""
    if subset.startswith("sample-"):
        return "sample/" + subset[len("sample-"):]
    return "data/" + subset


def make_spec(cfg):
    columns, keep = [TEXT], None
    if cfg.min_int_score:
        import pyarrow.compute as pc
        columns.append("int_score")  # only in fineweb-edu: a fineweb file fails the column check, clearly

        def keep(batch):
            mask = pc.fill_null(pc.greater_equal(batch.column("int_score"), cfg.min_int_score), False)
            return mask, {"int_score_below_min": batch.num_rows - pc.sum(mask).as_py() if batch.num_rows else 0}
    return DatasetSpec(name=cfg.dataset, text_column=TEXT, columns=columns, keep=keep,
                       filters={"int_score_below_min": f"--min_int_score={cfg.min_int_score}"})


def make_sources(cfg):
    if cfg.data_files:
        return local_sources(cfg.data_files, cfg.txt_documents, cfg.encoding), {}
    repo = HUB_REPOS[cfg.dataset]
    sources, commit = hub_sources(repo, hub_folder(cfg.subset), cfg.num_files, pinned_revision(cfg, repo))
    return sources, {"hub": {"repo": repo, "folder": hub_folder(cfg.subset), "revision": cfg.revision, "commit": commit}}


def main(argv):
    cfg = load_config(FinewebConfig, argv)
    cfg.out_dir = cfg.out_dir or f"data/{cfg.dataset}"
    run(cfg, make_spec, make_sources)


if __name__ == "__main__":
    sys.exit(run_command(main))
