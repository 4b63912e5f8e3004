"""The notebooks as a learner meets them in JupyterLab, and the README as a reader meets it on a code host.

- every relative link in `nbs/` and README.md points at a file that exists, and none at an `.html` page (in
  JupyterLab and on a code host those are dead; the site builder turns `.ipynb` links into `.html` itself);
- saved outputs show no local paths (home folder, temporary folders, a virtual environment), no walls of text,
  and no warnings on stderr in the method chapters and the tutorials;
- export cells of the method chapters stay short, and the chapters that promise a figure keep one;
- the README's Python blocks run, in order, in a fresh interpreter in an empty folder;
- no hand-written library module grows past 450 lines.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
NOTEBOOKS = sorted(NBS.glob("*.ipynb"))
METHOD = [p for p in NOTEBOOKS if re.match(r"0[0-5]_", p.name)]
TUTORIALS = [p for p in NOTEBOOKS if p.name.startswith("tutorial_")]
LOCAL_PATH = re.compile(r"(/root/|/home/\w|/tmp/|/var/folders/|site-packages|\.venv|/work/)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAX_OUTPUT_LINES = 60


def cells(nb: Path) -> list[dict]: return json.loads(nb.read_text(encoding="utf-8"))["cells"]
def source(c: dict) -> str: return "".join(c["source"]) if isinstance(c["source"], list) else c["source"]


def output_text(o: dict) -> str:
    if o.get("output_type") == "stream": t = o.get("text", "")
    else: t = o.get("data", {}).get("text/plain", "")
    return "".join(t) if isinstance(t, list) else t


def relative_links(text: str) -> list[str]:
    "Targets of markdown links that are neither absolute URLs nor anchors on the same page."
    return [h for h in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", h) and not h.startswith("#")]


def test_links_resolve_and_point_at_notebooks():
    bad = []
    sources = [(nb, NBS, source(c)) for nb in NOTEBOOKS for c in cells(nb) if c["cell_type"] == "markdown"]
    sources.append((ROOT / "README.md", ROOT, (ROOT / "README.md").read_text(encoding="utf-8")))
    for where, base, text in sources:
        for href in relative_links(text):
            target = href.split("#")[0]
            if target.endswith(".html"): bad.append(f"{where.name}: {href} (link the .ipynb)")
            elif target and not (base / target).exists(): bad.append(f"{where.name}: {href} (no such file)")
    assert not bad, "\n".join(bad)


def test_saved_outputs_are_clean():
    bad = []
    for nb in NOTEBOOKS:
        teaching = nb in METHOD or nb in TUTORIALS
        for i, c in enumerate(cells(nb)):
            for o in c.get("outputs", []):
                t = output_text(o)
                if LOCAL_PATH.search(t): bad.append(f"{nb.name} cell {i}: a local path in {LOCAL_PATH.search(t).group(0)!r}")
                if t.count("\n") > MAX_OUTPUT_LINES: bad.append(f"{nb.name} cell {i}: {t.count(chr(10))} lines of output")
                if teaching and o.get("output_type") == "stream" and o.get("name") == "stderr":
                    bad.append(f"{nb.name} cell {i}: stderr output {t[:80]!r}")
                if o.get("output_type") == "error": bad.append(f"{nb.name} cell {i}: a saved error")
    assert not bad, "\n".join(bad)


def test_method_chapters_have_short_export_cells():
    long = [f"{nb.name} cell {i}: {len(source(c).splitlines())} lines" for nb in METHOD for i, c in enumerate(cells(nb))
            if c["cell_type"] == "code" and re.search(r"^#\|\s*export", source(c), re.M) and len(source(c).splitlines()) > 40]
    assert not long, "\n".join(long)


@pytest.mark.parametrize("prefix", ["03_", "21_", "22_"])
def test_chapters_keep_a_figure(prefix):
    nb = next(p for p in NOTEBOOKS if p.name.startswith(prefix))
    assert any(k.startswith("image/") for c in cells(nb) for o in c.get("outputs", []) for k in o.get("data", {})), nb.name


def test_library_modules_stay_under_450_lines():
    long = [f"{p.name}: {n}" for p in sorted((ROOT / "msflow").glob("*.py")) if p.name != "_modidx.py"  # nbdev's generated index
            for n in [len(p.read_text(encoding="utf-8").splitlines())] if n >= 450]
    assert not long, long


def test_readme_python_blocks_run_in_order(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
    assert blocks, "README.md has no Python example"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    r = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "'score'" in r.stdout  # the example printed a prediction
