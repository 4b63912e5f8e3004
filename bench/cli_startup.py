"""How long `msflow --help` and `msflow download --list` take, for two source trees side by side.

Each run is a fresh Python interpreter that imports `msflow.cli` from one tree (`PYTHONPATH=DIR`, started in an
empty folder so that nothing else shadows it) and calls `main` with the command's arguments; the wall time of
the whole process is measured, output discarded. The trees alternate (before, after, before, after, ...) so
that a change in the machine's load hits both alike. Each tree's runs also record whether the command
imported torch. Output: `bench/results/cli_startup_cpu.json` (or `--name`): per command and tree the median,
quartiles, minimum and maximum, and the conditions (processor, load average before and after, versions).

Usage: python bench/cli_startup.py --before ../prev_cli --after . [--runs 10]
(`git worktree add ../prev_cli HEAD` gives the last commit as a tree; `git worktree remove ../prev_cli` removes it.)
"""
from __future__ import annotations

import argparse, importlib.metadata, os, platform, statistics, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, loadavg, table, write_result

COMMANDS = {"msflow --help": ["--help"], "msflow download --list": ["download", "--list"]}
CHILD = """import os, sys
from msflow.cli import main
try: main(sys.argv[1:])
except SystemExit: pass
if os.environ.get("MSFLOW_BENCH_REPORT"):
    import msflow; print(msflow.__file__, "torch" in sys.modules, file=sys.stderr)"""


def once(tree: Path, args: list[str], cwd: str, report: bool = False) -> tuple[float, str]:
    "Wall seconds of one fresh interpreter running `msflow ARGS` from `tree`, and its stderr."
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    if report: env["MSFLOW_BENCH_REPORT"] = "1"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    secs = time.perf_counter() - t0
    if r.returncode != 0: raise SystemExit(f"msflow {' '.join(args)} from {tree} failed:\n{r.stderr[-2000:]}")
    return secs, r.stderr


def imports(tree: Path, args: list[str], cwd: str) -> tuple[str, bool]:
    "The msflow package a tree's command imports (relative to the tree), and whether the command imported torch."
    last = once(tree, args, cwd, report=True)[1].strip().splitlines()[-1]
    path, torch = last.rsplit(" ", 1)
    return os.path.relpath(Path(path).parent, tree), torch == "True"


def git(tree: Path) -> dict:
    "The tree's commit, and whether msflow/ differs from it."
    run = lambda *a: subprocess.run(["git", "-C", str(tree), *a], capture_output=True, text=True).stdout.strip()
    return dict(commit=run("log", "-1", "--format=%h"), uncommitted_changes=bool(run("status", "--porcelain", "--", "msflow")))


def stats(xs: list[float]) -> dict:
    q1, med, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return dict(median_s=round(med, 3), q1_s=round(q1, 3), q3_s=round(q3, 3), min_s=round(min(xs), 3), max_s=round(max(xs), 3))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", type=Path, required=True, help="source tree of the first version (holding msflow/)")
    p.add_argument("--after", type=Path, required=True, help="source tree of the second version")
    p.add_argument("--runs", type=int, default=10, help="runs of each command from each tree")
    p.add_argument("--name", default="cli_startup_cpu", help="results file name, without .json")
    a = p.parse_args()
    trees = {"before": a.before.resolve(), "after": a.after.resolve()}
    for t in trees.values():
        if not (t / "msflow" / "cli.py").is_file(): raise SystemExit(f"{t} holds no msflow/cli.py")
    cwd = tempfile.mkdtemp(prefix="msflow-cli-startup-")
    for tree in trees.values(): once(tree, ["--help"], cwd)  # warm the file cache and .pyc files of both trees
    env = dict(cpu=cpu_model(), cpu_cores=os.cpu_count(), python=platform.python_version(),
               torch=importlib.metadata.version("torch"), timm=importlib.metadata.version("timm"),
               numpy=importlib.metadata.version("numpy"), msflow=importlib.metadata.version("msflow"),
               trees={k: git(t) for k, t in trees.items()}, runs=a.runs, loadavg_start=loadavg(),
               time=time.strftime("%Y-%m-%d %H:%M:%S"))
    times = {(c, k): [] for c in COMMANDS for k in trees}
    for i in range(a.runs):
        for c, args in COMMANDS.items():
            for k, tree in trees.items(): times[c, k].append(once(tree, args, cwd)[0])  # interleaved: before, after, before, ...
        print(f"run {i + 1}/{a.runs}", file=sys.stderr)
    env["loadavg_end"] = loadavg()
    rows = []
    for (c, k), xs in times.items():
        pkg, torch = imports(trees[k], COMMANDS[c], cwd)
        rows.append(dict(command=c, tree=k, **stats(xs), imports_torch=torch, package=pkg, runs_s=[round(x, 3) for x in xs]))
    for c in COMMANDS:
        b, f = (next(r for r in rows if r["command"] == c and r["tree"] == k) for k in ("before", "after"))
        f["speedup"] = round(b["median_s"] / f["median_s"], 1)
    os.rmdir(cwd)
    path = write_result(a.name, dict(environment=env, rows=rows))
    print(table(rows, ["command", "tree", "median_s", "q1_s", "q3_s", "min_s", "max_s", "imports_torch", "speedup"]))
    print(f"load average {env['loadavg_start']} -> {env['loadavg_end']}; written to {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
