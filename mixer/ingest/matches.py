"""No silent empties: what each input's records looked like, and the errors an empty match gives.

A `--where` written from guessed values (`src in ['abc', 'kern']` when the real values are
something else), a text field the records do not have, or a corpus whose every record is
skipped would otherwise produce a store with nothing, or nothing of one input, in it and a
zero exit code. So every task counts, in a `Probe`, the records it saw, how many each filter
passed, what values each filter's field held (the most common ones, bounded) and how many
records lacked the text field; the driver merges the probes of each input (a file, folder or
glob as given) once all tasks are done and refuses to write the store when

- a `--where` matches no record of an input: the error names the filter, the input, and the
  field's most common values (or, when the field is missing in every record, the keys the
  records have);
- the text field is missing or null in every record of an input;
- an input yields no document at all (every record skipped, or no records);
- the store would hold no document.

A partial match is fine: the rows filtered out are counted in the manifest as before.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mixer.errors import MixerError
from mixer.ingest.where import MISSING, RowFilter, get_field

MAX_VALUES = 256
"""Distinct values counted per filter field and task; further new values are only tallied."""


SHOWN_VALUES = 5


def value_label(value: Any, width: int = 40) -> str:
    """A short `repr` of a field value, for messages and `mixer peek`."""
    if isinstance(value, str) and len(value) > width:
        return repr(value[:width]) + "…"
    text = repr(value)
    return text if len(text) <= width + 2 else text[: width + 2] + "…"


@dataclass
class FieldProbe:
    """What one filter saw: records with its field present, records it passed, their values."""

    present: int = 0
    passed: int = 0
    values: dict[str, int] = field(default_factory=dict)
    other: int = 0  # records whose value was not counted because MAX_VALUES were already held

    def add(self, value: Any) -> None:
        label = value_label(value)
        if label in self.values:
            self.values[label] += 1
        elif len(self.values) < MAX_VALUES:
            self.values[label] = 1
        else:
            self.other += 1

    def merge(self, other: FieldProbe) -> None:
        self.present += other.present
        self.passed += other.passed
        self.other += other.other
        for label, count in other.values.items():
            if label in self.values or len(self.values) < MAX_VALUES:
                self.values[label] = self.values.get(label, 0) + count
            else:
                self.other += count

    def describe(self) -> str:
        common = Counter(self.values).most_common(SHOWN_VALUES)
        shown = ", ".join(f"{label} ({count:,})" for label, count in common)
        distinct = f"{len(self.values):,}" + ("+" if self.other else "")
        return f"its most common values are {shown} ({distinct} distinct)"


@dataclass
class Probe:
    """Per task: records seen, records every filter passed, each filter's field, text misses."""

    records: int = 0
    matched: int = 0
    text_missing: int = 0
    keys: list[str] = field(default_factory=list)  # keys of the first record
    fields: list[FieldProbe] = field(default_factory=list)

    def admit(self, record: dict, filters: tuple[RowFilter, ...]) -> bool:
        """Count one record; whether it passes every filter."""
        self.records += 1
        if not self.keys:
            self.keys = sorted(map(str, record))[:20]
        if not filters:
            self.matched += 1
            return True
        if not self.fields:
            self.fields = [FieldProbe() for _ in filters]
        ok = True
        for f, seen in zip(filters, self.fields, strict=True):
            actual = get_field(record, f.field)
            if actual is MISSING:
                ok = False
                continue
            seen.present += 1
            seen.add(actual)
            if f.test(actual):
                seen.passed += 1
            else:
                ok = False
        if ok:
            self.matched += 1
        return ok

    def to_json(self) -> dict:
        return {
            "records": self.records,
            "matched": self.matched,
            "text_missing": self.text_missing,
            "keys": self.keys,
            "fields": [
                {"present": f.present, "passed": f.passed, "values": f.values, "other": f.other}
                for f in self.fields
            ],
        }

    @classmethod
    def from_json(cls, data: dict) -> Probe:
        return cls(
            records=data["records"],
            matched=data["matched"],
            text_missing=data["text_missing"],
            keys=list(data["keys"]),
            fields=[FieldProbe(**f) for f in data["fields"]],
        )

    def merge(self, other: Probe) -> None:
        self.records += other.records
        self.matched += other.matched
        self.text_missing += other.text_missing
        self.keys = self.keys or other.keys
        if not self.fields:
            self.fields = [FieldProbe() for _ in other.fields]
        for mine, theirs in zip(self.fields, other.fields, strict=False):
            mine.merge(theirs)


def check_inputs(
    shards: list[tuple[str, dict]], where: tuple[RowFilter, ...], text_field: str
) -> None:
    """Refuse an input that contributes nothing, or a store with no document.

    `shards` pairs each shard's manifest entry (with its `probe`) with the input it came from.
    Entries written before probes existed carry none; their input is then only checked by its
    document count.
    """
    by_input: dict[str, list[dict]] = {}
    for spec, entry in shards:
        by_input.setdefault(spec, []).append(entry)
    for spec, entries in by_input.items():
        documents = sum(e["documents"] for e in entries)
        if documents:
            continue
        probes = [e.get("probe") for e in entries]
        if all(p is not None for p in probes):
            probe = Probe()
            for p in probes:
                probe.merge(Probe.from_json(p))
            _explain(spec, probe, where, text_field)
        skipped: Counter[str] = Counter()
        for e in entries:
            skipped.update(e.get("skipped", {}))
        if skipped:
            reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(skipped.items()))
            raise MixerError(
                f"input {spec!r} yields no document: every record was skipped ({reasons})"
            )
        raise MixerError(f"input {spec!r} yields no document: its files hold no records")
    if shards and not sum(e["documents"] for _, e in shards):
        raise MixerError("the store would hold no document; nothing was written")


def _explain(spec: str, probe: Probe, where: tuple[RowFilter, ...], text_field: str) -> None:
    """Raise the most specific reason an input with records yielded no document."""
    keys = ", ".join(probe.keys) if probe.keys else "none"
    if probe.records and where and not probe.matched:
        for f, seen in zip(where, probe.fields, strict=False):
            if not seen.present:
                raise MixerError(
                    f"where={f.describe()!r}: field {f.field!r} is missing in every one of the "
                    f"{probe.records:,} records of input {spec!r} (records have keys {keys})",
                    params=("where",),
                    look=(spec, None),
                )
            if not seen.passed:
                raise MixerError(
                    f"where={f.describe()!r} matches none of the {probe.records:,} records of "
                    f"input {spec!r}: field {f.field!r} is present in {seen.present:,}, "
                    f"{seen.describe()}",
                    params=("where",),
                    look=(spec, f.field),
                )
        each = ", ".join(
            f"{f.describe()!r} {seen.passed:,}"
            for f, seen in zip(where, probe.fields, strict=False)
        )
        raise MixerError(
            f"the where= filters together match none of the {probe.records:,} records of input "
            f"{spec!r} (each alone matches: {each})",
            params=("where",),
        )
    if probe.matched and probe.text_missing >= probe.matched:
        raise MixerError(
            f"text field {text_field!r} is missing or null in every one of the "
            f"{probe.matched:,} records of input {spec!r} (records have keys {keys}); "
            "choose it with text_field=",
            params=("text_field",),
            look=(spec, None),
        )
