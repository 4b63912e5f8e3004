__version__ = "0.1.0"

def __getattr__(name):
    "`msflow.load` without importing torch at `import msflow`: the engine is imported on first use."
    if name == "load":
        from .engine import load
        return load
    raise AttributeError(f"module 'msflow' has no attribute {name!r}")
