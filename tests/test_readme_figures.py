"""Every measured figure that README.md quotes is the value its result file in `bench/results/` gives.

Each row of `FIGURES` names a phrase as it stands in README.md (whitespace collapsed), the figure in
it, the result file, the key path(s) of the values and how they become the figure. A figure that
drifts from its file, or a phrase that changes without its row, fails here; so does a new measured
figure (a decimal number or a speed-up like `2×`) quoted without a row.

Not checked, because they come from the MSFlow paper and the official code's logs rather than from
msflow's result files: the "Honest numbers" section's paper averages on MVTec AD (detection 99.7,
localization 98.8, PRO 97.1) and the official log's last-epoch means (99.4 / 98.5).
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = ROOT / "README.md"


def readme_text(drop_sections=("Honest numbers",)) -> str:
    "README.md without code blocks and the named sections, whitespace collapsed."
    text = re.sub(r"```.*?```", " ", README.read_text(), flags=re.S)
    for title in drop_sections:
        text = re.sub(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", " ", text, flags=re.S | re.M)
    return " ".join(text.split())


def select(obj, path):
    "The values at a key path; a dict step keeps the list items whose keys match it (missing keys match None)."
    items = [obj]
    for step in path:
        if isinstance(step, dict):
            items = [x for it in items for x in it if all(x.get(k) == v for k, v in step.items())]
        else:
            items = [it[step] for it in items]
    return items


def mean_std_pct(values):
    "Mean ± standard deviation (over seeds) of fractions, in percent, as the benchmarks page shows them."
    assert len(values) == 3, f"expected three seeds, got {len(values)}"
    return f"{100 * np.mean(values):.1f} ± {100 * np.std(values):.1f}"


def ratio(num, den):
    "Speed-up of one measurement over another: a higher rate over a lower one, or a longer time over a shorter."
    (a,), (b,) = num, den
    return f"{a / b:.1f}"


def mtd(variant, epochs, key, seed=None):
    "Key path of a Magnetic Tile run's last-pass metric (official pairing), or of its training time."
    where = {"variant": variant, "epochs": epochs} | ({"seed": seed} if seed is not None else {})
    return ("runs", where, "metrics", "official", key) if key != "train_seconds" else ("runs", where, key)


def gpu_train8(precision, compiled=None):
    "Key path of the paper preset's training rate at batch 8 on the GPU (images/s)."
    return ("rows", {"preset": "paper", "what": "train from cache", "batch": 8, "precision": precision,
                     "compiled": compiled}, "images_per_s")


def engine_wall(amp, compile, repeat):
    "Key path of the wall time of one whole `fit` on the GPU (seconds)."
    return ("rows", {"preset": "paper", "amp": amp, "compile": compile, "repeat": repeat}, "wall_seconds")


QUALITY, GPU, ENGINE = "quality_data_magnetic_tile.json", "gpu_h200_compile.json", "engine_gpu_h200.json"
FIGURES = [  # (phrase in README.md, figure in it, result file, key paths, how the figure is made from their values)
    ("it trained to the same quality about 1.3× faster on 2 cores", "1.3", QUALITY,
     # the two runs that trained side by side, one core each: float32 (seed 2) over bf16 flows (seed 9826), training time
     [mtd("base", 100, "train_seconds", seed=2), mtd("base_bf16", 100, "train_seconds", seed=9826)], ratio),
    ("with bf16 flows ran 4.5× faster than eager bf16", "4.5", GPU,
     [gpu_train8("bf16", "reduce-overhead"), gpu_train8("bf16")], ratio),
    ("and 2.7× faster than the default, eager float32", "2.7", GPU,
     [gpu_train8("bf16", "reduce-overhead"), gpu_train8("fp32")], ratio),
    ("a whole 10-pass `fit` on demo data in bf16, once compiled, ran 1.4× faster than eager float32", "1.4", ENGINE,
     [engine_wall("off", False, False), engine_wall("bf16", True, True)], ratio),
    ("the image AUROC is 95.5 ± 0.5 %", "95.5 ± 0.5", QUALITY, [mtd("base_noval", 100, "image_auroc")], mean_std_pct),
    ("the pixel AUROC 79.3 ± 0.5 % with the default settings (100 passes)", "79.3 ± 0.5", QUALITY,
     [mtd("base_noval", 100, "pixel_auroc")], mean_std_pct),
    ("97.1 ± 0.1 % and 79.8 ± 0.6 % with `--epochs 150 --amp bf16`", "97.1 ± 0.1", QUALITY,
     [mtd("base_bf16", 150, "image_auroc")], mean_std_pct),
    ("97.1 ± 0.1 % and 79.8 ± 0.6 % with `--epochs 150 --amp bf16`", "79.8 ± 0.6", QUALITY,
     [mtd("base_bf16", 150, "pixel_auroc")], mean_std_pct),
]


@pytest.mark.parametrize("phrase,figure,file,paths,how", FIGURES, ids=[f"{f[1]} ({f[2]})" for f in FIGURES])
def test_figure_matches_its_result_file(phrase, figure, file, paths, how):
    assert phrase in readme_text(), f"README.md no longer says: {phrase!r}"
    assert figure in phrase
    data = json.loads((RESULTS / file).read_text())
    assert how(*[select(data, p) for p in paths]) == figure


def test_every_measured_figure_has_a_row():
    "Decimal numbers and speed-ups (`2.7×`) in README.md, outside code and the paper's numbers, are all in FIGURES."
    covered = {n for _, figure, *_ in FIGURES for n in re.findall(r"\d+\.\d+", figure)}
    found = re.findall(r"(\d+\.\d+)|(\d+(?:\.\d+)?)×(?!\d)", readme_text())
    quoted = {a or b for a, b in found}
    assert quoted and quoted <= covered, f"figures without a result file: {sorted(quoted - covered)}"


def test_select_and_formats():
    rows = {"rows": [{"a": 1, "v": 2.0}, {"a": 2, "v": 3.0}, {"a": 1, "b": 5, "v": 4.0}]}
    assert select(rows, ("rows", {"a": 1}, "v")) == [2.0, 4.0]
    assert select(rows, ("rows", {"a": 1, "b": None}, "v")) == [2.0]
    assert mean_std_pct([0.9, 0.95, 1.0]) == "95.0 ± 4.1"
    assert ratio([6.0], [4.0]) == "1.5"
    with pytest.raises(ValueError):
        ratio([1.0, 2.0], [1.0])
