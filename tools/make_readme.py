"""Write README.md from nbs/index.ipynb (the home page of the docs), so the two never drift apart.

Markdown cells are copied; visible code cells become ```python blocks (their saved text outputs are
dropped); `#| hide` cells are skipped. Links to notebooks (`page.ipynb`, which code hosts render) and
images (`images/...`) are rewritten to work from the repository root. Usage: python tools/make_readme.py [--check]
"""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def render() -> str:
    nb = json.loads((ROOT / "nbs" / "index.ipynb").read_text(encoding="utf-8"))
    parts = []
    for c in nb["cells"]:
        src = "".join(c["source"]).strip("\n")
        if c["cell_type"] == "markdown":
            src = re.sub(r"\]\((images/[^)]+)\)", r"](nbs/\1)", src)
            src = re.sub(r"\]\(([\w.-]+\.ipynb(?:#[^)]*)?)\)", r"](nbs/\1)", src)
            parts.append(src)
        elif c["cell_type"] == "code" and not src.lstrip().startswith("#| hide") and "#| hide" not in src.split("\n")[0]:
            parts.append("```python\n" + src + "\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        ok = (ROOT / "README.md").read_text(encoding="utf-8") == text
        print("README.md is up to date" if ok else "README.md is stale: run python tools/make_readme.py"); sys.exit(0 if ok else 1)
    (ROOT / "README.md").write_text(text, encoding="utf-8"); print("wrote README.md")
