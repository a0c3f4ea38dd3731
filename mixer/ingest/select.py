"""Which files under an input root are read: `--include`/`--exclude` globs and the split rule.

A dataset downloaded whole (`huggingface-cli download --repo-type dataset ... --local-dir ROOT`)
holds more than a training corpus: validation and test splits, samples that repeat documents
of the full set, subsets a recipe does not want. Two rules decide what is read, both on the
path of a file relative to the input root it was found under (`/`-separated):

- **Patterns.** `include` globs (any may match; none given means every file) and `exclude`
  globs (none may match). `*` and `?` stay within one path component, `**` spans any number of
  them (`**/` also matches none), `[abc]`/`[!abc]` are character classes. A pattern without
  `/` is matched against the file name at any depth (`*.md`), one with `/` against the whole
  relative path (`data/CC-MAIN-*/*.parquet`).
- **Held-out splits are not read by default.** A file is skipped when a folder on its relative
  path is named `val`, `valid`, `validation`, `dev`, `test` or `sample` (any case), or when its
  own name starts with `val`, `valid`, `validation`, `dev` or `test` followed by `-`, `_` or `.`
  (Hugging Face's `test-00000-of-00001.parquet`). It is read when that name is written in the
  input path itself (`ROOT/validation`, `'ROOT/*/test/*.zst'`), in the include pattern that
  selected it, or when `all_splits` is set. So pointing at a dataset's root trains on its
  training split, and reading a held-out split is always something someone wrote down.

Files named explicitly (not found by walking a folder or a glob) are always read.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from mixer.errors import MixerError

SPLIT_DIRS = frozenset({"val", "valid", "validation", "dev", "test", "sample"})
"""Folder names of held-out splits and samples, skipped unless asked for (compared lowercased)."""


_SPLIT_FILE = re.compile(r"^(val|valid|validation|dev|test)[-_.]", re.IGNORECASE)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A regular expression matching exactly the relative paths `pattern` matches."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end]
                negate = body.startswith("!")
                body = body[1:] if negate else body
                body = body.replace("\\", "\\\\").replace("^", "\\^")
                out.append(f"[{'^' if negate else ''}{body}]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


@dataclass(frozen=True)
class Pattern:
    """One include or exclude glob, relative to an input root."""

    text: str
    regex: re.Pattern[str] = field(compare=False, repr=False)
    basename_only: bool = field(compare=False, repr=False)

    @classmethod
    def parse(cls, text: str, param: str) -> Pattern:
        """`text` given as `param` (include or exclude), named in the errors."""
        if not isinstance(text, str) or not text.strip():
            raise MixerError(
                f"{param}={text!r}: a pattern must be a non-empty string", params=(param,)
            )
        if text.startswith("/") or text.startswith("./") or "/../" in f"/{text}/":
            raise MixerError(
                f"{param}={text!r}: patterns are relative to each input root, e.g. 'train/*.zst'",
                params=(param,),
            )
        return cls(text, compile_glob(text.rstrip("/")), "/" not in text.rstrip("/"))

    def matches(self, rel: str) -> bool:
        target = rel.rsplit("/", 1)[-1] if self.basename_only else rel
        return self.regex.match(target) is not None

    def names(self) -> set[str]:
        """Path components written literally in the pattern (for the split rule)."""
        return {p.lower() for p in self.text.split("/") if p and not any(c in p for c in "*?[")}


@dataclass
class SelectionReport:
    """What the rules left out, filled in by `expand_inputs`, for the summary line."""

    held_out: Counter = field(default_factory=Counter)  # split name -> files skipped
    excluded: int = 0  # files an exclude pattern or no include pattern took out
    matched: Counter = field(default_factory=Counter)  # include pattern -> files it selected

    def held_out_line(self) -> str | None:
        if not self.held_out:
            return None
        n = sum(self.held_out.values())
        names = ", ".join(f"{name}/" for name in sorted(self.held_out))
        return (
            f"skipped {n:,} file{'s' if n != 1 else ''} of held-out splits or samples ({names}); "
            "name the folder in the input or an include= pattern, or pass all_splits=True, to read "
            "them"
        )


@dataclass(frozen=True)
class Selection:
    """The include/exclude patterns and split rule for one job (see the module docstring)."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    all_splits: bool = False
    _include: tuple[Pattern, ...] = field(default=(), compare=False, repr=False)
    _exclude: tuple[Pattern, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise MixerError(
                    f"{name}={value!r}: must be a list of glob patterns", params=(name,)
                )
        object.__setattr__(
            self, "_include", tuple(Pattern.parse(p, "include") for p in self.include)
        )
        object.__setattr__(
            self, "_exclude", tuple(Pattern.parse(p, "exclude") for p in self.exclude)
        )

    @property
    def active(self) -> bool:
        """Whether any pattern was given (else only the split rule applies)."""
        return bool(self._include or self._exclude)

    def choose(self, rel: str, root_names: set[str], report: SelectionReport) -> bool:
        """Whether the file at `rel` (relative to its input root) is read."""
        chosen: Pattern | None = None
        if self._include:
            chosen = next((p for p in self._include if p.matches(rel)), None)
            if chosen is None:
                report.excluded += 1
                return False
        if any(p.matches(rel) for p in self._exclude):
            report.excluded += 1
            return False
        split = None if self.all_splits else held_out_split(rel)
        if split is not None:
            allowed = root_names | (chosen.names() if chosen else set())
            if split.lower() not in allowed:
                report.held_out[split.lower()] += 1
                return False
        if chosen is not None:
            report.matched[chosen.text] += 1
        return True

    def check_includes(self, report: SelectionReport, roots: list[str], sample: list[str]) -> None:
        """Every include pattern must select some file: a recipe's pattern that matches nothing
        means the download is not the layout it expects."""
        for pattern in self._include:
            if not report.matched[pattern.text]:
                seen = (
                    f"; they hold e.g. {', '.join(repr(s) for s in sample[:3])}" if sample else ""
                )
                raise MixerError(
                    f"include={pattern.text!r} matches no file under {', '.join(roots)}{seen}",
                    params=("include",),
                )


def held_out_split(rel: str) -> str | None:
    """The held-out split name that `rel` (a path relative to an input root) lies in, if any."""
    parts = rel.split("/")
    for part in parts[:-1]:
        if part.lower() in SPLIT_DIRS:
            return part
    match = _SPLIT_FILE.match(parts[-1])
    return match.group(1) if match else None


def literal_names(spec: str) -> set[str]:
    """Path components written literally in an input path or glob, lowercased."""
    return {p.lower() for p in spec.replace("\\", "/").split("/") if p}
