"""Counts written the way people write them: `200B`, `6.8M`, `1.5T`, `32k`, `300e6`, `2_000_000`.

One parser for every place a token count is taken (the CLI's `--total-tokens`, `--domain-tokens`,
`--target-tokens`, a spec's `total_tokens` and phase `tokens`), so they all accept the same
spellings. Suffixes are decimal (k = 1e3, M = 1e6, B or G = 1e9, T = 1e12, case-insensitive) and
the arithmetic is exact (`6.8M` is 6,800,000, not 6,799,999.999...); a count that is not a whole
number is refused rather than rounded.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from mixer.errors import MixerError

SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}
MAX_COUNT = 2**63 - 1  # counts become int64 indices downstream


def parse_count(value: object, what: str = "count") -> int:
    """A non-negative whole count from an int, a float or a string with an optional suffix."""
    if isinstance(value, bool):
        raise MixerError(f"{what}: expected a count such as 200B or 6.8M, got {value!r}")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, (float, str)):
        text = str(value).strip().replace("_", "").replace(",", "")
        scale = 1
        if text and text[-1].lower() in SUFFIXES:
            scale = SUFFIXES[text[-1].lower()]
            text = text[:-1]
        try:
            number = Decimal(text) * scale
        except InvalidOperation:
            raise MixerError(
                f"{what}: expected a count such as 200B, 6.8M, 32k or 300e6, got {value!r}"
            ) from None
    else:
        raise MixerError(f"{what}: expected a count such as 200B or 6.8M, got {value!r}")
    if not number.is_finite() or number < 0 or number != number.to_integral_value():
        raise MixerError(f"{what}: expected a whole number >= 0, got {value!r}")
    if number > MAX_COUNT:
        raise MixerError(f"{what}: {value!r} is more than 2^63 - 1")
    return int(number)


def percent(f: float) -> str:
    """A fraction as a percentage to 4 significant digits: 0.0125 -> 1.25%."""
    return f"{100 * f:.4g}%"


def human_count(n: float) -> str:
    """A count with a suffix `parse_count` reads back (4 digits): 200B, 6.8M, 1.5T, 32K."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:.4g}"
