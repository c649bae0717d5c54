"""argparse value types that refuse out-of-range numbers with the usual one-line argparse error (exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _bounded(kind: type, low: float, inclusive: bool) -> Callable[[str], float]:
    what = f"{'>=' if inclusive else '>'} {low:g}"

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {'an integer' if kind is int else 'a number'} "
                                             f"{what}") from None
        if value < low or (value == low and not inclusive) or value != value:  # value != value: NaN
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value

    parse.__name__ = f"{kind.__name__} {what}"  # argparse names the type in some messages
    return parse


def int_at_least(low: int) -> Callable[[str], int]:
    """An integer option that must be >= `low`."""
    return _bounded(int, low, True)


positive_int = _bounded(int, 1, True)
non_negative_int = _bounded(int, 0, True)
positive_float = _bounded(float, 0, False)
non_negative_float = _bounded(float, 0, True)
