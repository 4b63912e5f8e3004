"""`msflow download` without the internet: miniature archives in each dataset's real upstream layout, served by a
local HTTP server with Range support, through download -> verify -> unpack -> convert, and every failure on the way."""
import argparse
import dataclasses
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from contextlib import redirect_stdout
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import msflow.download as dl
from msflow.core import MSFlowError
from msflow.data import MVTecDataset, scan_category

def _real_mtd():
    "The real converted Magnetic Tile data, where a developer has it under $MSFLOW_DATA; None elsewhere."
    from msflow.download import find_category
    root = find_category("magnetic_tile")
    return None if root is None else root / "magnetic_tile"
QUIET = dict(progress=False, log=lambda *a, **k: None)


# ----------------------------------------------------------------------------- a local server with Range support
class Handler(BaseHTTPRequestHandler):
    "GET of `server.files` (path -> bytes); `Range: bytes=N-` -> 206; paths in `server.cut` break off half-way once."
    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None: return self.send_error(404)
        start = 0
        if self.path in srv.no_range: rng = None  # a server without range support answers 200 with everything
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            if not m: return self.send_error(400)
            start = int(m[1])
            if start >= len(data):
                self.send_response(416); self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0"); self.end_headers(); return
        body = data[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest()[:16] + '"')
        if rng: self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if srv.cut.get(self.path, 0) > 0:  # a flaky network: half the promised bytes, then the connection closes
            srv.cut[self.path] -= 1
            self.wfile.write(body[: len(body) // 2]); self.wfile.flush(); self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args): pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.cut, srv.requests, srv.no_range = {}, {}, [], set()
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    srv.base = f"http://127.0.0.1:{srv.server_port}"
    yield srv
    srv.shutdown(); srv.server_close()


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    "No test may leave the machine: only 127.0.0.1 is reachable; no waiting between retries."
    real = dl._opener
    def opener(url):
        assert url.startswith("http://127.0.0.1:"), f"a test tried to reach {url}"
        return real(url)
    monkeypatch.setattr(dl, "_opener", opener)
    monkeypatch.setattr(dl, "RETRY_WAIT", 0.0)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def serve(server, monkeypatch, name, data: bytes, sha=True, path=None):
    "Serve `data` and point the registry entry `name` at it (URL, checksum, a small size)."
    path = path or f"/{name}-{len(server.files)}.archive"
    server.files[path] = data
    entry = dataclasses.replace(dl.DATASETS[name], url=server.base + path, size=0.001,
                                sha256=hashlib.sha256(data).hexdigest() if sha else None)
    monkeypatch.setitem(dl.DATASETS, name, entry)
    return server.base + path


# ----------------------------------------------------------------------------- miniature upstream archives
def save(path: Path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path, **kw)


def tar_bytes(folder: Path, mode="w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for p in sorted(folder.iterdir()): tf.add(p, arcname=p.name)
    return buf.getvalue()


def mvtec_archive(tmp: Path) -> bytes:
    "MVTec AD's layout: CATEGORY/{train/good, test/good, test/DEFECT, ground_truth/DEFECT/NNN_mask.png} + licence, .tar.xz."
    src = tmp / "mvtec-src"
    for c, defect in [("bottle", "broken_large"), ("cable", "cut_lead")]:
        for i in range(3): save(src / c / "train/good" / f"{i:03d}.png", np.full((12, 12, 3), 100 + i))
        for i in range(2): save(src / c / "test/good" / f"{i:03d}.png", np.full((12, 12, 3), 110))
        for i in range(2):
            save(src / c / "test" / defect / f"{i:03d}.png", np.full((12, 12, 3), 20))
            m = np.zeros((12, 12)); m[3:6, 3:6] = 255
            save(src / c / "ground_truth" / defect / f"{i:03d}_mask.png", m)
    (src / "license.txt").write_text("CC BY-NC-SA 4.0")
    (src / "readme.txt").write_text("MVTec AD")
    return tar_bytes(src, "w:xz")


VISA_SPLIT = {"train": ["0000", "0001", "0002"], "test": ["0003", "0004"], "anomaly": ["000", "001"]}


def visa_archive(tmp: Path, categories=("candle", "pcb1")) -> bytes:
    "VisA's layout: CATEGORY/Data/Images/{Normal,Anomaly}/*.JPG, Data/Masks/Anomaly/*.png (non-zero = defect), split_csv/1cls.csv."
    src = tmp / "visa-src"
    rows = ["object,split,label,image,mask"]
    for c in categories:
        for split in ("train", "test"):
            for n in VISA_SPLIT[split]:
                img = f"{c}/Data/Images/Normal/{n}.JPG"
                save(src / img, np.full((10, 14, 3), 120), format="JPEG")
                rows.append(f"{c},{split},normal,{img},")
        for k, n in enumerate(VISA_SPLIT["anomaly"]):
            img, mask = f"{c}/Data/Images/Anomaly/{n}.JPG", f"{c}/Data/Masks/Anomaly/{n}.png"
            save(src / img, np.full((10, 14, 3), 30), format="JPEG")
            m = np.zeros((10, 14)); m[2:5, 2:6] = (1, 37)[k]  # VisA masks: any non-zero value is a defect
            save(src / mask, m)
            rows.append(f"{c},test,anomaly,{img},{mask}")
    (src / "split_csv").mkdir(parents=True)
    (src / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return tar_bytes(src)


MTD_FREE_TRAIN = ["exp1_num_10181", "exp6_num_34208", "exp3_num_266831", "exp4_num_346361"]  # on DifferNet's list
MTD_FREE_TEST = ["exp0_num_743", "exp1_num_11276"]  # not on it
MTD_DEFECTS = {"MT_Blowhole": ["exp1_num_108719", "exp1_num_108889"], "MT_Break": ["exp2_num_5"], "MT_Crack": ["exp3_num_45042"],
               "MT_Fray": ["exp4_num_7"], "MT_Uneven": ["exp0_num_461", "exp5_num_9"]}


def mtd_archive(tmp: Path) -> bytes:
    "The GitHub zip of abin24/Magnetic-tile-defect-datasets.: TOP/MT_CLASS/Imgs/NAME.jpg with NAME.png masks beside them."
    top = "Magnetic-tile-defect-datasets.-master"
    buf = io.BytesIO()
    def img(arr, fmt):
        b = io.BytesIO(); Image.fromarray(np.asarray(arr, np.uint8)).save(b, format=fmt); return b.getvalue()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(f"{top}/README.md", "Magnetic tile defect datasets")
        for cls, names in [("MT_Free", MTD_FREE_TRAIN + MTD_FREE_TEST), *MTD_DEFECTS.items()]:
            for n in names:
                zf.writestr(f"{top}/{cls}/Imgs/{n}.jpg", img(np.full((11, 7), 90), "JPEG"))
                m = np.zeros((11, 7))
                if cls != "MT_Free" and n != "exp0_num_461":  # one uneven mask is empty, as in the real data
                    m[1:4, 1:4] = 255; m[1:4, 4] = 128; m[6:8, 1:3] = 127  # anti-aliased: 128 is in, 127 out
                zf.writestr(f"{top}/{cls}/Imgs/{n}.png", img(m, "PNG"))
    return buf.getvalue()


def tree(folder: Path) -> dict:
    "relative path -> bytes of every file under `folder`."
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def names(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def assert_nothing_complete(root: Path, name: str):
    "No dataset folder, no marker, no hidden work folder."
    assert not (root / name).exists()
    if root.exists():
        assert list(root.rglob(dl.MARKER)) == [] and list(root.glob(f".{name}.partial-*")) == []


# ----------------------------------------------------------------------------- the registry and the data folder
def test_data_home(monkeypatch):
    monkeypatch.delenv("MSFLOW_DATA", raising=False)
    assert dl.data_home() == Path.home() / "msflow-data"
    monkeypatch.setenv("MSFLOW_DATA", "~/elsewhere")
    assert dl.data_home() == Path.home() / "elsewhere"


def test_registry_and_list():
    d = dl.DATASETS
    assert list(d) == ["mvtec-ad", "visa", "magnetic-tile"]
    assert d["mvtec-ad"].sha256 == "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    assert d["mvtec-ad"].url.endswith("/mvtec_anomaly_detection.tar.xz") and len(d["mvtec-ad"].categories) == 15
    assert d["visa"].sha256 == "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"
    assert d["visa"].url == "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
    assert len(d["visa"].categories) == 12 and "pipe_fryum" in d["visa"].categories
    assert d["magnetic-tile"].sha256 is None and "Magnetic-tile-defect-datasets./archive" in d["magnetic-tile"].url
    text = dl.format_datasets()
    for e in d.values(): assert e.licence in text and e.citation in text and e.name in text
    assert "CC BY-NC-SA 4.0" in text and "none published" in text
    with pytest.raises(MSFlowError, match="choose one of"): dl.get_dataset("imagenet")
    assert dl.get_dataset("MVTec_AD").name == "mvtec-ad"


# ----------------------------------------------------------------------------- each dataset, end to end
def test_mvtec(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "mvtec-ad", mvtec_archive(tmp_path))
    root = tmp_path / "data"
    path = dl.download("mvtec-ad", root, categories=["bottle"], **QUIET)
    assert path == root / "mvtec-ad" and names(path) == [dl.MARKER, "bottle"]
    b = path / "bottle"
    assert (len(names(b / "train/good")), names(b / "test"), names(b / "ground_truth/broken_large")) == \
           (3, ["broken_large", "good"], ["000_mask.png", "001_mask.png"])
    ds = MVTecDataset(path, "bottle", "test", input_size=8)
    assert len(ds) == 4 and ds.labels.tolist() == [1, 1, 0, 0] and ds[0]["mask"].sum() > 0
    marker = json.loads((path / dl.MARKER).read_text())
    assert marker["name"] == "mvtec-ad" and marker["categories"] == ["bottle"] and marker["sha256"] == dl.DATASETS["mvtec-ad"].sha256
    # the other category later: from the archive kept after the partial install, no new request
    n = len(server.requests)
    kept = list((root / ".downloads").iterdir())
    assert len(kept) == 1 and kept[0].suffix == ".archive"
    dl.download("mvtec-ad", root, categories=["cable"], **QUIET)
    assert len(server.requests) == n and names(path) == [dl.MARKER, "bottle", "cable"]
    assert json.loads((path / dl.MARKER).read_text())["categories"] == ["bottle", "cable"]
    assert len(scan_category(path, "cable", "test")) == 4


def test_visa(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "visa", visa_archive(tmp_path))
    path = dl.download("visa", tmp_path / "data", categories=["candle"], **QUIET)
    assert names(path) == [dl.MARKER, "candle"]  # pcb1 was not unpacked
    c = path / "candle"
    assert names(c) == ["ground_truth", "test", "train"]
    assert names(c / "train/good") == [f"{n}.JPG" for n in VISA_SPLIT["train"]]
    assert names(c / "test/good") == [f"{n}.JPG" for n in VISA_SPLIT["test"]]
    assert names(c / "test/bad") == [f"{n}.JPG" for n in VISA_SPLIT["anomaly"]]
    assert names(c / "ground_truth/bad") == [f"{n}_mask.png" for n in VISA_SPLIT["anomaly"]]
    for p in (c / "ground_truth/bad").iterdir():
        a = np.asarray(Image.open(p))
        assert a.dtype == np.uint8 and set(np.unique(a).tolist()) == {0, 255} and (a == 255).sum() == 12
    ds = MVTecDataset(path, "candle", "test", input_size=8).validate()
    assert ds.defects == ["bad", "bad", "good", "good"] and len(MVTecDataset(path, "candle", "train")) == 3


def test_magnetic_tile(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "magnetic-tile", mtd_archive(tmp_path), sha=False)
    logs = []
    path = dl.download("magnetic-tile", tmp_path / "data", progress=False, log=lambda *a, **k: logs.append(" ".join(map(str, a))))
    archive_sha = hashlib.sha256(server.files[urlpath(dl.DATASETS["magnetic-tile"].url)]).hexdigest()
    assert any(archive_sha in line and "not verified" in line for line in logs)  # printed, so users can compare copies
    c = path / "magnetic_tile"
    assert names(path) == [dl.MARKER, "magnetic_tile"] and names(c) == ["ground_truth", "test", "train"]
    assert names(c / "train/good") == sorted(f"{n}.jpg" for n in MTD_FREE_TRAIN)
    assert names(c / "test") == ["blowhole", "break", "crack", "fray", "good", "uneven"]
    assert names(c / "test/good") == sorted(f"{n}.jpg" for n in MTD_FREE_TEST)
    for cls, ns in MTD_DEFECTS.items():
        d = cls[3:].lower()
        assert names(c / "test" / d) == sorted(f"{n}.jpg" for n in ns)
        assert names(c / "ground_truth" / d) == sorted(f"{n}_mask.png" for n in ns)
    m = np.asarray(Image.open(c / "ground_truth/blowhole/exp1_num_108719_mask.png"))
    assert m.dtype == np.uint8 and set(np.unique(m).tolist()) == {0, 255} and (m == 255).sum() == 12  # 9 + the 3 pixels at 128
    assert (np.asarray(Image.open(c / "ground_truth/uneven/exp0_num_461_mask.png")) == 0).all()
    assert Image.open(c / "test/crack/exp3_num_45042.jpg").mode == "L"  # the original grayscale JPEG, moved as it is
    assert json.loads((path / dl.MARKER).read_text())["sha256"] == archive_sha
    ds = MVTecDataset(path, "magnetic_tile", "test", input_size=8)
    assert len(ds) == 2 + 7 and int(ds.labels.sum()) == 7
    assert not (tmp_path / "data" / ".downloads").exists()  # the whole dataset is in: the archive was deleted


def urlpath(url):
    return "/" + url.split("/", 3)[3]


def test_mtd_split_reproduces_the_shared_copy():
    assert len(dl.MTD_TRAIN_FILES) == 761
    # first and last lines of DifferNet's mtd_train_filenames.txt
    assert {"exp6_num_34208.jpg", "exp5_num_180393.jpg", "exp3_num_266831.jpg", "exp4_num_346361.jpg"} <= dl.MTD_TRAIN_FILES
    real = _real_mtd()
    if real is None: pytest.skip("the Magnetic Tile data are not under $MSFLOW_DATA on this machine")
    train, test = sorted(os.listdir(real / "train/good")), sorted(os.listdir(real / "test/good"))
    assert (len(train), len(test)) == (761, 191)
    assert dl.mtd_split(train + test) == (train, test)


# ----------------------------------------------------------------------------- failures: one line, nothing complete left
def one_line(e) -> str:
    s = str(e.value)
    assert "\n" not in s
    return s


def test_wrong_checksum(server, monkeypatch, tmp_path):
    url = serve(server, monkeypatch, "visa", visa_archive(tmp_path))
    monkeypatch.setitem(dl.DATASETS, "visa", dataclasses.replace(dl.DATASETS["visa"], sha256="0" * 64))
    root = tmp_path / "data"
    with pytest.raises(MSFlowError) as e: dl.download("visa", root, **QUIET)
    s = one_line(e)
    assert "checksum mismatch" in s and url in s and f"msflow download visa --root {root} --archive FILE" in s
    assert_nothing_complete(root, "visa")
    assert not (root / ".downloads").exists()  # the corrupt download is deleted, not resumed
    # a hand-downloaded file with the wrong checksum: refused, and kept
    bad = tmp_path / "VisA.tar"; bad.write_bytes(b"not visa")
    with pytest.raises(MSFlowError, match="is not the VisA archive: its SHA-256"): dl.download("visa", root, archive=bad, **QUIET)
    assert bad.exists()
    assert_nothing_complete(root, "visa")


def test_truncated_archive(server, monkeypatch, tmp_path):
    data = visa_archive(tmp_path)
    serve(server, monkeypatch, "visa", data[: len(data) * 2 // 3 + 100], sha=False)  # cut inside a member
    root = tmp_path / "data"
    with pytest.raises(MSFlowError) as e: dl.download("visa", root, **QUIET)
    s = one_line(e)
    assert "truncated or corrupt" in s and "--archive FILE" in s and "download was deleted" in s
    assert_nothing_complete(root, "visa")
    assert not (root / ".downloads").exists()
    # a truncated zip given by hand
    cut = tmp_path / "master.zip"; cut.write_bytes(mtd_archive(tmp_path)[:-300])
    with pytest.raises(MSFlowError) as e: dl.download("magnetic-tile", root, archive=cut, **QUIET)
    assert "truncated or corrupt" in one_line(e) and str(cut) in str(e.value)
    assert_nothing_complete(root, "magnetic-tile")


def test_http_404(server, monkeypatch, tmp_path):
    monkeypatch.setitem(dl.DATASETS, "visa", dataclasses.replace(dl.DATASETS["visa"], url=server.base + "/gone.tar", size=0.001))
    with pytest.raises(MSFlowError) as e: dl.download("visa", tmp_path / "data", **QUIET)
    s = one_line(e)
    assert "HTTP 404" in s and server.base + "/gone.tar" in s and f"msflow download visa --root {tmp_path / 'data'} --archive FILE" in s
    assert_nothing_complete(tmp_path / "data", "visa")


def test_refused_connection(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}/mvtec.tar.xz"
    monkeypatch.setitem(dl.DATASETS, "mvtec-ad", dataclasses.replace(dl.DATASETS["mvtec-ad"], size=0.001))  # no disk-space refusal
    with pytest.raises(MSFlowError) as e: dl.download("mvtec-ad", tmp_path / "data", url=url, categories=["bottle"], **QUIET)
    s = one_line(e)
    assert "cannot reach" in s and url in s and "refused" in s.lower()
    assert f"msflow download mvtec-ad --root {tmp_path / 'data'} --category bottle --archive FILE" in s
    assert_nothing_complete(tmp_path / "data", "mvtec-ad")


# ----------------------------------------------------------------------------- resuming
CATS = ["candle", "pcb1"]  # the categories of the miniature VisA


def test_interrupted_download_resumes(server, monkeypatch, tmp_path):
    url = serve(server, monkeypatch, "visa", visa_archive(tmp_path))
    path = urlpath(url)
    clean = dl.download("visa", tmp_path / "clean", categories=CATS, **QUIET)  # uninterrupted
    # the connection breaks half-way: resumed within the same call with a Range request
    server.cut[path] = 1; server.requests.clear()
    again = dl.download("visa", tmp_path / "resumed", categories=CATS, **QUIET)
    assert [r for p, r in server.requests if p == path] == [None, f"bytes={len(server.files[path]) // 2}-"]
    assert tree(again).keys() == tree(clean).keys()
    assert {k: v for k, v in tree(again).items() if k != dl.MARKER} == {k: v for k, v in tree(clean).items() if k != dl.MARKER}
    # across calls: one attempt only, so the first call fails, keeps the partial file, and the next resumes it
    monkeypatch.setattr(dl, "RETRIES", 1)
    server.cut[path] = 1; server.requests.clear()
    root = tmp_path / "next-time"
    with pytest.raises(MSFlowError) as e: dl.download("visa", root, categories=CATS, **QUIET)
    assert "run the same command again to resume" in one_line(e)
    part = root / ".downloads" / "visa.part"
    assert part.stat().st_size == len(server.files[path]) // 2
    assert_nothing_complete(root, "visa")
    dl.download("visa", root, categories=CATS, **QUIET)
    assert server.requests[-1] == (path, f"bytes={len(server.files[path]) // 2}-") and not part.exists()
    assert tree(root / "visa").keys() == tree(clean).keys()


def test_resume_without_range_support_and_complete_part(server, monkeypatch, tmp_path):
    url = serve(server, monkeypatch, "visa", visa_archive(tmp_path))
    path, data = urlpath(url), server.files[urlpath(url)]
    # the server ignores Range: the second attempt starts again from zero, and the result is still right
    server.no_range.add(path); server.cut[path] = 1
    p1 = dl.download("visa", tmp_path / "a", categories=CATS, **QUIET)
    server.no_range.discard(path)
    assert [p for p, _ in server.requests].count(path) >= 2 and len(MVTecDataset(p1, "pcb1", "test")) == 4
    # a partial file that is already complete (interrupted before its rename): 416 from the server, then verified and used
    root = tmp_path / "b"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / "visa.part").write_bytes(data)
    (root / ".downloads" / "visa.part.json").write_text(json.dumps({"url": url}))
    server.requests.clear()
    dl.download("visa", root, categories=CATS, **QUIET)
    assert server.requests == [(path, f"bytes={len(data)}-")] and len(MVTecDataset(root / "visa", "candle", "test")) == 4
    # a partial file of another URL is not continued
    root = tmp_path / "c"
    (root / ".downloads").mkdir(parents=True)
    (root / ".downloads" / "visa.part").write_bytes(b"x" * 100)
    (root / ".downloads" / "visa.part.json").write_text(json.dumps({"url": server.base + "/old-mirror.tar"}))
    server.requests.clear()
    dl.download("visa", root, categories=CATS, **QUIET)
    assert server.requests == [(path, None)]


def test_interruption_during_conversion_leaves_nothing(server, monkeypatch, tmp_path):
    data = mtd_archive(tmp_path)
    serve(server, monkeypatch, "magnetic-tile", data, sha=False)
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setitem(dl.DATASETS, "magnetic-tile", dataclasses.replace(dl.DATASETS["magnetic-tile"], convert=boom))
    root = tmp_path / "data"
    with pytest.raises(KeyboardInterrupt): dl.download("magnetic-tile", root, **QUIET)
    assert_nothing_complete(root, "magnetic-tile")
    assert [p.name for p in root.iterdir()] == [".downloads"]  # only the downloaded archive, reused next time


# ----------------------------------------------------------------------------- unsafe archives
def evil_tar(path: Path, entries) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, v in entries:
            ti = tarfile.TarInfo(name)
            if isinstance(v, tuple): ti.type, ti.linkname = v; tf.addfile(ti)
            else: ti.size = len(v); tf.addfile(ti, io.BytesIO(v))
    return path


@pytest.mark.parametrize("entries, why", [
    ([("candle/ok.txt", b"ok"), ("../evil.txt", b"gotcha")], "'..'"),
    ([("/tmp/msflow-evil.txt", b"gotcha")], "absolute path"),
    ([("candle", (tarfile.SYMTYPE, "/etc")), ("candle/evil.txt", b"gotcha")], "symbolic link to '/etc'"),
    ([("candle/up", (tarfile.SYMTYPE, "../../..")), ("candle/up/evil.txt", b"gotcha")], "outside the target folder"),
    ([("candle/passwd", (tarfile.LNKTYPE, "/etc/passwd"))], "hard link"),
])
def test_unsafe_archive_refused(monkeypatch, tmp_path, entries, why):
    monkeypatch.setitem(dl.DATASETS, "visa", dataclasses.replace(dl.DATASETS["visa"], sha256=None))  # so the checksum lets it through
    arc = evil_tar(tmp_path / "evil.tar", entries)
    root = tmp_path / "deep" / "data"
    with pytest.raises(MSFlowError, match="refusing to unpack") as e: dl.download("visa", root, archive=arc, **QUIET)
    assert why in one_line(e)
    assert not (tmp_path / "deep" / "evil.txt").exists() and not (root / "evil.txt").exists()
    assert not Path("/tmp/msflow-evil.txt").exists()
    assert_nothing_complete(root, "visa")
    assert arc.exists()  # a file given by hand is never deleted


def test_unsafe_zip_refused(tmp_path):
    buf = tmp_path / "evil.zip"
    with zipfile.ZipFile(buf, "w") as zf: zf.writestr("../evil.txt", "gotcha")
    with pytest.raises(dl.ArchiveError, match="'..'"): dl.safe_extract(buf, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# ----------------------------------------------------------------------------- offline, idempotent, foreign folders
def test_archive_without_network_and_rerun(monkeypatch, tmp_path):
    arc = tmp_path / "mvtec_anomaly_detection.tar.xz"; arc.write_bytes(mvtec_archive(tmp_path))
    monkeypatch.setitem(dl.DATASETS, "mvtec-ad", dataclasses.replace(dl.DATASETS["mvtec-ad"], sha256=dl.sha256sum(arc)))
    def no_network(url): raise AssertionError("the network was used")
    monkeypatch.setattr(dl, "_opener", no_network)
    root = tmp_path / "data"
    path = dl.download("mvtec-ad", root, categories=["bottle", "cable"], archive=arc, **QUIET)
    assert names(path) == [dl.MARKER, "bottle", "cable"] and arc.exists() and not (root / ".downloads").exists()
    before = tree(path)
    logs = []
    assert dl.download("mvtec-ad", root, categories=["cable"], archive=arc, progress=False, log=logs.append) == path
    assert "nothing to do" in logs[-1] and tree(path) == before
    # a wrong category, a folder msflow did not write
    with pytest.raises(MSFlowError, match="has no category 'sofa'|has no category sofa"): dl.download("mvtec-ad", root, categories=["sofa"], **QUIET)
    (tmp_path / "mine" / "mvtec-ad" / "bottle").mkdir(parents=True)
    with pytest.raises(MSFlowError, match="was not written by msflow download"):
        dl.download("mvtec-ad", tmp_path / "mine", archive=arc, **QUIET)
    with pytest.raises(MSFlowError, match="does not exist"): dl.download("mvtec-ad", root, archive=tmp_path / "nope.tar.xz", **QUIET)
    with pytest.raises(MSFlowError, match="is a file, not a folder"): dl.download("mvtec-ad", arc, archive=arc, **QUIET)


def test_missing_category_hint():
    assert dl.missing_category_hint("/data/mvtec-ad", "bottle") == "fetch it with: msflow download mvtec-ad --root /data --category bottle"
    assert dl.missing_category_hint("/d", "candle") == "fetch it with: msflow download visa --root /d --category candle, then use --data-root /d/visa"
    assert dl.missing_category_hint("/data", "magnetic_tile").startswith("fetch it with: msflow download magnetic-tile")
    assert dl.missing_category_hint("/data", "widget") == ""


# ----------------------------------------------------------------------------- the command line
def test_cli(server, monkeypatch, tmp_path):
    parser = argparse.ArgumentParser(prog="msflow")
    d = dl.add_download_parser(parser.add_subparsers(dest="command", required=True))
    help_text = d.format_help()
    for opt in ["NAME", "--root", "--category", "--archive", "--url", "--list", "--quiet", "--debug", "examples:", "MSFLOW_DATA"]:
        assert opt in help_text
    out = io.StringIO()
    with redirect_stdout(out): assert dl.run_download(parser.parse_args(["download", "--list"])) == 0
    assert "mvtec-ad" in out.getvalue() and "CC BY 4.0" in out.getvalue()
    serve(server, monkeypatch, "visa", visa_archive(tmp_path))
    a = parser.parse_args(["download", "visa", "--root", str(tmp_path / "data"), "--category", "pcb1", "--quiet"])
    out = io.StringIO()
    with redirect_stdout(out): assert dl.run_download(a) == 0
    path = tmp_path / "data" / "visa"
    assert f"next: msflow train --data-root {path} --category pcb1 --out runs/pcb1" in out.getvalue()
    with pytest.raises(MSFlowError, match="give the dataset"): dl.run_download(parser.parse_args(["download"]))
    with pytest.raises(SystemExit): parser.parse_args(["download", "visa", "--archive", "a", "--url", "b"])
    assert dl.main(["nosuch", "--quiet"]) == 2


def test_python_m_entry_point(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MSFLOW_DATA": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "msflow.download", "visa", "--archive", str(tmp_path / "missing.tar")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("msflow: error: archive")
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- links: refused on every Python
def test_link_chain_cannot_escape_without_the_data_filter(monkeypatch, tmp_path):
    "As on a Python without tarfile's data filter (3.10 before 3.10.12): links that each look inside, chained, must not escape."
    entries = [("x/readme.txt", b"ok"), ("x/l", (tarfile.SYMTYPE, "..")), ("x/l/y", (tarfile.SYMTYPE, "..")),
               ("x/l/y/evil.txt", b"gotcha")]
    arc = evil_tar(tmp_path / "chain.tar", entries)
    # the archive is a real escape: unpacked without any check, evil.txt lands beside the target folder
    naive = tmp_path / "naive" / "dest"; naive.mkdir(parents=True)
    with tarfile.open(arc) as tf: tf.extractall(naive, **({"filter": "fully_trusted"} if hasattr(tarfile, "data_filter") else {}))
    assert (tmp_path / "naive" / "evil.txt").read_bytes() == b"gotcha"
    # msflow's checks alone, with the data filter gone (and no default filter, as on Python 3.14)
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    if hasattr(tarfile, "fully_trusted_filter"):
        monkeypatch.setattr(tarfile.TarFile, "extraction_filter", staticmethod(tarfile.fully_trusted_filter), raising=False)
    calls, real = [], tarfile.TarFile.extract
    def extract(self, member, path="", **kw):
        calls.append((member.name, kw.get("filter"))); return real(self, member, path, **kw)
    monkeypatch.setattr(tarfile.TarFile, "extract", extract)
    out = tmp_path / "safe" / "dest"
    with pytest.raises(dl.ArchiveError) as e: dl.safe_extract(arc, out)
    s = one_line(e)
    assert s.startswith(f"refusing to unpack '{arc}': its entry 'x/l' is a symbolic link to '..'")
    assert calls == [("x/readme.txt", None)]  # the path without the filter was taken, and stopped at the first link
    assert sorted(p.relative_to(tmp_path / "safe").as_posix() for p in (tmp_path / "safe").rglob("*")) == ["dest", "dest/x", "dest/x/readme.txt"]
    # through download: the same one-line error naming the archive and the member; nothing outside, nothing complete
    monkeypatch.setitem(dl.DATASETS, "visa", dataclasses.replace(dl.DATASETS["visa"], sha256=None))
    root = tmp_path / "deep" / "data"
    with pytest.raises(MSFlowError) as e: dl.download("visa", root, archive=arc, **QUIET)
    s = one_line(e)
    assert f"refusing to unpack '{arc}': its entry 'x/l' is a symbolic link" in s and "--archive FILE" in s
    assert [p for p in tmp_path.rglob("evil.txt") if "naive" not in p.parts] == []
    assert_nothing_complete(root, "visa")


def link_zip(path: Path, name="a/up", target="..") -> Path:
    "A zip whose entry `name` is a symbolic link (by its unix attributes) to `target`."
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/ok.txt", "ok")
        zi = zipfile.ZipInfo(name); zi.external_attr = (0o120777 << 16)
        zf.writestr(zi, target)
    return path


@pytest.mark.parametrize("kind", ["inside symlink", "inside hard link", "zip symlink", "zip symlink inside"])
def test_every_link_refused(tmp_path, kind):
    "Links are refused even where they stay inside the folder: the datasets' archives hold none."
    if kind == "inside symlink": arc = evil_tar(tmp_path / "a.tar", [("a/x.txt", b"x"), ("a/link", (tarfile.SYMTYPE, "x.txt"))])
    elif kind == "inside hard link": arc = evil_tar(tmp_path / "a.tar", [("a/x.txt", b"x"), ("a/link", (tarfile.LNKTYPE, "a/x.txt"))])
    elif kind == "zip symlink": arc = link_zip(tmp_path / "a.zip")
    else: arc = link_zip(tmp_path / "a.zip", "a/link", "ok.txt")
    with pytest.raises(dl.ArchiveError) as e: dl.safe_extract(arc, tmp_path / "out")
    s = one_line(e)
    member = "a/up" if kind == "zip symlink" else "a/link"
    assert f"refusing to unpack '{arc}': its entry '{member}' is a" in s and "link" in s and "outside the target folder" in s
    assert not any(p.is_symlink() for p in tmp_path.rglob("*"))


def test_a_link_already_in_the_target_is_not_followed(tmp_path):
    outside, dest = tmp_path / "outside", tmp_path / "dest"
    outside.mkdir(); dest.mkdir()
    (dest / "candle").symlink_to(outside, target_is_directory=True)
    arc = evil_tar(tmp_path / "plain.tar", [("candle/x.txt", b"x")])
    with zipfile.ZipFile(tmp_path / "plain.zip", "w") as zf: zf.writestr("candle/x.txt", "x")
    for a in (arc, tmp_path / "plain.zip"):
        with pytest.raises(dl.ArchiveError, match="'candle/x.txt' would land outside the target folder"): dl.safe_extract(a, dest)
    assert list(outside.iterdir()) == []


def test_download_reads_the_network_settings_of_this_module(monkeypatch, tmp_path):
    "`msflow.download`'s RETRIES, TIMEOUT and opener are the ones `download` uses, as before the fetch machinery moved."
    import urllib.error
    seen = []
    class Opener:
        def open(self, req, timeout): seen.append((req.full_url, timeout)); raise urllib.error.URLError("no route (test)")
    monkeypatch.setattr(dl, "_opener", lambda url: Opener())
    monkeypatch.setattr(dl, "TIMEOUT", 7)
    url = "http://127.0.0.1:9/visa.tar"
    monkeypatch.setitem(dl.DATASETS, "visa", dataclasses.replace(dl.DATASETS["visa"], url=url, size=0.001))
    with pytest.raises(MSFlowError, match="cannot reach"): dl.download("visa", tmp_path / "data", **QUIET)
    assert seen == [(url, 7)]


def test_fetch_and_download_modules_leave_torch_out():
    "`msflow download --list` must start fast: neither module imports torch (or the data sets' module)."
    r = subprocess.run([sys.executable, "-c", "import sys, msflow.download, msflow.fetch; "
                        "print(sorted(m for m in ('torch', 'msflow.data') if m in sys.modules))"],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]


@pytest.mark.parametrize("code, message", [("ENOSPC", "no space left on the disk of"), ("EACCES", "cannot write"), ("EIO", None)])
def test_disk_errors_are_one_line(server, monkeypatch, tmp_path, code, message):
    "A full or read-only disk while unpacking is one line naming the folder; other OS errors are not disguised."
    import errno
    serve(server, monkeypatch, "magnetic-tile", mtd_archive(tmp_path), sha=False)
    def convert(raw, out, categories, log): raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)), str(out))
    monkeypatch.setitem(dl.DATASETS, "magnetic-tile", dataclasses.replace(dl.DATASETS["magnetic-tile"], convert=convert))
    root = tmp_path / "data"
    if message is None:
        with pytest.raises(OSError) as e: dl.download("magnetic-tile", root, **QUIET)
        assert not isinstance(e.value, MSFlowError) and e.value.errno == errno.EIO
    else:
        with pytest.raises(MSFlowError, match=message) as e: dl.download("magnetic-tile", root, **QUIET)
        assert "--root" in one_line(e)
    assert_nothing_complete(root, "magnetic-tile")


def test_not_enough_disk_space_is_refused_before_downloading(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, "visa", visa_archive(tmp_path))
    monkeypatch.setitem(dl.DATASETS, "visa", dataclasses.replace(dl.DATASETS["visa"], size=1e9))  # an exabyte
    server.requests.clear()
    with pytest.raises(MSFlowError, match="not enough disk space in") as e: dl.download("visa", tmp_path / "data", categories=["candle"], **QUIET)
    assert "choose another --root" in one_line(e) and server.requests == []
