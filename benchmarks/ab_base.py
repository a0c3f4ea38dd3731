"""Load a module of the package as it was at another git revision, next to the current one, so
an A/B alternates both in one process (separate runs on a loaded machine do not compare)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def module_at(rev: str, path: str, name: str) -> ModuleType:
    """The source of `path` (e.g. "mixer/mix/sampler.py") at `rev`, executed as module `name`
    (registered in sys.modules: dataclasses look their module up)."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader=None))
    sys.modules[name] = module
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)
    return module
