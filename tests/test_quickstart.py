"""quickstart.sh installs only what the machine needs: a stand-in python records every command it is given
(pip installs included), so each branch is checked without installing anything."""
import os
import subprocess

import pytest

from conftest import REPO

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$LOG"
if [ "$1" = "-c" ]; then
  case "$2" in
    *"sys.exit(v < (2, 9))"*) [ -n "$TORCH_OK" ] && exit 0 || exit 1 ;;
    *torch.__version__*) echo 2.13.0 ;;
    *sysconfig*) echo /usr/lib/python3/stdlib ;;
  esac
fi
exit 0
"""


def quickstart(tmp_path, torch_ok, gpu):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    if gpu:
        (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
    log = tmp_path / "log"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LOG": str(log), "PYTHON": str(bin_dir / "python"),
           "TORCH_OK": "1" if torch_ok else "", "HOME": str(tmp_path)}
    r = subprocess.run(["bash", str(REPO / "quickstart.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    commands = log.read_text().splitlines()
    return [c for c in commands if c.startswith("-m pip install")], commands, r.stdout


@pytest.mark.skipif(os.uname().sysname == "Darwin", reason="macOS takes PyPI's build")
def test_cpu_machine_gets_the_cpu_build(tmp_path):
    installs, commands, out = quickstart(tmp_path, torch_ok=False, gpu=False)
    assert installs == ["-m pip install torch>=2.9 --index-url https://download.pytorch.org/whl/cpu",
                        "-m pip install -q -r requirements.txt"]
    assert "CPU-only build" in out
    assert any(c.startswith("train.py config/train_tiny_cpu.py") for c in commands)
    assert any(c.startswith("sample.py config/train_tiny_cpu.py") for c in commands)


def test_gpu_machine_gets_the_pypi_build(tmp_path):
    installs, _, out = quickstart(tmp_path, torch_ok=False, gpu=True)
    assert installs[0] == "-m pip install torch>=2.9" and "NVIDIA GPU was found" in out


def test_installed_torch_is_kept(tmp_path):
    installs, _, out = quickstart(tmp_path, torch_ok=True, gpu=False)
    assert installs == ["-m pip install -q -r requirements.txt"] and "keeping it" in out
