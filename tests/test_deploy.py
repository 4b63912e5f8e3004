"Deploying with ONNX: exported scores and maps equal PyTorch's, metrics equal the run's, and wrong files give one-line errors."
import argparse, contextlib, io, json, os, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import onnx
import pytest
import torch

from msflow import engine
from msflow.core import MSFlowError, get_config
from msflow.demo_data import make_demo_dataset
from msflow.detector import Detector, load_detector
from msflow.deploy import (OUTPUTS, OnnxDetector, add_export_parser, export_onnx, load_onnx, model_hash, onnx_detector,
                           run_export, _probe_images)
from msflow.model import MSFlow

TINY = dict(weights="random", input_size=64, parallel_blocks=(1, 1, 1), epochs=1, batch_size=4, device="cpu")
quiet = lambda *a, **k: None


def assert_same(got: dict, ref: dict, rtol=1e-4):
    "Every output equal to float32 rounding: relative to each value, with an absolute floor relative to the output's largest value."
    for k in OUTPUTS:
        assert got[k].shape == ref[k].shape and got[k].dtype == np.float32, (k, got[k].shape, ref[k].shape, got[k].dtype)
        np.testing.assert_allclose(got[k], ref[k], rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref[k]).max())), err_msg=k)


def assert_same_rows(rows: list[dict], ref: list[dict]):
    "Predictions of the two backends: the same images, scores and raw scores equal to float32 rounding, the same decisions."
    assert [r["path"] for r in rows] == [r["path"] for r in ref]
    for k in ("score", "raw_score"): np.testing.assert_allclose([r[k] for r in rows], [r[k] for r in ref], rtol=1e-4, atol=1e-6, err_msg=k)
    assert [r["anomalous"] for r in rows] == [r["anomalous"] for r in ref]


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), categories=["brick"], n_train=8, n_test=6, size=64)


@pytest.fixture(scope="session")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "brick"
    engine.fit(data, "brick", out, cfg=get_config("lite", **TINY), progress=False, log=quiet)
    return out


@pytest.fixture(scope="session")
def det(run):
    return load_detector(run, "cpu")


@pytest.fixture(scope="session")
def images(det, data):
    "The 6 test images of the run's category as uint8, and 5 generated ones: 11, so batches of 8 leave a padded rest."
    ds = det.image_folder(data / "brick" / "test")
    real = np.stack([(ds[i]["image"] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy() for i in range(len(ds))])
    return np.concatenate([real, _probe_images(det.input_size, 5, seed=3)])


@pytest.fixture(scope="session")
def cli_export(run, tmp_path_factory):
    "`msflow export --run RUN --out FILE --batch 8`, once: (file, printed output)."
    p = argparse.ArgumentParser(prog="msflow"); add_export_parser(p.add_subparsers(dest="command"))
    out = tmp_path_factory.mktemp("cli") / "b8.onnx"
    args = p.parse_args(["export", "--run", str(run), "--out", str(out), "--batch", "8", "--quiet"])
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf): rc = run_export(args)
    assert rc == 0, buf.getvalue()
    return out, buf.getvalue()


@pytest.fixture(scope="session")
def exported(det, cli_export, tmp_path_factory):
    "The export of the run for a batch setting (None: dynamic), made once per setting."
    folder, files = tmp_path_factory.mktemp("onnx"), {8: cli_export[0]}
    def get(batch):
        if batch not in files: files[batch] = export_onnx(det, folder / f"batch-{batch}.onnx", batch=batch)
        return files[batch]
    return get


@pytest.mark.parametrize("batch", [None, 1, 8])
def test_scores_and_maps_equal_pytorch(det, images, exported, batch):
    od = load_onnx(exported(batch), threads=2)
    assert od.batch == batch and od.metadata["batch"] == ("dynamic" if batch is None else str(batch))
    assert_same(od.score_images(images), det.score_images(images))
    assert_same(od.score_images(images[:1]), det.score_images(images[:1]))


def test_file_is_self_contained_with_metadata(det, exported, run):
    f = exported(None)
    assert all(p.suffix == ".onnx" for p in f.parent.iterdir())  # no external-data file, no temporary left behind
    m = onnx.load(str(f))
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert [i.name for i in m.graph.input] == ["images"] and [o.name for o in m.graph.output] == list(OUTPUTS)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["format"] == "msflow-onnx" and meta["format_version"] == "1"
    assert (meta["input_layout"], meta["input_dtype"], meta["resize"], meta["precision"]) == ("NHWC", "uint8", "lanczos", "float32")
    assert json.loads(meta["input_size"]) == [64, 64] and json.loads(meta["outputs"]) == list(OUTPUTS)
    assert float(meta["image_threshold"]) == det.image_threshold and float(meta["pixel_threshold"]) == det.pixel_threshold
    assert json.loads(meta["config"]) == json.loads((run / "config.json").read_text())
    assert meta["model_sha256"] == model_hash(det)
    od = load_onnx(f)
    assert od.config == det.config and od.info == det.info and od.input_size == (64, 64) and od.path == f


def test_evaluate_equals_the_run_metrics(run, data, exported):
    saved = json.loads((run / "metrics.json").read_text())
    m = engine.evaluate(engine.load(exported(None)), data, "brick", progress=False, log=quiet)
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert abs(m[k] - saved[k]) <= 1e-6, (k, m[k], saved[k])


def test_predict_with_either_backend(det, data, exported, tmp_path):
    test_dir = data / "brick" / "test"
    od = engine.load(exported(8), batch_size=3)
    assert isinstance(od, OnnxDetector) and od.config.batch_size == 3
    rows = engine.predict(od, [str(test_dir)], tmp_path / "pred", progress=False, log=quiet)
    ref = det.predict(test_dir, progress=False)
    assert_same_rows(rows, ref)
    assert (tmp_path / "pred" / "scores.csv").is_file()


def test_cli_export_prints_file_size_and_parity(cli_export):
    f, out = cli_export
    assert str(f) in out and "MiB" in out and "batch 8" in out
    assert "max |Δscore|" in out and out.rstrip().endswith("ok")


def test_odd_input_size(tmp_path):
    det = Detector(MSFlow(get_config("lite", **{**TINY, "input_size": (50, 38)})).eval(), 0.5, 10.0)
    x = _probe_images((50, 38), 3, seed=1)
    od = load_onnx(export_onnx(det, tmp_path / "odd.onnx"))
    got = od.score_images(x)
    assert got["mul"].shape == (3, 50, 38)
    assert_same(got, det.score_images(x))


def test_two_heads_export_their_mean(tmp_path):
    "A model with two flow heads exports as one graph whose scores and maps equal PyTorch's (the heads' log-likelihoods averaged)."
    torch.manual_seed(0)
    det = Detector(MSFlow(get_config("lite", **{**TINY, "heads": 2})).eval(), 0.5, 10.0)
    x = _probe_images((64, 64), 3, seed=2)
    od = load_onnx(export_onnx(det, tmp_path / "two.onnx"))
    assert od.config.heads == 2
    assert_same(od.score_images(x), det.score_images(x))


def test_bf16_trained_run_exports_in_float32_and_cache_follows_the_model(data, det, exported, images, tmp_path):
    cache = tmp_path / "cache"; cache.mkdir()
    (cache / "model.onnx").write_bytes(exported(8).read_bytes())  # an export of `det` is in the cache...
    t0 = time.perf_counter(); od = onnx_detector(det, cache)
    assert od.batch == 8 and time.perf_counter() - t0 < 5  # ...so it is loaded, not exported again
    bf, _ = engine.fit(data, "brick", None, cfg=get_config("lite", **TINY, amp="bf16"), progress=False, evaluate_test=False, log=quiet)
    assert bf.config.amp == "bf16" and model_hash(bf) != model_hash(det)
    od_bf = onnx_detector(bf, cache)  # another model: exported again, over the cached file
    assert od_bf.batch is None and od_bf.metadata["trained_amp"] == "bf16" and od_bf.metadata["precision"] == "float32"
    assert od_bf.config.amp == "off" and od_bf.image_threshold == bf.image_threshold
    bf.model.config = bf.config.replace(amp="off")  # PyTorch's float32 path is what the graph holds
    assert_same(od_bf.score_images(images), bf.score_images(images))


def _rewrite(src: Path, dst: Path, **meta):
    "A copy of an exported file with some metadata changed (graph untouched, so its checksum still holds)."
    m = onnx.load(str(src))
    props = {p.key: p.value for p in m.metadata_props}; props.update(meta)
    onnx.helper.set_model_props(m, props); onnx.save(m, str(dst))
    return dst


def test_wrong_files_are_one_line_errors(exported, tmp_path):
    f = exported(None)
    data = f.read_bytes()
    flipped = bytearray(data); flipped[len(data) // 2] ^= 0xFF
    foreign = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])], [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]))
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    cases = {"missing.onnx": "no such ONNX file", "foreign.onnx": "not an msflow ONNX model",
             "half.onnx": "", "head.onnx": "", "empty.onnx": "not an msflow ONNX model", "text.onnx": "not a readable ONNX file",
             "flipped.onnx": "damaged", "old.onnx": "format version 0", "newer.onnx": "newer msflow"}
    (tmp_path / "half.onnx").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.onnx").write_bytes(data[:1000])
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "text.onnx").write_text("definitely not ONNX\n")
    (tmp_path / "flipped.onnx").write_bytes(bytes(flipped))
    _rewrite(f, tmp_path / "old.onnx", format_version="0")
    _rewrite(f, tmp_path / "newer.onnx", format_version="7", msflow_version="9.0")
    for name, why in cases.items():
        with pytest.raises(MSFlowError) as e: load_onnx(tmp_path / name)
        msg = str(e.value)
        assert name in msg and why in msg and "\n" not in msg, (name, msg)
    with pytest.raises(MSFlowError, match="cannot change amp"): load_onnx(f, amp="bf16")
    assert load_onnx(f, amp=None, batch_size=2, num_workers=0, threads=1).config.batch_size == 2  # options not given are ignored
    import onnxruntime as ort
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(MSFlowError, match="no CUDA provider"): load_onnx(f, "cuda")


def test_images_must_fit(exported):
    od = load_onnx(exported(None))
    with pytest.raises(MSFlowError, match="resize them first"): od.score_images(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(MSFlowError, match="uint8"): od.score_images(np.zeros((1, 64, 64, 3), np.float32))


def test_paper_preset_exports_structure_only(tmp_path):
    "WideResNet-50-2 with reflect padding, random weights, at 64x64: it exports and ONNX Runtime matches PyTorch (about 30 s on 2 cores)."
    torch.manual_seed(0)
    det = Detector(MSFlow.from_preset("paper", pretrained=False, input_size=64, device="cpu").eval(), 0.5, 10.0)
    x = _probe_images((64, 64), 2, seed=2)
    od = load_onnx(export_onnx(det, tmp_path / "paper.onnx"))
    assert_same(od.score_images(x), det.score_images(x))
