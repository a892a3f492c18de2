"""GitHub code (codeparrot/github-code) -> GPT-2 token shards for train.py.

    python prepare_github_code.py --source_dir=$(python -c "import sysconfig; print(sysconfig.get_paths()['stdlib'])") \
        --out_dir=data/stdlib --val_repo_fraction=0.05   # quickstart: no download
    python prepare_github_code.py --num_files=2 --languages=Python,JavaScript          # download 2 of 1126 files
    python prepare_github_code.py --dataset=codeparrot/github-code-clean --num_files=4 --licenses=mit,apache-2.0
    python prepare_github_code.py --data_files='dir/*.parquet' --out_dir=data/github_code
    python prepare_github_code.py --stats=data/github_code

Validation is split BY REPOSITORY: a repository whose hash of repo_name falls below
val_repo_fraction is held out (its files go to 'val' and to 'val-<language>' until those
are full, never to 'train'), so no repository is on both sides. See prepare.py.
"""
import os
import sys
from dataclasses import dataclass

from gptlib import paths
from gptlib.errors import ConfigError, DataError, run_command
from gptlib.prepare import DatasetSpec, PrepareConfig, hub_sources, local_sources, pinned_revision, run
from gptlib.settings import load_config, setting

HUB_DATASETS = ("codeparrot/github-code", "codeparrot/github-code-clean")
HUB_FOLDER = "data"  # data/train-00000-of-01126.parquet, ...
COLUMNS = ["code", "repo_name", "path", "language", "license", "size"]  # the github-code schema
# github-code's 30 languages and the extensions it assigned them (the dataset card's table)
EXTENSIONS = {
    "Assembly": [".asm"], "Batchfile": [".bat", ".cmd"], "C": [".c", ".h"], "C#": [".cs"],
    "C++": [".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".C", ".H"], "CMake": [".cmake"], "CSS": [".css"],
    "Dockerfile": [".dockerfile", "Dockerfile"], "FORTRAN": [".f90", ".f", ".f03", ".f08", ".f77", ".f95", ".for", ".fpp"],
    "GO": [".go"], "Haskell": [".hs"], "HTML": [".html"], "Java": [".java"], "JavaScript": [".js"], "Julia": [".jl"],
    "Lua": [".lua"], "Makefile": ["Makefile"], "Markdown": [".md", ".markdown"], "PHP": [".php", ".php3", ".php4", ".php5", ".phps", ".phpt"],
    "Perl": [".pl", ".pm", ".pod", ".perl"], "PowerShell": [".ps1", ".psd1", ".psm1"], "Python": [".py"], "Ruby": [".rb"],
    "Rust": [".rs"], "SQL": [".sql"], "Scala": [".scala"], "Shell": [".sh", ".bash", ".command", ".zsh"],
    "TypeScript": [".ts", ".tsx"], "TeX": [".tex"], "Visual Basic": [".vb", ".bas", ".frm", ".frx", ".vba", ".vbs"],
}
LANGUAGE_OF = {ext: lang for lang, exts in EXTENSIONS.items() for ext in exts}
SOURCE_DIR_LICENSE = "unknown"  # --source_dir files carry no license metadata


@dataclass
class GithubCodeConfig(PrepareConfig):
    dataset: str = setting("codeparrot/github-code", choices=list(HUB_DATASETS))  # download mode: codeparrot/github-code or codeparrot/github-code-clean
    source_dir: str = setting("")  # quickstart: tokenize the source files under this directory (e.g. the Python stdlib)
    skip_dirs: list[str] = setting(["site-packages", "__pycache__", ".git"])  # --source_dir: directories not walked
    languages: list[str] = setting([])  # keep only these languages, e.g. Python,JavaScript; empty: all
    licenses: list[str] = setting([])  # keep only these licenses, e.g. mit,apache-2.0; empty: all
    val_repo_fraction: float = setting(0.01, ge=0, lt=1)  # fraction of repositories (by hash of repo_name) held out for validation
    val_tokens_per_language: int = setting(1_000_000, ge=0)  # tokens of each per-language val set val-<language>
    max_file_bytes: int = setting(1_000_000, ge=1)  # files larger than this are skipped and counted (github-code's own cap is 1 MB)

    def problems(self):
        out = super().problems()
        if self.source_dir and self.data_files:
            out.append(f"--source_dir and --data_files name two inputs, and a dataset reads one: drop --data_files "
                       f"to tokenize {self.source_dir}, or --source_dir to read {self.data_files}")
        if self.val_repo_fraction == 0 and (self.val_tokens or self.val_tokens_per_language):
            out.append("val_repo_fraction=0 holds out no repository, so no val set can be made; set "
                       "--val_repo_fraction (e.g. 0.01), or --val_tokens=0 --val_tokens_per_language=0 for a "
                       "dataset without one")
        return out


def language_of(path):
    name = os.path.basename(path)
    return LANGUAGE_OF.get(name) or LANGUAGE_OF.get(os.path.splitext(name)[1]) or LANGUAGE_OF.get(os.path.splitext(name)[1].lower())


class DirectorySource:
    """Every file under a directory as one github-code row: repo_name is the first path
    component, language comes from the extension (None: not code, dropped by the filter).
    Files are listed in sorted order, so the dataset is deterministic."""

    def __init__(self, root, skip_dirs=(), max_file_bytes=None):
        bad = paths.problem(root, "dir")
        if bad:
            raise DataError(f"--source_dir: {bad[1]}; give the folder of source files")
        self.root = os.path.abspath(root)
        self.max_file_bytes = max_file_bytes
        self.paths = []
        for d, dirs, files in os.walk(self.root):
            dirs[:] = sorted(x for x in dirs if x not in skip_dirs)
            self.paths.extend(os.path.relpath(os.path.join(d, f), self.root) for f in sorted(files))
        self.num_rows = len(self.paths)

    def check(self, columns):
        if not self.paths:
            raise DataError(f"--source_dir {self.root} holds no files")

    def batches(self, columns, start_row, batch_rows):
        import pyarrow as pa
        for lo in range(start_row, len(self.paths), batch_rows):
            rows = {c: [] for c in COLUMNS}
            for rel in self.paths[lo:lo + batch_rows]:
                lang = language_of(rel)
                code, size = None, 0
                if lang is not None:
                    try:
                        size = os.path.getsize(os.path.join(self.root, rel))
                        if "code" in columns and (self.max_file_bytes is None or size <= self.max_file_bytes):
                            # (a huge file is never read, nor any file by the held-out pre-pass)
                            with open(os.path.join(self.root, rel), "rb") as f:
                                code = f.read()
                    except OSError:  # unreadable (permissions, broken link): a null document, counted
                        pass
                top = rel.split(os.sep, 1)[0]
                rows["code"].append(code)
                rows["repo_name"].append(f"{os.path.basename(self.root)}/{top}")
                rows["path"].append(rel.replace(os.sep, "/"))
                rows["language"].append(lang)
                rows["license"].append(SOURCE_DIR_LICENSE)
                rows["size"].append(size)
            schema = pa.schema([("code", pa.binary()), ("repo_name", pa.string()), ("path", pa.string()),
                                ("language", pa.string()), ("license", pa.string()), ("size", pa.int64())])
            yield pa.RecordBatch.from_pydict(rows, schema=schema).select(columns)

    def identity(self):
        return {"name": self.root, "files": self.num_rows}


def make_spec(cfg):
    import pyarrow as pa
    import pyarrow.compute as pc
    known = {lang.lower(): lang for lang in EXTENSIONS}
    for lang in cfg.languages:
        if lang.lower() not in known:
            raise ConfigError(f"--languages: unknown language {lang!r}; github-code has {', '.join(EXTENSIONS)}")
    languages = pa.array(sorted({lang.lower() for lang in cfg.languages}), pa.string())
    licenses = pa.array(sorted({lic.lower() for lic in cfg.licenses}), pa.string())

    def keep(batch):
        mask = pc.is_valid(batch.column("language"))  # --source_dir: files that are not code
        dropped = {"not_code": batch.num_rows - pc.sum(mask).as_py()} if batch.num_rows else {}
        # a file over the limit is dropped before its text is decoded: a 2 GB file took 2.4 GB of RAM and then
        # failed in Arrow (issue 10)
        small = pc.fill_null(pc.less_equal(batch.column("size"), cfg.max_file_bytes), True)
        dropped["too_large"] = pc.sum(pc.and_(mask, pc.invert(small))).as_py() or 0
        mask = pc.and_(mask, small)
        for name, col, allowed in (("language", "language", languages), ("license", "license", licenses)):
            if len(allowed):
                ok = pc.fill_null(pc.is_in(pc.utf8_lower(batch.column(col)), value_set=allowed), False)
                dropped[f"{name}_filtered"] = pc.sum(pc.and_(mask, pc.invert(ok))).as_py() or 0
                mask = pc.and_(mask, ok)
        return mask, dropped

    return DatasetSpec(name=cfg.dataset if not cfg.source_dir else "source_dir", text_column="code",
                       columns=["code", "repo_name", "language", "size"] + (["license"] if cfg.licenses else []), keep=keep,
                       split_column="repo_name", val_fraction=cfg.val_repo_fraction,
                       language_column="language", language_val_tokens=cfg.val_tokens_per_language, size_column="size",
                       filters={"not_code": "--source_dir", "too_large": f"--max_file_bytes={cfg.max_file_bytes}", "language_filtered": f"--languages={','.join(cfg.languages)}",
                                "license_filtered": f"--licenses={','.join(cfg.licenses)}"})


def make_sources(cfg):
    if cfg.source_dir:
        return [DirectorySource(cfg.source_dir, cfg.skip_dirs, cfg.max_file_bytes)], {}
    if cfg.data_files:
        return local_sources(cfg.data_files, cfg.txt_documents, cfg.encoding), {}
    sources, commit = hub_sources(cfg.dataset, HUB_FOLDER, cfg.num_files, pinned_revision(cfg, cfg.dataset))
    return sources, {"hub": {"repo": cfg.dataset, "folder": HUB_FOLDER, "revision": cfg.revision, "commit": commit}}


def main(argv):
    cfg = load_config(GithubCodeConfig, argv)
    cfg.out_dir = cfg.out_dir or ("data/stdlib" if cfg.source_dir else "data/github_code")
    run(cfg, make_spec, make_sources)


if __name__ == "__main__":
    sys.exit(run_command(main))
