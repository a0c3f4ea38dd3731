"""Throughput and id-for-id agreement of the tokenizer engines `mixer tokenize` could use.

Why this exists: tokenization, not I/O, bounds the pipeline, and several Rust engines claim to
load a HF tokenizer.json and run 10-40x faster than `tokenizers`. A speed number is worthless
unless the ids are exactly those of `Tokenizer.encode(text, add_special_tokens=False).ids`, so
every run compares every document with the HF reference and a mismatching engine is flagged.

Method:
- The corpus is generated here, deterministically from --seed (an order-2 word Markov chain
  over the Python docs for prose, slices of the Python stdlib for code, synthetic tables, logs
  and chat with URLs, emoji and accents). It depends on the Python version, so its sha256 is
  printed with the results.
- The tokenizer is a byte-level BPE with the Llama-3 split regex trained on that corpus (or
  --tokenizer PATH). Corpus and tokenizer are cached under --cache.
- Each (engine, threads) cell runs in a fresh subprocess, because the engines read their
  thread settings (RAYON_NUM_THREADS, FASTOKENS_BPE_THREADS) once per process.
- A run builds a fresh engine (not timed) and encodes the corpus in batches of --batch
  documents, as `mixer tokenize` does; the table shows the median of --runs runs, and CPU/wall
  shows how many cores the engine really kept busy.

Run: .venv/bin/python benchmarks/bench_engines.py [--mb 24] [--runs 3] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

# The Llama-3 / cl100k split regex: the pre-tokenizer of most current byte-level BPEs.
SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
EOS = "<|endoftext|>"
REFERENCE = "hf.encode_batch"  # Tokenizer.encode(text, add_special_tokens=False).ids, batched
ENGINES = (
    REFERENCE,
    "hf.encode_batch_fast",
    "mixer.HFEncoder",
    "fastokens",
    "gigatoken",
    "kitoken",
    "tiktoken",
    "mixer.FastEncoder",
    "mixer.GigaEncoder",
)


# ---------------------------------------------------------------- corpus


def _prose_model() -> dict[tuple[str, str], list[str]]:
    import pydoc_data.topics

    words = " ".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)).split()
    chain: dict[tuple[str, str], list[str]] = defaultdict(list)
    for a, b, c in zip(words, words[1:], words[2:], strict=False):
        chain[(a, b)].append(c)
    return chain


def _prose(rng: random.Random, chain, keys, words: int) -> str:
    a, b = rng.choice(keys)
    out = [a, b]
    for _ in range(words):
        nxt = chain.get((a, b))
        if not nxt:
            a, b = rng.choice(keys)
            out.append("\n\n")
            continue
        a, b = b, rng.choice(nxt)
        out.append(b)
    return " ".join(out).replace(" \n\n ", "\n\n")


def _code_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in stdlib.glob("*.py") if p.stat().st_size > 4000)


def _table(rng: random.Random) -> str:
    cols = rng.sample(["id", "date", "price", "qty", "ratio", "city", "code", "delta"], 5)
    rows = [
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    cities = ["Zürich", "São Paulo", "Kraków", "Reykjavík", "New York", "Osaka", "Lagos"]
    for _ in range(rng.randint(5, 80)):
        cells = {
            "id": str(rng.randint(1, 10**9)),
            "date": f"20{rng.randint(0, 29):02d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "price": f"${rng.uniform(0, 5000):,.2f}",
            "qty": str(rng.randint(0, 10000)),
            "ratio": f"{rng.random():.4f}",
            "city": rng.choice(cities),
            "code": f"0x{rng.getrandbits(32):08X}",
            "delta": f"{rng.gauss(0, 3):+.1f}%",
        }
        rows.append("| " + " | ".join(cells[c] for c in cols) + " |")
    return "\n".join(rows) + "\n"


def _log(rng: random.Random) -> str:
    levels = ["INFO", "WARN", "ERROR", "DEBUG"]
    lines = []
    for i in range(rng.randint(10, 200)):
        ip = ".".join(str(rng.randint(1, 254)) for _ in range(4))
        lines.append(
            f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T{rng.randint(0, 23):02d}:"
            f"{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z "
            f"{rng.choice(levels):5s} [worker-{rng.randint(0, 63)}] {ip} "
            f'"GET /api/v2/items/{rng.randint(1, 99999)}?page={i}" {rng.choice([200, 404, 500])} '
            f"{rng.randint(10, 99999)}B {rng.uniform(0.1, 900):.1f}ms\r\n"
        )
    return "".join(lines)


def _chat(rng: random.Random, chain, keys) -> str:
    names = ["alice", "bob", "chloé", "dmitri", "ana_maría", "李雷", "zoë"]
    extras = ["🎉", "🚀", "👍🏽", "👩‍💻", "🤔", ":)", "lol", "¯\\_(ツ)_/¯", "naïve café", "ﬁne"]
    turns = []
    for _ in range(rng.randint(3, 30)):
        body = _prose(rng, chain, keys, rng.randint(5, 60)).replace("\n\n", " ")
        if rng.random() < 0.3:
            body += f" https://example.{rng.choice(['com', 'org', 'io'])}/{rng.getrandbits(40):x}"
        if rng.random() < 0.4:
            body += " " + rng.choice(extras)
        turns.append(f"{rng.choice(names)}: {body}")
    return "\n".join(turns)


def generate_corpus(target_bytes: int, seed: int) -> list[str]:
    """Documents of mixed domains totalling at least `target_bytes` of UTF-8."""
    rng = random.Random(seed)
    chain = _prose_model()
    keys = sorted(chain)
    files = _code_files()
    docs: list[str] = []
    size = 0
    while size < target_bytes:
        kind = rng.choices(["prose", "code", "table", "log", "chat"], [50, 25, 8, 7, 10])[0]
        if kind == "prose":
            doc = _prose(rng, chain, keys, int(rng.lognormvariate(6.3, 0.9)))
        elif kind == "code":
            text = rng.choice(files).read_text(encoding="utf-8", errors="replace")
            start = rng.randrange(len(text))
            doc = text[start : start + int(rng.lognormvariate(8.3, 0.8))]
        elif kind == "table":
            doc = _table(rng)
        elif kind == "log":
            doc = _log(rng)
        else:
            doc = _chat(rng, chain, keys)
        if doc.strip():
            docs.append(doc)
            size += len(doc.encode("utf-8"))
    return docs


def train_tokenizer(docs: list[str], vocab_size: int) -> str:
    """tokenizer.json text of a Llama-3-style byte-level BPE trained on `docs`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer=trainer)
    return tokenizer.to_str()


def prepare(args: argparse.Namespace) -> tuple[Path, Path]:
    """Paths of the corpus (a JSON list of documents) and tokenizer, built on first use."""
    python = "{}{}".format(*sys.version_info[:2])
    key = f"mb{args.mb:g}-seed{args.seed}-vocab{args.vocab}-py{python}"
    cache = Path(args.cache) / key
    cache.mkdir(parents=True, exist_ok=True)
    corpus = cache / "corpus.json"
    if not corpus.exists():
        t0 = time.perf_counter()
        docs = generate_corpus(int(args.mb * 1e6), args.seed)
        corpus.write_text(json.dumps(docs))
        print(f"generated corpus in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    tok = cache / "tokenizer.json"
    if args.tokenizer:
        tok = Path(args.tokenizer)
    elif not tok.exists():
        t0 = time.perf_counter()
        docs = json.loads(corpus.read_text())
        tok.write_text(train_tokenizer(docs, args.vocab))
        print(f"trained tokenizer in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return corpus, tok


# ---------------------------------------------------------------- engines


def make_engine(name: str, path: Path, threads: int):
    """A function batch -> list of id sequences (or (lengths, tokens) arrays) for `name`."""
    parallel = threads > 1
    tokenizer_json = path.read_text()
    if name.startswith("hf."):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tokenizer_json)
        method = getattr(tok, name.removeprefix("hf."))
        return lambda batch: [e.ids for e in method(batch, add_special_tokens=False)]
    if name == "mixer.HFEncoder":
        from mixer.ingest.encoders import HFEncoder, load_tokenizer

        return HFEncoder(load_tokenizer(str(path), no_eos=True), threads=threads).encode_batch
    if name == "mixer.FastEncoder":
        from mixer.ingest.encoders import FastEncoder, load_tokenizer

        return FastEncoder(load_tokenizer(str(path), no_eos=True), threads=threads).encode_batch
    if name == "mixer.GigaEncoder":
        from mixer.ingest.encoders import GigaEncoder, load_tokenizer

        return GigaEncoder(load_tokenizer(str(path), no_eos=True), threads=threads).encode_batch
    if name == "fastokens":
        import fastokens

        tok = fastokens.Tokenizer.from_json_str(tokenizer_json)

        def encode(batch):
            ids, offsets = tok.encode_batch_flat(batch, add_special_tokens=False)
            return np.diff(np.frombuffer(offsets, np.uint64)), np.frombuffer(ids, np.uint32)

        return encode
    if name == "gigatoken":
        import gigatoken

        tok = gigatoken.Tokenizer.from_json(tokenizer_json)

        def encode(batch):  # the native result: an awkward array over one flat uint32 buffer
            layout = tok.encode_batch(batch, parallel=parallel).layout
            return np.diff(layout.offsets.data), np.asarray(layout.content.data)

        return encode
    if name == "kitoken":
        import kitoken

        tok = kitoken.Kitoken.from_tokenizers(tokenizer_json.encode())
        # encode_specials=True: HF splits added tokens out of the text even without
        # add_special_tokens, kitoken only when asked.
        return lambda batch: tok.encode_all(batch, True)
    if name == "tiktoken":
        enc = _tiktoken_encoding(tokenizer_json)
        return lambda batch: enc.encode_batch(batch, num_threads=threads, allowed_special="all")
    raise ValueError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}")


def _tiktoken_encoding(tokenizer_json: str):
    """tiktoken cannot read a tokenizer.json: rebuild the ranks of the byte-level BPE here."""
    import tiktoken

    config = json.loads(tokenizer_json)
    pre = config["pre_tokenizer"] or {}
    split = (pre.get("pretokenizers") or [{}])[0]
    if config["normalizer"] or split.get("type") != "Split" or "Regex" not in split["pattern"]:
        raise ValueError("tiktoken can only express a byte-level BPE split by one regex")
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    byte_of = {chr(b): b for b in printable}
    byte_of.update(
        {chr(256 + i): b for i, b in enumerate(sorted(set(range(256)) - set(printable)))}
    )
    added = {t["content"]: t["id"] for t in config["added_tokens"]}
    ranks = {
        bytes(byte_of[c] for c in token): i
        for token, i in config["model"]["vocab"].items()
        if token not in added
    }
    return tiktoken.Encoding(
        "bench", pat_str=split["pattern"]["Regex"], mergeable_ranks=ranks, special_tokens=added
    )


def _to_arrays(result) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(result, tuple):
        return np.asarray(result[0], np.int64), np.asarray(result[1], np.int64)
    lengths = np.fromiter((len(r) for r in result), np.int64, count=len(result))
    tokens = np.fromiter((t for r in result for t in r), np.int64, count=int(lengths.sum()))
    return lengths, tokens


def worker(args: argparse.Namespace) -> None:
    """One (engine, threads) cell: time --runs passes, save the ids of the first for checking."""
    docs = json.loads(Path(args.corpus).read_text())
    batches = [docs[i : i + args.batch] for i in range(0, len(docs), args.batch)]
    walls, cpus, loads = [], [], []
    for run in range(args.runs):
        t0 = time.perf_counter()
        encode = make_engine(args.worker, Path(args.tokenizer), int(args.threads))
        loads.append(time.perf_counter() - t0)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        results = [encode(b) for b in batches]
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        if run == 0:
            arrays = [_to_arrays(r) for r in results]
            np.save(args.out + ".lengths.npy", np.concatenate([a[0] for a in arrays]))
            np.save(
                args.out + ".tokens.npy", np.concatenate([a[1] for a in arrays]).astype(np.uint32)
            )
    print(json.dumps({"walls": walls, "cpus": cpus, "loads": loads}))


# ---------------------------------------------------------------- driver


def run_cell(args, engine: str, threads: int, corpus: Path, tok: Path, out: str) -> dict:
    env = dict(
        os.environ,
        RAYON_NUM_THREADS=str(threads),
        FASTOKENS_BPE_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="true" if threads > 1 else "false",
    )
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--threads",
        str(threads),
        "--runs",
        str(args.runs),
        "--batch",
        str(args.batch),
        "--corpus",
        str(corpus),
        "--tokenizer",
        str(tok),
        "--out",
        out,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = (proc.stderr.strip() or "no output").splitlines()
        return {"error": lines[-1][:120]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def first_mismatch(ref: tuple, got: tuple) -> str | None:
    """'doc N @ token K' of the first document whose ids differ from the reference, or None."""
    ref_ends, got_ends = np.cumsum(ref[0]), np.cumsum(got[0])
    if len(ref[0]) != len(got[0]):
        return f"{len(got[0])} documents instead of {len(ref[0])}"
    if np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1]):
        return None
    for i in range(len(ref[0])):
        a = ref[1][ref_ends[i] - ref[0][i] : ref_ends[i]]
        b = got[1][got_ends[i] - got[0][i] : got_ends[i]]
        if not np.array_equal(a, b):
            n = min(len(a), len(b))
            unequal = np.flatnonzero(a[:n] != b[:n])
            return f"doc {i} @ token {unequal[0] if len(unequal) else n}"
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=24, help="corpus size in MB of UTF-8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=50_000, help="BPE vocabulary to train")
    p.add_argument("--tokenizer", help="benchmark this tokenizer.json instead of training one")
    p.add_argument("--runs", type=int, default=3, help="timed runs per cell (median shown)")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--batch", type=int, default=512, help="documents per encode call")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "mixer-bench-engines"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--corpus", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    corpus, tok = prepare(args)
    docs = json.loads(corpus.read_text())
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    corpus_sha = hashlib.sha256(corpus.read_bytes()).hexdigest()[:12]
    print(
        f"corpus: {len(docs)} docs, {nbytes / 1e6:.1f} MB, sha256 {corpus_sha}; "
        f"tokenizer: {tok} ({hashlib.sha256(tok.read_bytes()).hexdigest()[:12]}); "
        f"{args.runs} runs/cell, batch {args.batch}, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}\n"
    )
    engines = [e for e in args.engines.split(",") if e != REFERENCE]
    thread_counts = [int(t) for t in args.threads.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as out_dir:
        reference = None
        for engine in [REFERENCE, *engines]:
            for threads in thread_counts:
                out = os.path.join(out_dir, "cell")
                cell = run_cell(args, engine, threads, corpus, tok, out)
                if "error" in cell:
                    if reference is None:
                        sys.exit(f"the reference {REFERENCE} failed: {cell['error']}")
                    rows.append((engine, threads, "-", "-", "-", "-", f"failed: {cell['error']}"))
                    print(*rows[-1], file=sys.stderr)
                    continue
                got = (np.load(out + ".lengths.npy"), np.load(out + ".tokens.npy"))
                reference = reference or got
                bad = first_mismatch(reference, got)
                wall = statistics.median(cell["walls"])
                rows.append(
                    (
                        engine,
                        threads,
                        f"{nbytes / 1e6 / wall:.1f}",
                        f"{reference[1].size / 1e6 / wall:.2f}",
                        f"{statistics.median(cell['cpus']) / wall:.2f}",
                        f"{statistics.median(cell['loads']):.2f}",
                        "identical" if bad is None else f"MISMATCH: {bad}",
                    )
                )
                print(*rows[-1], file=sys.stderr)
    print(f"reference: {reference[1].size} tokens from {REFERENCE}\n")
    print("| engine | threads | MB/s | Mtok/s | CPU/wall | load s | ids vs hf |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
