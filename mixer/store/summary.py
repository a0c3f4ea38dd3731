"""What `mixer inspect` shows about a store: totals, per input and per shard, length
percentiles, and a few decoded documents.

Everything comes from the manifest and the `.idx` lengths (4 bytes per document, read once),
so inspecting a store reads no tokens unless documents are sampled. An exported mix is a store of
fixed-length blocks, not documents, and is described as such (with the range it holds).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from mixer.store.format import entry_inputs
from mixer.store.reader import TokenStore

PERCENTILES = (0, 10, 50, 90, 99, 100)
LISTED = 20  # rows of the per-input and per-shard tables in text; --json has them all
SAMPLE_CHARS = 200


def _input_name(entry: dict[str, Any]) -> str:
    if files := entry.get("inputs"):
        n = len(files) - 1
        more = f" + {n:,} more file{'s' if n != 1 else ''}" if n else ""
        return str(files[0].get("url", "?")) + more
    source = entry.get("input") or {}
    url = str(source.get("url", "?"))
    if "byte_range" in source:
        a, b = source["byte_range"]
        return f"{url} bytes [{a:,}, {b:,})"
    if "row_groups" in source:
        a, b = source["row_groups"]
        return f"{url} row groups [{a}, {b})"
    return url


def store_summary(store: TokenStore, sample: int = 0, decoder: Any = None) -> dict[str, Any]:
    """The summary as JSON-able data; `sample` documents (spread evenly over the store) are
    decoded with `decoder` (a `tokenizers.Tokenizer`) when one is given, else shown as ids."""
    m = store.manifest
    exported = "mix" in m
    unit = "blocks" if exported else "documents"
    total = max(1, store.num_tokens)
    by_input: dict[str, dict[str, int]] = defaultdict(lambda: {"documents": 0, "tokens": 0})
    shards = []
    for shard in store.shards:
        e = shard.entry
        shards.append(
            {
                "name": shard.name,
                unit: int(e["documents"]),
                "tokens": int(e["tokens"]),
                "share": int(e["tokens"]) / total,
                "backend": e.get("backend"),
                "input": e.get("input"),
                **({"inputs": e["inputs"]} if "inputs" in e else {}),
            }
        )
        if exported:
            continue
        if "inputs" in e:  # a group of files: each counts what it gave
            for f in entry_inputs(e):
                by_input[str(f.get("url", "?"))]["documents"] += int(f.get("documents", 0))
                by_input[str(f.get("url", "?"))]["tokens"] += int(f.get("tokens", 0))
        else:
            url = str((e.get("input") or {}).get("url", "?"))
            by_input[url]["documents"] += int(e["documents"])
            by_input[url]["tokens"] += int(e["tokens"])
    # Copies: shards stay mapped a bounded number at a time (`MappedShards`) only if nothing
    # keeps a view of each; `index` also checks each .idx against its shard on first use.
    lengths = (
        np.concatenate([np.array(s.index.lengths) for s in store.shards])
        if store.shards
        else np.zeros(0, np.int32)
    )
    summary: dict[str, Any] = {
        "store": str(store.root),
        "kind": "exported mix" if exported else "token store",
        unit: store.num_documents,
        "tokens": store.num_tokens,
        "shards": len(store.shards),
        "dtype": store.dtype.name,
        "tokenizer": m["tokenizer"],
        "eos_id": store.eos_id,
        "provenance": store.has_provenance,
        "backends": sorted({str(s["backend"]) for s in shards if s["backend"]}),
        "length_percentiles": (
            {f"p{p}": int(np.percentile(lengths, p, method="nearest")) for p in PERCENTILES}
            if len(lengths)
            else {}
        ),
        "mean_length": float(lengths.mean()) if len(lengths) else 0.0,
    }
    if exported:
        mix = m["mix"]
        summary["mix"] = {
            "start": mix.get("start"),
            "stop": mix.get("stop"),
            "sequence_tokens": mix.get("sequence_tokens"),
            "sources": [s.get("name") for s in mix.get("spec", {}).get("source", [])],
        }
    else:
        summary["inputs"] = [
            {"url": url, **counts, "share": counts["tokens"] / total}
            for url, counts in by_input.items()
        ]
        summary["skipped"] = m.get("skipped", {})
        summary["filtered"] = m.get("filtered", 0)
        summary["job"] = m.get("job", {})
        summary["limit"] = summary["job"].get("limit")  # a trial of the first `limit` documents
    summary["shard_list"] = shards
    if sample:
        summary["sample"] = sample_documents(store, sample, decoder)
    return summary


def sample_documents(store: TokenStore, k: int, decoder: Any = None) -> list[dict[str, Any]]:
    """`k` documents at evenly spaced indices (always the same ones for a store)."""
    n = store.num_documents
    if n == 0 or k <= 0:
        return []
    picks = np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))
    out = []
    for i in picks.tolist():
        ids = store.document(i)
        row: dict[str, Any] = {"index": i, "tokens": len(ids)}
        origin = store.origin(i) if store.has_provenance else None
        if origin is not None:
            row["input"], row["record"] = origin
        if decoder is not None:
            text = decoder.decode(ids.tolist(), skip_special_tokens=False)
            row["text"] = text[:SAMPLE_CHARS] + ("…" if len(text) > SAMPLE_CHARS else "")
        else:
            row["ids"] = ids[:32].tolist()
        out.append(row)
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary as aligned text for a terminal."""
    unit = "blocks" if s["kind"] == "exported mix" else "documents"
    tok = s["tokenizer"]
    p = s["length_percentiles"]
    lines = [
        f"store      {s['store']} ({s['kind']})",
        f"{unit:<10} {s[unit]:,}",
        f"tokens     {s['tokens']:,}",
        f"shards     {s['shards']:,}"
        + (f", backend {', '.join(s['backends'])}" if s["backends"] else ""),
        f"dtype      {s['dtype']}",
        f"tokenizer  {tok.get('name', '?')} (vocab {tok['vocab_size']:,}, "
        f"sha256 {str(tok['sha256'])[:12]}…), eos id {s['eos_id']}",
    ]
    if p:
        lines.append(
            f"length     tokens per {unit[:-1]}: min {p['p0']:,}, p10 {p['p10']:,}, "
            f"median {p['p50']:,}, p90 {p['p90']:,}, p99 {p['p99']:,}, max {p['p100']:,}, "
            f"mean {s['mean_length']:,.1f}"
        )
    if "mix" in s:
        mix = s["mix"]
        lines.append(
            f"mix        blocks [{mix['start']:,}, {mix['stop']:,}) of {mix['sequence_tokens']} "
            f"tokens each, sources {', '.join(map(str, mix['sources']))}"
        )
    else:
        skipped = s["skipped"]
        if s.get("limit") is not None:
            lines.insert(
                1,
                f"trial      only the first {s['limit']:,} documents of its inputs "
                "(mixer tokenize --limit); not the complete store",
            )
        lines.append(
            "skipped    "
            + (", ".join(f"{k} {v:,}" for k, v in skipped.items()) if skipped else "none")
        )
        if s["filtered"]:
            lines.append(f"filtered   {s['filtered']:,} rows by --where")
        lines.append(
            "provenance "
            + ("input file and record per document (mixer explain)" if s["provenance"] else "none")
        )
        lines += ["", f"inputs ({len(s['inputs']):,}):"]
        width = min(60, max((len(r["url"]) for r in s["inputs"]), default=5))
        lines.append(f"  {'input':<{width}}  {'documents':>11}  {'tokens':>13}  {'share':>7}")
        for r in s["inputs"][:LISTED]:
            lines.append(
                f"  {_clip(r['url'], width):<{width}}  {r['documents']:>11,}  {r['tokens']:>13,}"
                f"  {r['share']:>7.2%}"
            )
        lines += _more(len(s["inputs"]), "inputs")
    rows = s["shard_list"]
    lines += ["", f"shards ({len(rows):,}):"]
    name = max((len(r["name"]) for r in rows), default=5)
    lines.append(
        f"  {'shard':<{name}}  {unit:>11}  {'tokens':>13}  {'share':>7}  {'backend':<9}  input"
    )
    for r in rows[:LISTED]:
        where = _input_name(r) if r["input"] or r.get("inputs") else "-"
        lines.append(
            f"  {r['name']:<{name}}  {r[unit]:>11,}  {r['tokens']:>13,}  {r['share']:>7.2%}"
            f"  {str(r['backend'] or '-'):<9}  {_clip(where, 60)}"
        )
    lines += _more(len(rows), "shards")
    for row in s.get("sample", []):
        head = f"{unit[:-1]} {row['index']:,} ({row['tokens']:,} tokens"
        if "input" in row:
            head += f", {row['input']}:{row['record']}"
        lines += ["", head + "):"]
        if "text" in row:
            lines.append("  " + repr(row["text"]))
        else:
            lines.append(f"  ids {row['ids']} … (--tokenizer TOKENIZER decodes them)")
    return "\n".join(lines)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _more(n: int, what: str) -> list[str]:
    return [f"  (+{n - LISTED:,} more {what}; --json lists all)"] if n > LISTED else []
