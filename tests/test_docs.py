"""The documentation site in docs/ is current and renders.

The site is built by `python tools/build_docs.py`; these tests read the committed docs/ and build nothing.
- staleness: every notebook has its page, built from the notebook's current text, and every exported
  name has its entry on its module's page;
- rendering: headless Chromium opens the home page, the core API page and a tutorial (or another page
  with a figure), finds their titles and API entries, and checks that every image really loaded. It also
  saves a screenshot of the home page (tests/artifacts/docs_home.png, or $MSFLOW_ARTIFACTS/docs_home.png).
  Skipped when Chromium is not installed.
"""
import ast
import functools
import html
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NBS = ROOT / "nbs"
REBUILD = "rebuild the site with `python tools/build_docs.py`"


@functools.lru_cache(None)
def builder():
    "tools/build_docs.py as a module (for its notebook list and page names)."
    spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(None)
def manifest() -> dict:
    f = DOCS / "manifest.json"
    assert f.exists(), f"{f} is missing: {REBUILD}"
    return json.loads(f.read_text())


def nb_title(nb: Path) -> str:
    "The `# Title` of a notebook's first markdown cell."
    for c in json.loads(nb.read_text(encoding="utf-8"))["cells"]:
        if c["cell_type"] != "markdown": continue
        m = re.search(r"^#\s+(\S.*?)\s*$", "".join(c["source"]), flags=re.M)
        if m: return m.group(1)
    return nb.stem


class Page(HTMLParser):
    "The ids, the h1 title, the API entries and the images of an HTML page."
    def __init__(self, text: str):
        super().__init__()
        self.ids, self.entries, self.imgs, self.attrs_of = set(), [], [], {}
        self.title, self._in_title = "", False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a: self.ids.add(a["id"])
        cls = (a.get("class") or "").split()
        if tag == "h1" and "title" in cls: self._in_title = True
        if "doc-entry" in cls: self.entries.append(a.get("data-name"))
        if tag == "img": self.imgs.append(a.get("src", ""))
        self.attrs_of.setdefault(tag, a)

    def handle_endtag(self, tag):
        if tag == "h1": self._in_title = False

    def handle_data(self, data):
        if self._in_title: self.title += data


def read_page(rel: str) -> Page:
    return Page((DOCS / rel).read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# staleness

def test_every_notebook_has_a_current_page():
    b, pages = builder(), {p["source"]: p for p in manifest()["pages"]}
    nbs = b.list_notebooks(NBS)
    assert nbs, "no notebooks found"
    assert (DOCS / "index.html").exists() and (DOCS / ".nojekyll").exists()
    problems = []
    for nb in nbs:
        src = nb.relative_to(ROOT).as_posix()
        page = b.page_path(nb, NBS)
        if src not in pages: problems.append(f"{src}: no page"); continue
        e = pages[src]
        if e["page"] != page or not (DOCS / page).exists(): problems.append(f"{src}: {page} missing"); continue
        if e["source_sha"] != b.source_hash(nb): problems.append(f"{src}: changed since {page} was built")
        title = read_page(page).title.strip()
        if title != nb_title(nb): problems.append(f"{src}: page title {title!r}, notebook title {nb_title(nb)!r}")
    gone = set(pages) - {nb.relative_to(ROOT).as_posix() for nb in nbs}
    problems += [f"{g}: page of a notebook that no longer exists" for g in sorted(gone)]
    assert not problems, f"docs/ is stale ({REBUILD}):\n" + "\n".join(problems)
    assert manifest()["pages"][0]["page"] == "index.html"


def test_no_page_failed_to_build():
    failed = [p["source"] for p in manifest()["pages"] if p["errors"]]
    assert not failed, f"these notebooks failed while the site was built: {failed}; fix them and {REBUILD}"


class _Links(HTMLParser):
    "Every href of a page, and the pager's previous/next links."
    def __init__(self, text):
        super().__init__(); self.hrefs, self.pager = [], {}
        self.feed(text)
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
            if a.get("rel") in ("prev", "next"): self.pager[a["rel"]] = a["href"]


def test_internal_links_resolve_and_pages_link_previous_and_next():
    "Every link between pages lands on an existing page and, with a #fragment, on an existing anchor; each page links its neighbours in reading order."
    order = [p["page"] for p in manifest()["pages"]]
    broken = []
    for i, page in enumerate(order):
        links = _Links((DOCS / page).read_text(encoding="utf-8"))
        for href in links.hrefs:
            if re.match(r"^[a-z]+:", href) or href.startswith("data:"): continue
            target, _, frag = href.partition("#")
            dest = (DOCS / page).parent / target if target else DOCS / page
            if not dest.resolve().exists(): broken.append(f"{page}: {href} (no such page)"); continue
            if frag and dest.suffix == ".html" and frag not in read_page(dest.resolve().relative_to(DOCS.resolve()).as_posix()).ids:
                broken.append(f"{page}: {href} (no such anchor)")
        want = {"prev": order[i - 1] if i else None, "next": order[i + 1] if i + 1 < len(order) else None}
        got = {k: links.pager.get(k) for k in want}
        if got != want: broken.append(f"{page}: pager links {got}, expected {want}")
    assert not broken, "\n".join(broken[:20])


def _public_names(py: Path) -> set:
    "The names in a module's `__all__` (None when it has none)."
    for node in ast.parse(py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def test_every_export_has_an_api_entry():
    "Each public function, class and method in msflow/_modidx.py has its anchor on the page its link names."
    modidx = ast.parse((ROOT / "msflow" / "_modidx.py").read_text())
    d = ast.literal_eval(next(n.value for n in modidx.body if isinstance(n, ast.Assign)))
    missing, checked, pages = [], 0, {}
    for mod, syms in d["syms"].items():
        for sym, (link, py) in syms.items():
            parts = sym[len(mod) + 1:].split(".")
            if any(p.startswith("_") for p in parts): continue
            public = _public_names(ROOT / py)
            if public is not None and parts[0] not in public: continue
            page, _, anchor = link.partition("#")
            if page not in pages: pages[page] = read_page(page).ids if (DOCS / page).exists() else None
            checked += 1
            if pages[page] is None: missing.append(f"{sym}: page {page} missing")
            elif anchor not in pages[page]: missing.append(f"{sym}: no entry #{anchor} on {page}")
    assert checked, "no exported names found in msflow/_modidx.py"
    assert not missing, f"API pages lack exported names ({REBUILD}):\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------------
# rendering in a real browser

def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p: return p
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


# Added to each page the test serves: once the page has loaded, it records on <body> how many images
# there are and which did not load, whether the style sheet applied, and how many MathML formulas there are.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0));
  const b = document.body;
  b.dataset.probeImages = imgs.length;
  b.dataset.probeBroken = broken.length;
  b.dataset.probeBrokenSrc = broken.map(i => i.src.slice(0, 80)).join(' | ');
  const side = document.querySelector('.sidebar');
  b.dataset.probeCss = side && getComputedStyle(side).position === 'sticky' ? 'ok' : 'missing';
  b.dataset.probeDone = '1';
});
</script>"""


class ProbeHandler(http.server.SimpleHTTPRequestHandler):
    "Serves docs/ and adds the probe script to HTML pages."
    def __init__(self, *a, **kw): super().__init__(*a, directory=str(DOCS), **kw)
    def log_message(self, *a): pass

    def send_head(self):
        path = self.translate_path(self.path)
        if not path.endswith(".html") or not os.path.isfile(path): return super().send_head()
        body = Path(path).read_text(encoding="utf-8").replace("</body>", PROBE + "</body>").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        import io
        return io.BytesIO(body)


@pytest.fixture(scope="module")
def server():
    if not DOCS.joinpath("index.html").exists(): pytest.fail(f"docs/index.html missing: {REBUILD}")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ProbeHandler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def run_chromium(*args, timeout=120) -> str:
    exe = chromium()
    if not exe: pytest.skip("Chromium is not installed (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
               f"--user-data-dir={profile}", "--window-size=1400,1000", *args]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"chromium failed ({r.returncode}): {r.stderr[-2000:]}"
    return r.stdout


def rendered(url: str) -> tuple[Page, dict]:
    "The DOM of `url` once loaded, and the probe's findings."
    dom = run_chromium("--virtual-time-budget=15000", "--dump-dom", url)
    page = Page(dom)
    body = page.attrs_of.get("body", {})
    probe = {k[len("data-probe-"):]: html.unescape(v or "") for k, v in body.items() if k.startswith("data-probe-")}
    assert probe.get("done") == "1", f"{url} did not finish loading in the browser"
    return page, probe


def pages_to_open() -> list[tuple[str, str, bool]]:
    "(page, notebook title, must have an image): home, core's API page, a tutorial or a page with a figure."
    entries = manifest()["pages"]
    by_src = {e["source"]: e for e in entries}
    picks = [(by_src["nbs/index.ipynb"], False)]
    core = by_src.get("nbs/00_core.ipynb")
    if core: picks.append((core, False))
    tut = [e for e in entries if Path(e["source"]).name.startswith("tutorial")]
    with_img = [e for e in entries if "<img" in (DOCS / e["page"]).read_text(encoding="utf-8")]
    extra = (tut or with_img or [None])[0]
    if extra: picks.append((extra, "<img" in (DOCS / extra["page"]).read_text(encoding="utf-8")))
    return [(e["page"], e["title"], img) for e, img in picks]


def test_pages_render_in_a_browser(server):
    for page, title, needs_img in pages_to_open():
        dom, probe = rendered(f"{server}/{page}")
        assert dom.title.strip() == title, f"{page}: title {dom.title!r}, expected {title!r}"
        assert probe["css"] == "ok", f"{page}: style sheet not applied"
        assert int(probe["broken"]) == 0, f"{page}: images that did not load: {probe['broken-src']}"
        if needs_img: assert int(probe["images"]) > 0, f"{page}: no image rendered"
        if page == "core.html":
            assert len(dom.entries) >= 3, f"{page}: API entries missing ({dom.entries})"
            assert "get_config" in dom.entries


def test_pages_open_from_files():
    "The site also works opened straight from disk (file://): styles apply, images load."
    page = pages_to_open()[-1][0]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "docs"
        shutil.copytree(DOCS, site)
        f = site / page
        f.write_text(f.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
        _, probe = rendered(f.as_uri())
    assert probe["css"] == "ok" and int(probe["broken"]) == 0, probe


def test_home_page_screenshot(server):
    out = Path(os.environ.get("MSFLOW_ARTIFACTS", ROOT / "tests" / "artifacts")) / "docs_home.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists(): out.unlink()
    run_chromium("--virtual-time-budget=15000", f"--screenshot={out}", f"{server}/index.html")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "screenshot missing or blank"
    print(f"screenshot of the home page: {out}")
