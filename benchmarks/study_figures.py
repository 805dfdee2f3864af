"""Every strategy's HitRatio@k from one clean end-to-end run of the pipeline, as JSON and a table.

    python benchmarks/study_figures.py --dataset data/demo --min-movie-ratings 1000 --eval-size 3000 \
        --out benchmarks/work/before_demo.json [--project-root /tmp/wt_before] [--compare OTHER.json]

Used to check that a refactor keeps every strategy's figures exactly: measure a worktree of the old
commit and the new code with the same command and compare (``--compare`` exits 1 on any difference
in hits, n or the set of strategies).

The run: ``dagster asset materialize -m rcmd_pipeline.definitions --select '*'`` with the
evaluation settings as run config, cwd = ``--project-root`` and ``PYTHONPATH=<project root>`` (so a
git worktree of another commit is measured with this venv's ``dagster``; the script checks that
``rcmd_pipeline`` really is imported from that root), a fresh temporary ``DAGSTER_HOME`` holding a
copy of the root's ``.dagster_home/dagster.yaml`` and a fresh ``RCMD_DATA_DIR``. Every
``OPENAI_*``, ``QDRANT_*``, ``TMDB_*``, ``RCMD_*`` and ``DAGSTER_*`` variable is removed first, so
the embedded defaults run: TMDB snapshot of the data set, local e5 embedder, embedded Qdrant,
SQLite. The ``hit_ratio_*`` assets are discovered from the definitions (the refactor may add
strategies) and each one's latest materialization metadata (``hit_ratio``, ``hits``, ``n``) is
read from the instance.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "hit_ratio_"
STRIPPED_PREFIXES = ("OPENAI_", "QDRANT_", "TMDB_", "RCMD_", "DAGSTER_")

# Run in a subprocess with the measured project on PYTHONPATH: the hit-ratio asset keys of its
# definitions, and where rcmd_pipeline was imported from.
_DISCOVER = """
import json, rcmd_pipeline
from rcmd_pipeline.definitions import defs
keys = [k.to_user_string() for k in defs.resolve_all_asset_keys() if k.path[-1].startswith({prefix!r})]
print(json.dumps({{"module": rcmd_pipeline.__file__, "assets": sorted(keys)}}))
"""


def clean_environment(project_root: Path, dataset: Path, dagster_home: Path, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(STRIPPED_PREFIXES)}
    env.update({
        "DAGSTER_HOME": str(dagster_home),
        "RCMD_DATA_DIR": str(data_dir),
        "RCMD_DATASET_PATH": str(dataset),
        "PYTHONPATH": str(project_root),
        "PYTHONHASHSEED": "0",
    })
    return env


def discover(python: str, project_root: Path, env: dict[str, str]) -> list[str]:
    done = subprocess.run([python, "-c", _DISCOVER.format(prefix=PREFIX)], cwd=project_root, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"loading rcmd_pipeline.definitions from {project_root} failed:\n{done.stderr[-4000:]}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    module = Path(found["module"]).resolve()
    if project_root.resolve() not in module.parents:
        sys.exit(f"rcmd_pipeline was imported from {module}, not from {project_root}: refusing to measure "
                 "the wrong code")
    if not found["assets"]:
        sys.exit(f"no {PREFIX}* asset in the definitions of {project_root}")
    return found["assets"]


def materialize(dagster: str, project_root: Path, env: dict[str, str], config: dict, log: Path) -> float:
    command = [dagster, "asset", "materialize", "-m", "rcmd_pipeline.definitions", "--select", "*",
               "--config-json", json.dumps(config)]
    print("$ (cd {} && PYTHONPATH={} {})".format(project_root, project_root, " ".join(
        f"'{c}'" if c in ("*",) or c.startswith("{") else c for c in command)), flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        rc = subprocess.run(command, cwd=project_root, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - start
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        sys.exit(f"dagster asset materialize exited {rc} after {seconds:.0f} s; log {log}, last lines:\n{tail}")
    return seconds


def read_figures(dagster_home: Path, asset_names: list[str]) -> dict[str, dict]:
    """Latest materialization metadata of each hit-ratio asset, keyed by strategy name."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import AssetKey, DagsterInstance

    figures: dict[str, dict] = {}
    with DagsterInstance.get() as instance:
        stored = {k.to_user_string() for k in instance.get_asset_keys() if k.path[-1].startswith(PREFIX)}
        extra = stored - set(asset_names)
        if extra:
            print(f"note: the instance also holds {sorted(extra)} (not in the definitions); ignored")
        for name in asset_names:
            event = instance.get_latest_materialization_event(AssetKey.from_user_string(name))
            if event is None or event.asset_materialization is None:
                sys.exit(f"{name} was not materialized")
            meta = event.asset_materialization.metadata
            missing = [f for f in ("hit_ratio", "hits", "n") if f not in meta]
            if missing:
                sys.exit(f"{name}: metadata lacks {missing} (has {sorted(meta)})")
            strategy = name.split("/")[-1][len(PREFIX):]
            figures[strategy] = {"hit_ratio": float(meta["hit_ratio"].value), "hits": int(meta["hits"].value),
                                 "n": int(meta["n"].value)}
    return dict(sorted(figures.items()))


def table(figures: dict[str, dict], other: dict[str, dict] | None = None) -> str:
    lines = ["| strategy | hit_ratio | hits / n |" + (" compared | same |" if other is not None else ""),
             "|---|---|---|" + ("---|---|" if other is not None else "")]
    for name in sorted(set(figures) | set(other or {})):
        mine = figures.get(name)
        cells = [name, f"{mine['hit_ratio']:.4f}" if mine else "—", f"{mine['hits']} / {mine['n']}" if mine else "—"]
        if other is not None:
            theirs = other.get(name)
            cells.append(f"{theirs['hits']} / {theirs['n']}" if theirs else "—")
            cells.append("yes" if mine and theirs and _same(mine, theirs) else "**NO**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _same(a: dict, b: dict) -> bool:
    return a["hits"] == b["hits"] and a["n"] == b["n"] and abs(a["hit_ratio"] - b["hit_ratio"]) < 1e-12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="MovieLens-layout folder (RCMD_DATASET_PATH)")
    parser.add_argument("--min-movie-ratings", type=int, required=True)
    parser.add_argument("--eval-size", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON file: {strategy: {hit_ratio, hits, n}}")
    parser.add_argument("--project-root", type=Path, default=ROOT,
                        help="checkout to measure (e.g. a git worktree of another commit); default this one")
    parser.add_argument("--dagster", default=str(Path(sys.executable).with_name("dagster")),
                        help="dagster executable (default: the one beside this Python)")
    parser.add_argument("--compare", type=Path, help="figures JSON to compare with; exit 1 on any difference")
    parser.add_argument("--extra-strategies", default="",
                        help="RCMD_EXTRA_STRATEGIES for the run (other RCMD_ variables are cleared), e.g. seq_rerank")
    parser.add_argument("--keep", action="store_true", help="keep the temporary DAGSTER_HOME and RCMD_DATA_DIR")
    args = parser.parse_args()

    project_root = args.project_root.resolve()
    dataset = args.dataset.resolve()
    yaml = project_root / ".dagster_home" / "dagster.yaml"
    if not (project_root / "rcmd_pipeline" / "definitions.py").is_file():
        sys.exit(f"{project_root} is not a checkout of this project")
    if not dataset.is_dir():
        sys.exit(f"dataset folder {dataset} not found")
    if not yaml.is_file():
        sys.exit(f"{yaml} not found")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compare = json.loads(args.compare.read_text()) if args.compare else None

    # A SIGTERM still removes the temporary instance and state (the dagster child shares our process group).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="study_figures_"))
    try:
        dagster_home, data_dir = work / "dagster_home", work / "state"
        dagster_home.mkdir()
        data_dir.mkdir()
        shutil.copyfile(yaml, dagster_home / "dagster.yaml")
        env = clean_environment(project_root, dataset, dagster_home, data_dir)
        if args.extra_strategies:  # the optional strategies (RCMD_EXTRA_STRATEGIES), e.g. seq_rerank
            env["RCMD_EXTRA_STRATEGIES"] = args.extra_strategies
        assets = discover(sys.executable, project_root, env)
        print(f"project {project_root}, dataset {dataset}, strategies: {', '.join(assets)}", flush=True)
        config = {"ops": {"eval_transitions": {"config": {"min_movie_ratings": args.min_movie_ratings,
                                                           "eval_size": args.eval_size}}}}
        log = args.out.with_suffix(".log")
        seconds = materialize(args.dagster, project_root, env, config, log)
        figures = read_figures(dagster_home, assets)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    args.out.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(f"materialized in {seconds:.0f} s (log {log}); min_movie_ratings={args.min_movie_ratings}, "
          f"eval_size={args.eval_size}; wrote {args.out}\n")
    print(table(figures, compare))
    if compare is not None:
        differ = sorted(n for n in set(figures) | set(compare)
                        if n not in figures or n not in compare or not _same(figures[n], compare[n]))
        if differ:
            print(f"\nDIFFERENT from {args.compare}: {', '.join(differ)}")
            sys.exit(1)
        print(f"\nidentical to {args.compare}")


if __name__ == "__main__":
    main()
