"Shared helpers of the benchmark scripts: environment description, timers, peak memory, JSON output."
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    "The processor's model name, as `lscpu` prints it (falls back to /proc/cpuinfo)."
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name:"): return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError): pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or "unknown"


def loadavg() -> list[float]:
    try: return [round(x, 2) for x in os.getloadavg()]
    except OSError: return []


def environment(device: torch.device) -> dict:
    "Hardware and software the numbers were measured on."
    import timm
    import msflow
    env = dict(cpu=cpu_model(), cpu_cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
               device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
               python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
               msflow=msflow.__version__, loadavg_start=loadavg(),
               time=time.strftime("%Y-%m-%d %H:%M:%S"))
    return env


def sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def timeit(fn, device, reps: int = 3, warmup: int = 1) -> list[float]:
    "Wall-clock seconds of `reps` calls of `fn` after `warmup` untimed calls."
    for _ in range(warmup): fn()
    sync(device)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter(); fn(); sync(device); out.append(time.perf_counter() - t0)
    return out


def median(xs): return float(statistics.median(xs))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory while the block runs: on CUDA the allocator's peak (`max_memory_allocated`);
    on the CPU the process's resident set, sampled every 2 ms, above what it was on entry."""
    def __init__(self, device: torch.device): self.device, self.peak_mib, self.base_mib = device, float("nan"), float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device); torch.cuda.reset_peak_memory_stats(self.device)
            self.base_mib = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            import gc; gc.collect()
            self._base = _rss_bytes(); self._peak = self._base; self._stop = False
            def poll():
                while not self._stop:
                    self._peak = max(self._peak, _rss_bytes()); time.sleep(0.002)
            self._t = threading.Thread(target=poll, daemon=True); self._t.start()
            self.base_mib = self._base / 2**20
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop = True; self._t.join()
            self._peak = max(self._peak, _rss_bytes())
            self.peak_mib = self._peak / 2**20
        return False

    @property
    def delta_mib(self): return self.peak_mib - self.base_mib

    def as_dict(self): return dict(peak_mib=round(self.peak_mib, 1), above_start_mib=round(self.delta_mib, 1),
                                   kind="cuda max_memory_allocated" if self.device.type == "cuda" else "process RSS (sampled)")


def dev_data(category: str, demo: bool = False, strips: bool = False, data_root=None) -> tuple[Path, str]:
    "A development data set: (root, kind); the demo category generated square (demo) or as 160x400 strips, or a folder in MVTec layout."
    if demo or strips:
        import tempfile
        from msflow.demo_data import make_demo_dataset
        if strips: return make_demo_dataset(Path(tempfile.gettempdir()) / "msflow-bench-strips", categories=[category], size=400, height=160), "strips"
        return make_demo_dataset(Path(tempfile.gettempdir()) / "msflow-bench-demo", categories=[category]), "demo"
    return Path(data_root), "mvtec"


def write_result(name: str, obj: dict) -> Path:
    "Write `bench/results/<name>.json` (atomically)."
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=True)); os.replace(tmp, path)
    return path


def table(rows: list[dict], cols: list[str]) -> str:
    "A plain Markdown table of `rows` restricted to `cols`."
    def fmt(v):
        if isinstance(v, float): return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _clean(o):
    "`o` with every non-finite float replaced by None (strict JSON)."
    if isinstance(o, float) and not np.isfinite(o): return None
    if isinstance(o, dict): return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)): return [_clean(v) for v in o]
    return o


def summarise(runs: list[dict], maps, keys, map_key: str = "maps") -> list[dict]:
    "Mean ± std over seeds per variant, schedule and map (the `maps` every run of the group scored), for a table."
    rows = []
    for v, e in dict.fromkeys((r["variant"], r["epochs"]) for r in runs):
        rs = [r for r in runs if r["variant"] == v and r["epochs"] == e]
        for m in [m for m in maps if all(m in r["metrics"] for r in rs)]:
            row = {"variant": v, "epochs": e, map_key: m, "seeds": len(rs)}
            for k in keys:
                xs = [r["metrics"][m][k] for r in rs if r["metrics"][m].get(k) is not None]
                row[k] = f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs):.1f}" if xs else "n/a"
            rows.append(row)
    return rows
