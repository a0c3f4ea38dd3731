"""Optional dependencies: one import point per extra, and one hint when one is missing.

The core install tokenizes, mixes and exports. Plots need matplotlib (`[plot]`), the planner's
fit needs scipy (`[plan]`), the torch loaders and `pipelines/train_tiny.py` need torch (installed
separately, so that CPU or CUDA builds stay the user's choice). A missing one is a one-line
`MixerError` naming the command to run, never an ImportError traceback.
"""

from __future__ import annotations

from types import ModuleType

from mixer.errors import MixerError

DISTRIBUTION = "mixer-tokens"  # the name on the package index; `mixer` there is another project


def install_hint(extra: str | None = None, package: str | None = None) -> str:
    """`pip install 'mixer-tokens[extra]'`, or `pip install package` for a separate install."""
    if package is not None:
        return f"pip install {package}"
    return f"pip install '{DISTRIBUTION}[{extra}]'" if extra else f"pip install {DISTRIBUTION}"


def require(module: str, purpose: str, extra: str | None = None, package: str | None = None):
    """Import `module`, or raise one line: `PURPOSE needs MODULE: pip install ...`."""
    try:  # __import__ rather than importlib, so that import hooks (and tests) see every attempt
        return __import__(module, fromlist=["__name__"])
    except ImportError:
        top = module.split(".")[0]
        raise MixerError(f"{purpose} needs {top}: {install_hint(extra, package)}") from None


def matplotlib_figure(purpose: str, extra: str = "plot") -> type:
    """`matplotlib.figure.Figure` (no pyplot, so no display backend is touched)."""
    module: ModuleType = require("matplotlib.figure", purpose, extra)
    return module.Figure
