"`msflow` answers at once: its help, `--version`, `download --list` and argument errors never import torch."
import argparse, os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
SUBCOMMANDS = ["train", "test", "predict", "export", "download", "demo", "describe"]

# `main(ARGS)` in a fresh interpreter; the last line of stderr says whether torch was imported
MAIN = """import sys
from msflow.cli import main
try: status = main(sys.argv[1:])
except SystemExit as e: status = e.code
print("torch imported:", "torch" in sys.modules, file=sys.stderr)
sys.exit(status)"""


def fresh(code: str, *args: str) -> subprocess.CompletedProcess:
    "Run `code` in a new Python process started in the repository root (so it imports this checkout's msflow)."
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)


def msflow(*args: str) -> tuple[int, str, str, bool]:
    "Exit status, stdout, stderr (less the last line) and whether torch was imported, of `msflow ARGS`."
    r = fresh(MAIN, *args)
    *err, last = r.stderr.rstrip("\n").split("\n")
    assert last.startswith("torch imported: "), r.stderr[-3000:]
    return r.returncode, r.stdout, "\n".join(err), last == "torch imported: True"


def test_importing_the_cli_leaves_torch_out():
    r = fresh("import sys, msflow.cli, msflow.core\nmsflow.core.get_config('accurate', epochs=3)\nprint('torch' in sys.modules)")
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr[-3000:]


@pytest.mark.parametrize("args, expected", [
    (["--help"], "usage: msflow [-h] [--version] COMMAND ..."),
    *[([c, "--help"], f"usage: msflow {c} [-h]") for c in SUBCOMMANDS],
    (["--version"], "msflow "),
    (["download", "--list"], "mvtec-ad"),
])
def test_help_version_and_list_do_not_import_torch(args, expected):
    status, out, err, torch_imported = msflow(*args)
    assert status == 0 and expected in out, (status, out[-2000:], err[-2000:])
    assert not torch_imported, f"msflow {' '.join(args)} imported torch"


@pytest.mark.parametrize("args, expected", [
    ([], "the following arguments are required: COMMAND"),
    (["fit"], "invalid choice: 'fit'"),
    (["train", "--data-root", "d"], "the following arguments are required: --category, --out"),
    (["train", "--data-root", "d", "--category", "c", "--out", "o", "--preset", "huge"], "invalid choice: 'huge'"),
    (["train", "--data-root", "d", "--category", "c", "--out", "o", "--cluster", "nowhere"],
     "--cluster must be local, ray, auto or ray://HOST:PORT, not 'nowhere'"),
    (["predict", "--run", "r", "x.png", "--out", "p", "--actors", "0"], "must be at least 1, got 0"),
    (["export", "--run", "r", "--batch", "0"], "expected a positive integer or 'dynamic', got '0'"),
])
def test_argument_errors_exit_2_without_torch(args, expected):
    status, out, err, torch_imported = msflow(*args)
    assert status == 2 and expected in err and "Traceback" not in err, (status, err[-2000:])
    assert not torch_imported, f"msflow {' '.join(args)} imported torch"


def test_predict_help_prints_percent_once():
    status, out, _, _ = msflow("predict", "--help")
    text = " ".join(out.split())  # argparse wraps lines
    assert status == 0 and "mean of the top 3 % of the mul map" in text and "top-3 % mean" in text and "%%" not in out


def _help(add) -> str:
    p = argparse.ArgumentParser(prog="msflow train")
    add(p.add_argument_group("many categories (Ray)"))
    return p.format_help()


def test_cluster_options_match_the_cluster_module():
    "The command line's torch-free `add_cluster_options` gives the options of `msflow.cluster`'s, help and all."
    from msflow import cli, cluster
    assert _help(cli.add_cluster_options) == _help(cluster.add_cluster_options)
    assert cli.CLUSTERS == cluster.CLUSTERS


def test_export_parser_is_still_found_in_deploy():
    from msflow import cli, deploy
    assert deploy.add_export_parser is cli.add_export_parser
    with pytest.raises(AttributeError, match="no_such_name"): deploy.no_such_name
