"""Reading configuration files (mix specs, pipelines): TOML, with unknown keys refused."""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from mixer.errors import SpecError


def read_toml(path: str | os.PathLike, what: str = "file") -> dict[str, Any]:
    """Parse a TOML file; a missing or malformed file is a one-line `SpecError`."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SpecError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise SpecError(f"{path}: is a directory, not a {what} (TOML)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: invalid TOML ({e})") from None


def no_unknown_keys(where: str, table: Any, allowed: Collection[str]) -> None:
    """Refuse anything but a table whose keys are all `allowed`: a typo cannot pass silently."""
    if not isinstance(table, Mapping):
        raise SpecError(f"{where} must be a table, got {table!r}")
    for key in table:
        if key not in allowed:
            raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
