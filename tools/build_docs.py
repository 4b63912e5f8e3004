#!/usr/bin/env python
"""Build msflow's documentation website into `docs/`, fully offline.

    python tools/build_docs.py              # process, execute and render every notebook
    python tools/build_docs.py --no-exec    # keep the saved outputs, execute nothing (fast; layout work)
    python tools/build_docs.py -j 1         # one notebook at a time (default: one worker per CPU)
    python tools/build_docs.py --out /tmp/preview 00_core index   # preview some pages elsewhere

Every notebook in `nbs/` becomes one page (files and folders whose names start with `_` or `.` are
skipped). For each notebook, in its own fresh Python process:

1. **Process** it with nbdev's notebook processors, as `nbdev_proc_nbs` does: the first `# Title` /
   `> summary` cell becomes the page title and subtitle, `#| hide`/`#| export` cells disappear,
   `#| hide_line` lines go, and a `show_doc` cell is added after every exported function and class.
2. **Execute** it with execnb (the engine of `nbdev_test`), with the working directory set to the
   notebook's folder, `HF_HUB_OFFLINE=1`, and cells flagged `#| slow`, `#| gpu`, `#| dataset`,
   `#| notest` (the `tst_flags` of settings.ini) or `#| eval: false` skipped: they keep their saved
   outputs. Notebooks whose names start with `tutorial` are not executed at all: their saved outputs
   are shown as they are. `show_doc` renders an API entry: the signature, the docstring, a table of
   the parameters built from their docments comments, and, for a class, its public methods.
3. **Render** the cells with nbconvert's HTML exporter (`basic` template); images are embedded as
   base64 `data:` URIs, so pages work from `file://` as well as from any static server. LaTeX maths
   (`$...$`, `$$...$$`) becomes MathML when `latex2mathml` is installed, and stays as TeX otherwise.
4. **Assemble** the pages: a sidebar with every page (the home page, then the tutorials, then the
   library notebooks in order, grouped as in `GROUPS` below), an "on this page" list, highlighted code
   (Pygments), and links between pages made relative.

The output replaces `docs/` as a whole: `docs/index.html` (from `nbs/index.ipynb`), one page per
notebook named as nbdev and Quarto name it (the number prefix dropped: `00_core.ipynb` -> `core.html`,
so the links in `msflow/_modidx.py` point at the right entries), `docs/assets/` (style sheets),
`docs/manifest.json` (pages, titles and a hash of each notebook's cell sources, checked by
`tests/test_docs.py`) and `docs/.nojekyll`. A full build also writes `nbs/sidebar.yml`, the same sidebar
for Quarto.

A notebook that fails to execute still gets its page, with the error shown where it happened (after a
failure only the cells that the API entries need are run); the build then lists the failures and exits
with status 1.

Where Quarto is installed, `nbdev_docs` renders the same notebooks with `nbs/_quarto.yml` and
`nbs/nbdev.yml` instead.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import html
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
DOCS = ROOT / "docs"
SITE_NAME = "msflow"

# Sidebar sections: (title, test on the notebook's file name). The home page comes first, then each
# section in this order; a notebook goes to the first section whose test it passes.
GROUPS = [
    ("Tutorials", lambda name: name.startswith("tutorial")),
    ("Model", lambda name: _number(name) is not None and _number(name) < 6),
    ("Engineering", lambda name: _number(name) is not None and 6 <= _number(name) < 10),
    ("Data & metrics", lambda name: _number(name) is not None and 10 <= _number(name) < 20),
    ("Engine, deployment & CLI", lambda name: _number(name) is not None and 20 <= _number(name) < 40),
    ("More", lambda name: True),
]
TUTORIAL_ORDER = ["tutorial_quickstart", "tutorial_inside_msflow", "tutorial_your_data", "tutorial_paper", "tutorial_accurate"]  # reading order
DEFAULT_SKIP_FLAGS = ("notest", "slow", "gpu", "dataset")
CELL_TIMEOUT_S = 900  # one cell running longer than this fails the notebook


# ---------------------------------------------------------------------------------------------------
# Which notebooks, and where their pages go (shared with tests/test_docs.py)

def _number(name: str):
    "The leading number of a notebook's file name (`05_model.ipynb` -> 5), or None."
    m = re.match(r"^(\d+)", name)
    return int(m.group(1)) if m else None


def list_notebooks(nbs: Path = NBS) -> list[Path]:
    "Every notebook that gets a page: index first, then tutorials, then the rest in name order."
    found = []
    for p in sorted(nbs.rglob("*.ipynb")):
        rel = p.relative_to(nbs)
        if any(part.startswith(("_", ".")) for part in rel.parts): continue
        found.append(p)
    order = lambda p: TUTORIAL_ORDER.index(p.stem) if p.stem in TUTORIAL_ORDER else len(TUTORIAL_ORDER)
    return sorted(found, key=lambda p: (p.relative_to(nbs).as_posix() != "index.ipynb",
                                        _group_index(p.name), order(p), p.relative_to(nbs).as_posix()))


def _group_index(name: str) -> int:
    return next(i for i, (_, test) in enumerate(GROUPS) if test(name))


def page_path(nb: Path, nbs: Path = NBS) -> str:
    "The page of notebook `nb`, relative to docs/, as nbdev names it: `nbs/00_core.ipynb` -> `core.html`."
    rel = nb.relative_to(nbs)
    stem = re.sub(r"^\d+[a-zA-Z0-9]*_", "", rel.stem.lower())
    return (rel.parent / f"{stem}.html").as_posix()


def source_hash(nb_path: Path) -> str:
    "A hash of a notebook's cell types and sources (not outputs or metadata): changes when its text does."
    nb = json.loads(Path(nb_path).read_text(encoding="utf-8"))
    h = hashlib.sha256()
    for c in nb.get("cells", []):
        src = c.get("source", "")
        h.update(c.get("cell_type", "").encode() + b"\0" + ("".join(src) if isinstance(src, list) else src).encode() + b"\0")
    return h.hexdigest()[:16]


def _is_tutorial(nb: Path) -> bool: return nb.name.startswith("tutorial")


# ---------------------------------------------------------------------------------------------------
# API entries: what `show_doc` renders while the pages are built

@functools.lru_cache(None)
def _lookup():
    "nbdev's index of documented symbols (msflow's and those of other nbdev libraries), or None."
    try:
        from nbdev.doclinks import NbdevLookup
        return NbdevLookup()
    except Exception: return None


def _md(text: str, inline: bool = False) -> str:
    "Markdown to HTML, with backticked names of documented symbols linked to their entries."
    import mistune
    if _lookup() is not None: text = _lookup().linkify(text)
    out = mistune.html(text).strip()
    if inline and out.startswith("<p>") and out.endswith("</p>") and out.count("<p>") == 1: out = out[3:-4]
    return out


def _highlight(code: str) -> str:
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer
    return highlight(code, PythonLexer(), HtmlFormatter(cssclass="highlight"))


def _anno(a) -> str:
    import inspect
    if a is inspect.Parameter.empty or a is inspect.Signature.empty: return ""
    if isinstance(a, str): return a.strip("'\"")
    if isinstance(a, type): return a.__qualname__ if a.__module__ == "builtins" else a.__name__
    return str(a).replace("typing.", "")


def _signature_text(name: str, obj, kind: str, names_only: bool = False) -> str:
    """`name(params) -> ret`; when it does not fit on one line, one parameter per line, or, with `names_only`
    (used when a parameter table follows), just the parameter names, wrapped."""
    import inspect, textwrap
    head = f"class {name}" if kind == "class" else name
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return head
    parts, short, prev = [], [], None
    for p in sig.parameters.values():
        if p.name in ("self", "cls") and kind != "function": continue
        if p.kind is p.KEYWORD_ONLY and prev not in (p.VAR_POSITIONAL, p.KEYWORD_ONLY): parts.append("*"); short.append("*")
        star = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        a = _anno(p.annotation)
        parts.append(star + p.name + (f":{a}" if a else "") + ("" if p.default is p.empty else f"={p.default!r}"))
        short.append(star + p.name)
        prev = p.kind
    ret = "" if kind == "class" else _anno(sig.return_annotation)
    tail = f" -> {ret}" if ret and ret != "None" else ""
    one = f"{head}({', '.join(parts)}){tail}"
    if len(one) <= 88 or not parts: return one
    if names_only:
        return textwrap.fill(f"{head}({', '.join(short)}){tail}", 88, subsequent_indent=" " * 4, break_long_words=False)
    return f"{head}(\n" + "".join(f"    {p},\n" for p in parts) + f"){tail}"


def _library_twin(name: str):
    "The object called `name` in the module the notebook exports to (None if there is none)."
    if not DocEntry.module_name: return None
    try:
        import importlib
        obj = importlib.import_module(DocEntry.module_name)
        for part in name.split("."): obj = getattr(obj, part)
        return obj
    except Exception: return None


def _params_table(obj, name: str = "") -> str:
    """An HTML table of the parameters of `obj` (type, default, docments comment), or '' if none are documented.
    Comments are read from the source; for a class defined in the notebook itself (whose source Python cannot
    find) they come from the same class in the exported module."""
    import inspect
    from fastcore.docments import docments
    dm = None
    for o in (obj, _library_twin(name) if name else None):
        if o is None: continue
        try: dm = docments(o, full=True)
        except Exception: continue
        if any(v.get("docment") for k, v in dm.items() if k not in ("self", "cls")): break
    if not dm: return ""
    dm = {k: v for k, v in dm.items() if k not in ("self", "cls")}
    if not any(v.get("docment") for v in dm.values()): return ""
    ret = dm.pop("return", None)
    rows = []
    for nm, v in dm.items():
        default = "" if v.get("default") is inspect.Parameter.empty else repr(v.get("default"))
        rows.append((f"<code>{html.escape(nm)}</code>", html.escape(_anno(v.get("anno", inspect.Parameter.empty))),
                     f"<code>{html.escape(default)}</code>" if default else "", _md(v.get("docment") or "", inline=True)))
    if ret and not inspect.isclass(obj) and (ret.get("docment") or _anno(ret.get("anno", inspect.Parameter.empty)) not in ("", "None")):
        rows.append(("<strong>Returns</strong>", html.escape(_anno(ret.get("anno", inspect.Parameter.empty))), "",
                     _md(ret.get("docment") or "", inline=True)))
    body = "".join(f"<tr><td>{a}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in rows)
    return ('<table class="doc-params"><thead><tr><th></th><th>Type</th><th>Default</th><th>Details</th></tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _source_link(name: str, obj) -> str:
    "A link to the line of the exported module that defines `name`, on the project's repository."
    import inspect
    try:
        from nbdev.config import get_config
        cfg = get_config()
        root = cfg.config_path.resolve()
        try:  # imported from the library
            f = inspect.unwrap(obj)
            path, line = Path(inspect.getsourcefile(f)).resolve(), inspect.getsourcelines(f)[1]
            if not path.is_file() or cfg.lib_path.resolve() not in path.parents: raise ValueError(path)
            rel = path.relative_to(root).as_posix()
        except Exception:  # defined by the notebook itself: find it in the module the notebook exports to
            if DocEntry.module_file is None: return ""
            rel = DocEntry.module_file
            lines, line = (root / rel).read_text(encoding="utf-8").splitlines(), 0
            for part in name.split("."):
                rx = re.compile(rf"^\s*(?:async\s+def|def|class)\s+{re.escape(part)}\b")
                line = next(i for i in range(line, len(lines)) if rx.match(lines[i])) + 1
        return f'<a class="doc-source" href="{cfg.git_url}/blob/{cfg.branch}/{rel}#L{line}">source</a>'
    except Exception: return ""


def _members(cls):
    "Public methods and properties defined in `cls` itself, in source order: (name, function, kind)."
    out = []
    for nm, v in vars(cls).items():
        if nm.startswith("_"): continue
        if isinstance(v, (classmethod, staticmethod)): out.append((nm, v.__func__, "method"))
        elif isinstance(v, property) and v.fget is not None: out.append((nm, v.fget, "property"))
        elif hasattr(v, "func") and type(v).__name__ == "cached_property": out.append((nm, v.func, "property"))
        elif callable(v) and (hasattr(v, "__code__") or hasattr(v, "__wrapped__")): out.append((nm, v, "method"))
    return out


def dataclass_auto_doc(cls, doc) -> bool:
    "Is `doc` the signature that @dataclass writes as the docstring of a class without one?"
    return bool(doc) and hasattr(cls, "__dataclass_fields__") and doc.startswith(cls.__name__ + "(")


class DocEntry:
    "What `show_doc(sym)` shows on the built pages: heading (with nbdev's anchor), signature, docstring, parameters."
    explicit: set = set()  # names the notebook documents with its own show_doc cells
    module_file: str | None = None  # the module the notebook exports to, e.g. "msflow/core.py"
    module_name: str | None = None  # ... and its name, e.g. "msflow.core"

    def __init__(self, sym, name: str | None = None, title_level: int = 3, **kwargs):
        import inspect
        self.sym = sym
        self.nm = name or getattr(sym, "__qualname__", None) or getattr(sym, "__name__", str(sym))
        self.title_level = min(max(int(title_level), 2), 5)
        self.kind = "class" if inspect.isclass(sym) else "function"
        if isinstance(sym, property) and sym.fget is not None:  # a property added with @patch(as_prop=True)
            self.sym, self.kind = sym.fget, "property"
            self.nm = name or getattr(sym.fget, "__qualname__", None) or sym.fget.__name__

    def _entry(self, name, obj, kind, level, members=True) -> str:
        import inspect
        own = vars(obj).get("__doc__") if kind == "class" else getattr(obj, "__doc__", None) if callable(obj) else None
        if kind == "class" and dataclass_auto_doc(obj, own): own = None
        doc = inspect.cleandoc(own) if isinstance(own, str) else ""
        table = "" if kind == "property" else _params_table(obj, name)
        if kind == "property": sig = f"{name.split('.')[-1]}  # property"
        else: sig = _signature_text(name.split(".")[-1] if kind == "method" else name, obj, kind, names_only=bool(table))
        parts = [f'<div class="doc-entry doc-{kind}" data-name="{html.escape(name)}">',
                 _source_link(name, obj),
                 f'<h{level} class="doc-name" id="{html.escape(name.lower())}"><code>{html.escape(name)}</code>'
                 f'<a class="anchor-link" href="#{html.escape(name.lower())}">¶</a></h{level}>',
                 f'<div class="doc-signature">{_highlight(sig)}</div>']
        if doc: parts.append(f'<div class="doc-docstring">{_md(doc)}</div>')
        parts.append(table)
        if kind == "class" and members:
            ms = [(n, f, k) for n, f, k in _members(obj) if f"{name}.{n}" not in self.explicit
                  and getattr(f, "__module__", None) == getattr(obj, "__module__", None)]
            if ms:
                parts.append('<div class="doc-members">')
                for n, f, k in ms: parts.append(self._entry(f"{name}.{n}", f, k, min(level + 1, 6), members=False))
                parts.append("</div>")
        parts.append("</div>")
        return "\n".join(p for p in parts if p)

    def _repr_html_(self): return self._entry(self.nm, self.sym, self.kind, self.title_level)

    def _repr_markdown_(self):
        import inspect
        return f"### {self.nm}\n\n" + (inspect.getdoc(self.sym) or "")


# ---------------------------------------------------------------------------------------------------
# One notebook -> one page body (runs in a fresh worker process)

_re_quarto_opt = re.compile(r"^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")


def _apply_cell_options(nb):
    "Quarto-style `#| key: value` lines left in code cells become nbconvert tags (echo/output/include)."
    for cell in nb.cells:
        if cell.cell_type != "code" or not cell.get("source"): continue
        lines, opts = cell.source.splitlines(), {}
        while lines and _re_quarto_opt.match(lines[0]):
            k, v = _re_quarto_opt.match(lines.pop(0)).groups()
            opts[k] = v.strip("\"'").lower()
        cell.source = "\n".join(lines)
        tags = set(cell.metadata.get("tags", []))
        if opts.get("include") == "false": tags.add("remove_cell")
        if opts.get("echo") == "false" or not cell.source.strip(): tags.add("remove_input")
        if opts.get("output") == "false": tags.add("remove_output")
        if tags: cell.metadata["tags"] = sorted(tags)


def _collapse_progress(nb):
    "Keep only the final state of carriage-return progress lines in stream outputs."
    for cell in nb.cells:
        for o in cell.get("outputs", []) or []:
            if o.get("output_type") != "stream": continue
            text = "".join(o.text) if isinstance(o.text, list) else o.text
            if "\r" not in text: continue
            text = "\n".join(l.rsplit("\r", 1)[-1] if l.rstrip("\r") else l for l in text.replace("\r\n", "\n").split("\n"))
            o["text"] = text


def _notebook_worker(job: dict) -> dict:
    "Process, execute (unless told not to) and render one notebook; returns its page body and facts."
    t0 = time.time()
    nb_path = Path(job["path"])
    os.chdir(nb_path.parent)
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import nbdev.showdoc
    from execnb.nbio import read_nb, nb2dict
    from nbdev.config import get_config
    from nbdev.process import NBProcessor, Processor
    from nbdev import processors as P
    from nbdev.frontmatter import FrontmatterProc

    cfg = get_config()
    flags = set(DEFAULT_SKIP_FLAGS) | set(cfg.get("tst_flags", "").replace(",", "|").split("|")) - {""}
    errors: list[str] = []
    executed = job["execute"] and not _is_tutorial(nb_path)
    nbdev.showdoc.BasicMarkdownRenderer = DocEntry  # show_doc -> DocEntry on these pages

    class Execute(Processor):
        "Run the code cells (except flagged ones) in a capturing IPython shell, storing their outputs."
        def begin(self):
            self.failed = False
            self.stopped = not executed or str(getattr(self.nb, "frontmatter_", {}).get("skip_exec", "")).lower() == "true"
            if self.stopped: return
            from execnb.shell import CaptureShell
            import ast
            names = set()
            for c in self.nb.cells:
                if c.cell_type != "code": continue
                try: tree = ast.parse(c.source)
                except SyntaxError: continue
                for node in ast.walk(tree):
                    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "show_doc" and node.args:
                        names.add(ast.unparse(node.args[0]))
            DocEntry.explicit = names
            self.k = CaptureShell(nb_path, timeout=CELL_TIMEOUT_S)
            self.k.run_cell("from nbdev.showdoc import show_doc")

        def __call__(self, cell):
            if self.stopped or cell.cell_type != "code" or not cell.source.strip(): return
            d = getattr(cell, "directives_", None) or {}
            if flags & set(d) or (d.get("eval:", [""])[0].lower() == "false"): return
            if "nbdev_export" + "(" in cell.source: return
            # after a failure, run only what the API entries need (exports, imports, show_doc), as nbdev does
            if self.failed and not P._do_eval(cell): return
            self.k.cell(cell)
            if self.k.exc is not None:
                import traceback
                tb = "".join(traceback.format_exception(type(self.k.exc), self.k.exc, self.k.exc.__traceback__))
                errors.append(f"{nb_path.name}, cell {cell.idx_}:\n{cell.source}\n{tb}")
                self.failed = True

    skip = set(cfg.get("skip_procs", "").split(","))
    procs = [FrontmatterProc, P.populate_language, P.add_show_docs, Execute, P.strip_ansi, P.hide_line,
             P.filter_stream_, P.rm_header_dash, P.clean_show_doc, P.rm_export, P.ai_magics, P.clean_magics,
             P.hide_, P.add_links, P.mv_exports, P.strip_hidden_metadata]
    procs = [p for p in procs if p.__name__ not in skip or p is Execute or p is FrontmatterProc]
    nb = read_nb(nb_path)
    exp = P._default_exp(nb)
    lib = cfg.lib_path.resolve().relative_to(cfg.config_path.resolve()).as_posix()
    DocEntry.module_file = f"{lib}/{exp.replace('.', '/')}.py" if exp else None
    DocEntry.module_name = f"{cfg.lib_path.name}.{exp}" if exp else None
    proc = NBProcessor(nb=nb, procs=procs)
    proc.process()
    nb = proc.nb
    fm = dict(getattr(nb, "frontmatter_", {}) or {})
    if nb.cells and nb.cells[0].cell_type == "raw" and nb.cells[0].source.lstrip().startswith("---"): nb.cells.pop(0)
    _apply_cell_options(nb)
    _collapse_progress(nb)

    d = nb2dict(nb)
    for c in d["cells"]:
        c.get("metadata", {}).pop("execution", None)  # nbdev writes a float there, which nbformat rejects
        for k in [k for k in c if k.endswith("_")]: c.pop(k)
    return dict(path=str(nb_path), title=str(fm.get("title") or nb_path.stem), description=str(fm.get("description") or ""),
                nb=json.loads(json.dumps(d, default=str)), errors=errors, executed=executed, seconds=round(time.time() - t0, 1))


def _render(d: dict, nb_path: Path) -> str:
    "A processed notebook (as a dict) -> HTML of its cells (nbconvert's `basic` template, images embedded)."
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from nbformat.v4.rwbase import rejoin_lines
    for i, c in enumerate(d["cells"]):
        c["id"] = f"c{i}"  # stable ids: the show_doc cells nbdev adds get random ones
        c.setdefault("metadata", {})
        if c["cell_type"] == "code":
            c.setdefault("outputs", []); c.setdefault("execution_count", None)
            for o in c["outputs"]:
                if o.get("output_type") == "execute_result": o.setdefault("execution_count", None)
                if o.get("output_type") in ("execute_result", "display_data"): o.setdefault("metadata", {})
    d.setdefault("nbformat", 4); d.setdefault("nbformat_minor", 5); d.setdefault("metadata", {})
    nb = rejoin_lines(nbformat.from_dict(d))
    exporter = HTMLExporter(template_name="basic", exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True, anchor_link_text="¶")
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags={"remove_cell"},
                                                         remove_input_tags={"remove_input"},
                                                         remove_all_outputs_tags={"remove_output"}), enabled=True)
    body, _ = exporter.from_notebook_node(nb, resources={"metadata": {"path": str(nb_path.parent), "name": nb_path.stem}})
    return body


# ---------------------------------------------------------------------------------------------------
# Page assembly

_re_math = re.compile(r"\$\$(?P<d1>.+?)\$\$|\\\[(?P<d2>.+?)\\\]|\\\((?P<i2>.+?)\\\)"
                      r"|(?<![\\$\w])\$(?=[^\s$])(?P<i1>[^$\n]+?)(?<=\S)\$(?![\w$])", re.S)


def _mathml(tex: str, display: bool) -> str | None:
    try: from latex2mathml.converter import convert
    except ImportError: return None
    try: return convert(tex.strip(), display="block" if display else "inline")
    except Exception: return None


def _render_math(soup):
    "Replace TeX in text (not in code) by MathML, where latex2mathml can convert it."
    from bs4 import BeautifulSoup
    for node in list(soup.find_all(string=_re_math)):
        if node.find_parent(["pre", "code", "script", "style", "math", "textarea"]): continue
        text, out, last, hit = str(node), [], 0, False
        for m in _re_math.finditer(text):
            g = m.groupdict()
            tex, display = (g["d1"] or g["d2"], True) if (g["d1"] or g["d2"]) else (g["i1"] or g["i2"], False)
            ml = _mathml(tex, display)
            out += [html.escape(text[last:m.start()]), ml if ml else html.escape(m.group(0))]
            hit, last = hit or bool(ml), m.end()
        if hit: node.replace_with(BeautifulSoup("".join(out) + html.escape(text[last:]), "html.parser"))


def _postprocess(body: str, nb_rel: str, page: str, pages: dict, cfg) -> tuple[str, list]:
    """Make links between pages relative (nbdev's absolute doc links, links to `.ipynb` files), render maths;
    returns the body and its table of contents (the h2 headings and the API entries under them)."""
    from bs4 import BeautifulSoup
    soup = BeautifulSoup(body, "html.parser")
    here = os.path.dirname(page)
    site = (cfg.get("doc_host", "") + cfg.get("doc_baseurl", "")).rstrip("/") + "/"
    for a in soup.find_all("a", href=True):
        href = a["href"]
        if site != "/" and href.startswith(site):
            a["href"] = os.path.relpath(href[len(site):].split("#")[0] or "index.html", here or ".") + \
                        ("#" + href.split("#", 1)[1] if "#" in href else "")
            continue
        if re.match(r"^[a-zA-Z][\w+.-]*:|^#|^/", href): continue
        target, sep, frag = href.partition("#")
        nb_target = os.path.normpath(os.path.join(os.path.dirname(nb_rel), target))
        if nb_target in pages: a["href"] = os.path.relpath(pages[nb_target], here or ".") + sep + frag
    for a in soup.find_all("a", href=True):  # nbdev links every backticked indexed name, private ones too; those have no entry
        target, _, frag = a["href"].partition("#")
        if frag.startswith("_") and target.endswith(".html") and not re.match(r"^[a-zA-Z][\w+.-]*:", target): a.unwrap()
    _render_math(soup)
    for img in soup.find_all("img"): img.attrs.setdefault("alt", "")
    toc = []
    for h in soup.find_all(["h2", "h3"]):
        if not h.get("id") or h.find_parent(class_="doc-members"): continue
        if h.name == "h3" and "doc-name" not in (h.get("class") or []): continue
        toc.append((h.name, h["id"], " ".join(h.get_text("").rstrip("¶").split())))
    return str(soup), toc


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title_text} – {site}</title>
<meta name="description" content="{description_attr}">
<link rel="stylesheet" href="{up}assets/pygments.css">
<link rel="stylesheet" href="{up}assets/style.css">
</head>
<body>
<div class="layout">
<nav class="sidebar" aria-label="Pages">
<a class="brand" href="{up}index.html">{site}</a>
<div class="version">{version}</div>
{nav}
</nav>
<main class="content">
<header class="page-header">
<h1 class="title">{title}</h1>
{subtitle}
</header>
<article class="notebook">
{body}
</article>
{pager}
<footer class="page-footer">{footer}</footer>
</main>
<aside class="toc" aria-label="On this page">
{toc}
</aside>
</div>
</body>
</html>
"""


def _nav_html(entries: list[dict], current: str) -> str:
    up = "../" * current.count("/")
    out, group = [], None
    for e in entries:
        if e["group"] != group:
            if group is not None: out.append("</ul>")
            group = e["group"]
            if group: out.append(f'<div class="nav-group">{html.escape(group)}</div>')
            out.append('<ul class="nav">')
        cls = ' class="active" aria-current="page"' if e["page"] == current else ""
        out.append(f'<li><a href="{up}{e["page"]}"{cls}>{html.escape(e["nav_title"])}</a></li>')
    if group is not None or entries: out.append("</ul>")
    return "\n".join(out)


def _pager_html(entries: list[dict], current: str) -> str:
    "Previous / next links, in the sidebar's reading order."
    up = "../" * current.count("/")
    i = next(k for k, e in enumerate(entries) if e["page"] == current)
    link = lambda e, rel, label: (f'<a class="pager-{rel}" rel="{rel}" href="{up}{e["page"]}">'
                                  f'<span class="pager-label">{label}</span>{html.escape(e["nav_title"])}</a>')
    prev = link(entries[i - 1], "prev", "← Previous") if i > 0 else "<span></span>"
    nxt = link(entries[i + 1], "next", "Next →") if i + 1 < len(entries) else "<span></span>"
    return f'<nav class="pager" aria-label="Previous and next page">{prev}{nxt}</nav>'


def _toc_html(toc: list) -> str:
    if len(toc) < 2: return ""
    items = "".join(f'<li class="toc-{lvl}"><a href="#{html.escape(i)}">{html.escape(t)}</a></li>' for lvl, i, t in toc)
    return f'<div class="toc-title">On this page</div><ul>{items}</ul>'


def _nav_title(title: str) -> str:
    short = title.split(":")[0].strip()
    return short if 0 < len(short) <= 40 else title


def write_quarto_sidebar(entries: list[dict], nbs: Path = NBS):
    "Write nbs/sidebar.yml, the same sections for Quarto (`nbdev_docs` keeps it when settings.ini has custom_sidebar = True)."
    lines, group = ["website:", "  sidebar:", "    contents:"], None
    for e in entries:
        src = e["source"][len("nbs/"):]
        if not e["group"]: lines.append(f"      - {src}"); continue
        if e["group"] != group:
            group = e["group"]
            lines += [f'      - section: "{group}"', "        contents:"]
        lines.append(f"          - {src}")
    text = "\n".join(lines) + "\n"
    f = nbs / "sidebar.yml"
    if not f.exists() or f.read_text() != text: f.write_text(text)


def _assets(out: Path):
    from pygments.formatters import HtmlFormatter
    a = out / "assets"
    a.mkdir(parents=True, exist_ok=True)
    (a / "pygments.css").write_text(HtmlFormatter(style="friendly").get_style_defs(".highlight") + "\n")
    (a / "style.css").write_text(STYLE)


def build(out: Path = DOCS, execute: bool = True, jobs: int | None = None, only: list[str] | None = None) -> int:
    "Build the site into `out` (only the notebooks named in `only`, if given); returns the number that failed."
    import concurrent.futures as cf
    import multiprocessing as mp
    t0 = time.time()
    nbs = list_notebooks()
    if only: nbs = [p for p in nbs if p.name in only or p.stem in only]
    if not nbs: raise SystemExit(f"no notebooks in {NBS}")
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(nbs)))
    env_defaults = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                    "PYTHONHASHSEED": "0", "MPLBACKEND": "Agg", "IN_TEST": "1",
                    "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    for k, v in env_defaults.items(): os.environ.setdefault(k, v)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

    try: import latex2mathml  # noqa: F401
    except ImportError: print("note: latex2mathml is not installed, so maths stays as TeX (pip install latex2mathml)")
    results = {}
    print(f"building {len(nbs)} page(s) with {jobs} worker(s){'' if execute else ', executing nothing'}", flush=True)
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, max_tasks_per_child=1) as ex:
        futs = {ex.submit(_notebook_worker, {"path": str(p), "execute": execute}): p for p in nbs}
        for f in cf.as_completed(futs):
            p = futs[f]
            try: r = f.result()
            except Exception as e:  # processing itself failed: still give the notebook a page
                import traceback
                tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
                r = dict(path=str(p), title=p.stem, description="", errors=[f"{p.name}: {tb}"], executed=False, seconds=0,
                         nb=None)
            if r["nb"]: r["body"] = _render(r.pop("nb"), p)  # while the other workers go on
            results[p] = r
            state = "FAILED" if r["errors"] else ("executed" if r["executed"] else "saved outputs")
            print(f"  {p.relative_to(NBS).as_posix():32s} {r['seconds']:6.1f}s  {state}", flush=True)

    from nbdev.config import get_config
    cwd = os.getcwd(); os.chdir(NBS)
    try: cfg = get_config()
    finally: os.chdir(cwd)
    entries = []
    for p in nbs:
        r = results[p]
        rel = p.relative_to(NBS).as_posix()
        group = "" if rel == "index.ipynb" else GROUPS[_group_index(p.name)][0]
        nav_title = "Home" if rel == "index.ipynb" else _nav_title(r["title"])
        entries.append(dict(source=f"nbs/{rel}", page=page_path(p), title=r["title"], nav_title=nav_title,
                            description=r["description"], group=group, source_sha=source_hash(p),
                            executed=r["executed"], errors=len(r["errors"])))
    pages = {e["source"][len("nbs/"):]: e["page"] for e in entries}

    tmp = Path(tempfile.mkdtemp(prefix=".docs-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        _assets(tmp)
        (tmp / ".nojekyll").write_text("")
        version = cfg.get("version", "")
        for p, e in zip(nbs, entries):
            r = results[p]
            nb_rel = e["source"][len("nbs/"):]
            body = r.get("body", "")
            if r["errors"]:
                errs = "".join(f"<pre>{html.escape(x)}</pre>" for x in r["errors"])
                body = (f'<div class="build-error"><strong>This page is incomplete: building it failed.</strong>'
                        f'<details><summary>error</summary>{errs}</details></div>') + body
            body, toc = _postprocess(body, nb_rel, e["page"], pages, cfg)
            up = "../" * e["page"].count("/")
            sub = f'<p class="subtitle">{_md(e["description"], inline=True)}</p>' if e["description"] else ""
            footer = f'{html.escape(SITE_NAME)} {html.escape(version)} · built from <code>{html.escape(e["source"])}</code>'
            doc = PAGE.format(title_text=html.escape(e["title"]), site=html.escape(SITE_NAME), up=up,
                              description_attr=html.escape(e["description"], quote=True), version=html.escape(version),
                              nav=_nav_html(entries, e["page"]), title=html.escape(e["title"]), subtitle=sub,
                              body=body, footer=footer, toc=_toc_html(toc), pager=_pager_html(entries, e["page"]))
            dest = tmp / e["page"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(doc, encoding="utf-8")
        (tmp / "manifest.json").write_text(json.dumps(
            {"site": SITE_NAME, "version": version, "pages": [{k: v for k, v in e.items() if k != "nav_title"} for e in entries]},
            indent=1) + "\n")
        if out.exists(): shutil.rmtree(out)
        tmp.rename(out)
        if not only: write_quarto_sidebar(entries)
    finally:
        if tmp.exists(): shutil.rmtree(tmp, ignore_errors=True)

    failed = [r for r in results.values() if r["errors"]]
    for r in failed:
        print(f"\n--- error in {Path(r['path']).name} ---", file=sys.stderr)
        for e in r["errors"]: print(e, file=sys.stderr)
    print(f"wrote {len(entries)} page(s) to {out} in {time.time() - t0:.0f}s"
          + (f"; {len(failed)} notebook(s) FAILED: {', '.join(Path(r['path']).name for r in failed)}" if failed else ""))
    return len(failed)


STYLE = r"""
:root {
  --fg: #1f2328; --muted: #59636e; --bg: #ffffff; --side: #f6f8fa; --border: #d1d9e0;
  --accent: #0b5cad; --code-bg: #f6f8fa; --out-bg: #fbfbfc;
  --mono: ui-monospace, SFMono-Regular, "SF Mono", Menlo, Consolas, "Liberation Mono", monospace;
}
* { box-sizing: border-box; }
html { font-size: 16px; }
body { margin: 0; color: var(--fg); background: var(--bg);
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", "Noto Sans", "Liberation Sans", Arial, sans-serif;
  line-height: 1.6; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.layout { display: grid; grid-template-columns: 250px minmax(0, 1fr) 220px; min-height: 100vh; }
.pager { display: flex; justify-content: space-between; gap: 1rem; margin: 2.5rem 0 1rem; border-top: 1px solid var(--border); padding-top: 1rem; }
.pager a { display: flex; flex-direction: column; text-decoration: none; max-width: 48%; }
.pager a.pager-next { text-align: right; margin-left: auto; }
.pager-label { font-size: .8rem; color: var(--muted, #666); }
.sidebar { background: var(--side); border-right: 1px solid var(--border); padding: 1.25rem 1rem;
  position: sticky; top: 0; height: 100vh; overflow-y: auto; font-size: .92rem; }
.brand { display: block; font-size: 1.35rem; font-weight: 700; color: var(--fg); }
.version { color: var(--muted); font-size: .8rem; margin-bottom: 1rem; }
.nav-group { margin: 1.1rem 0 .3rem; font-size: .75rem; font-weight: 700; text-transform: uppercase;
  letter-spacing: .05em; color: var(--muted); }
ul.nav { list-style: none; margin: 0; padding: 0; }
ul.nav a { display: block; padding: .22rem .6rem; border-radius: 6px; color: var(--fg); }
ul.nav a:hover { background: #eaeef2; text-decoration: none; }
ul.nav a.active { background: #dbe8f7; color: var(--accent); font-weight: 600; }
.content { padding: 2rem 3rem 4rem; max-width: 60rem; width: 100%; }
.page-header { border-bottom: 1px solid var(--border); margin-bottom: 1.5rem; padding-bottom: 1rem; }
.page-header .title { font-size: 2.1rem; line-height: 1.2; margin: 0 0 .5rem; }
.page-header .subtitle { font-size: 1.1rem; color: var(--muted); margin: 0; }
.page-footer { margin-top: 3rem; padding-top: 1rem; border-top: 1px solid var(--border); color: var(--muted); font-size: .8rem; }
.toc { position: sticky; top: 0; height: 100vh; overflow-y: auto; padding: 2rem 1rem; font-size: .82rem; }
.toc-title { font-weight: 700; color: var(--muted); text-transform: uppercase; font-size: .72rem; letter-spacing: .05em; margin-bottom: .4rem; }
.toc ul { list-style: none; margin: 0; padding: 0; border-left: 1px solid var(--border); }
.toc li a { display: block; padding: .12rem .7rem; color: var(--muted); overflow-wrap: anywhere; }
.toc li.toc-h3 a { padding-left: 1.4rem; font-family: var(--mono); font-size: .78rem; }
.toc li a:hover { color: var(--accent); }
@media (max-width: 1200px) { .layout { grid-template-columns: 230px minmax(0, 1fr); } .toc { display: none; } }
@media (max-width: 760px) {
  .layout { display: block; } .sidebar { position: static; height: auto; border-right: 0; border-bottom: 1px solid var(--border); }
  .content { padding: 1.2rem; } }

/* notebook cells (nbconvert "basic" markup) */
.notebook h1, .notebook h2, .notebook h3, .notebook h4 { line-height: 1.3; margin: 1.8rem 0 .6rem; }
.notebook h2 { font-size: 1.5rem; padding-bottom: .25rem; border-bottom: 1px solid #eaeef2; }
.notebook h3 { font-size: 1.2rem; }
.anchor-link { visibility: hidden; margin-left: .35rem; color: var(--muted); font-weight: 400; text-decoration: none; }
h1:hover > .anchor-link, h2:hover > .anchor-link, h3:hover > .anchor-link, h4:hover > .anchor-link,
h5:hover > .anchor-link { visibility: visible; }
.cell { margin: .9rem 0; }
.prompt, .input_prompt, .output_prompt { display: none; }
code { font-family: var(--mono); font-size: .88em; background: #eff1f3; padding: .1em .3em; border-radius: 4px; }
pre { font-family: var(--mono); font-size: .84rem; line-height: 1.45; margin: 0; overflow-x: auto; }
pre code { background: none; padding: 0; font-size: inherit; }
.highlight { background: var(--code-bg); }
.notebook .highlight pre, .rendered_html .highlight pre { padding: .75rem 1rem; }
.input_area { border: 1px solid var(--border); border-radius: 8px; overflow: hidden; }
.input_area .highlight { background: var(--code-bg); border: 0; }
.output_wrapper { margin-top: .35rem; }
.output_area { margin: .2rem 0; overflow-x: auto; }
.output_text pre, .output_stream pre { background: var(--out-bg); border-left: 3px solid var(--border); padding: .55rem .9rem; }
.output_stderr pre { background: #fff8e6; border-left-color: #e6b84c; }
.output_error pre { background: #fff0f0; border-left-color: #d1242f; }
.output_png img, .output_jpeg img, .output_svg svg, .rendered_html img { max-width: 100%; height: auto; }
.output_png, .output_jpeg { text-align: left; }
.rendered_html blockquote { margin: 1rem 0; padding: .2rem 1rem; color: var(--muted); border-left: 4px solid var(--border); }
.rendered_html table, table.dataframe, table.doc-params { border-collapse: collapse; margin: 1rem 0; font-size: .9rem;
  display: block; overflow-x: auto; max-width: 100%; }
.rendered_html th, .rendered_html td, table.doc-params th, table.doc-params td {
  border: 1px solid var(--border); padding: .35rem .7rem; text-align: left; vertical-align: top; }
.rendered_html thead th, table.doc-params thead th { background: var(--side); font-weight: 600; }
.rendered_html tbody tr:nth-child(even) { background: #fafbfc; }
.rendered_html pre:not(.highlight pre) { background: var(--code-bg); padding: .75rem 1rem; border-radius: 8px; }
.rendered_html .highlight { border-radius: 8px; margin: .8rem 0; }
math { font-size: 1.05em; font-family: "STIX Two Math", "Latin Modern Math", "Cambria Math", math, serif; }
math[display="block"] { margin: .8rem 0; font-size: 1.1em; }

/* API entries */
.doc-entry { position: relative; border: 1px solid var(--border); border-radius: 10px; padding: .3rem 1.2rem 1rem;
  margin: 1.2rem 0; background: #fff; box-shadow: 0 1px 2px rgba(31,35,40,.06); }
.doc-entry .doc-entry { box-shadow: none; margin: .9rem 0 .2rem; border-color: #e4e8ec; }
.doc-name { margin: .7rem 0 .5rem !important; border: 0 !important; font-size: 1.15rem; }
.doc-name code { background: none; padding: 0; font-size: 1.05em; color: #0a3069; }
.doc-members .doc-name { font-size: 1rem; }
.doc-source { position: absolute; right: 1rem; top: .9rem; font-size: .78rem; }
.doc-signature .highlight { border-radius: 6px; }
.doc-signature .highlight pre { padding: .55rem .9rem; }
.doc-docstring p { margin: .6rem 0; }
.doc-docstring > p:first-child { font-style: italic; }
table.doc-params td:first-child { white-space: nowrap; }
.doc-members { margin-top: .6rem; }
.build-error { border: 1px solid #f1aeb5; background: #fff0f0; border-radius: 8px; padding: .7rem 1rem; margin: 1rem 0; color: #82071e; }
.build-error summary { cursor: pointer; }
.build-error pre { background: #fff; padding: .7rem; margin-top: .5rem; border-radius: 6px; color: var(--fg); }
/* ANSI colours in tracebacks */
.ansi-red-fg { color: #b31d28; } .ansi-green-fg { color: #22863a; } .ansi-yellow-fg { color: #b08800; }
.ansi-blue-fg { color: #005cc5; } .ansi-magenta-fg { color: #6f42c1; } .ansi-cyan-fg { color: #1b7c83; }
.ansi-bold { font-weight: 700; }
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-exec", action="store_true", help="execute nothing; show the outputs saved in the notebooks")
    ap.add_argument("-j", "--jobs", type=int, default=None, help="notebooks built at once (default: number of CPUs)")
    ap.add_argument("--out", type=Path, default=DOCS, help="output folder (default: docs/); replaced as a whole")
    ap.add_argument("notebooks", nargs="*", help="preview only these notebooks (e.g. 00_core); use with --out elsewhere")
    a = ap.parse_args(argv)
    if a.notebooks and a.out.resolve() == DOCS.resolve(): ap.error("a partial build must go elsewhere: add --out DIR")
    failed = build(a.out.resolve(), execute=not a.no_exec, jobs=a.jobs, only=a.notebooks)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
