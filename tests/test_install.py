"Install-level checks: version, packaging metadata, README and CI agree."
import configparser, json, re, subprocess, sys
from pathlib import Path

import msflow

ROOT = Path(__file__).resolve().parents[1]


def _cfg():
    c = configparser.ConfigParser(delimiters=["="]); c.read(ROOT / "settings.ini")
    return c["DEFAULT"]


def test_version_matches_settings():
    assert msflow.__version__ == _cfg()["version"]


def test_nbdev_layout():
    c = _cfg()
    assert (c["lib_path"], c["nbs_path"], c["doc_path"], c["branch"]) == ("msflow", "nbs", "docs", "main")
    assert (ROOT / "nbs" / "index.ipynb").exists()


def _sh_blocks(text):
    return re.findall(r"^```sh\n(.*?)\n```", text, flags=re.S | re.M)


def test_readme_quickstart_is_two_commands_in_sync_with_index():
    readme = _sh_blocks((ROOT / "README.md").read_text())
    assert len(readme) >= 2 and all("\n" not in b for b in readme[:2])
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text())
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert _sh_blocks(md)[:2] == readme[:2], "README.md quickstart differs from nbs/index.ipynb"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "awk '/^```sh$/" in ci and 'bash -c "$install_cmd"' in ci and 'bash -c "$test_cmd"' in ci


def test_import_has_no_network_or_heavy_side_effects():
    out = subprocess.run([sys.executable, "-c", "import msflow.core, sys; print('timm' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_readme_is_generated_from_index():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "make_readme.py"), "--check"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
