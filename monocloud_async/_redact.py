"""Keeping phone numbers and secrets out of reprs, logs and error messages."""

from __future__ import annotations

import re
from typing import Final

# Eight or more digits, optionally led by '+' and broken by spaces, dots or dashes: long enough
# to be a phone number, short runs (status codes, counts, years) are left readable.
_PHONE_LIKE: Final = re.compile(r"\+?\d(?:[\s.\-()]*\d){7,}")
_KEEP: Final = 4


def mask_digits(text: str) -> str:
    """Mask every digit but the last four: ``'+919988776655'`` -> ``'+********6655'``.

    With four digits or fewer nothing is kept: such a short value reveals too much.
    """
    keep = _KEEP if sum(ch.isdigit() for ch in text) > _KEEP else 0
    out: list[str] = []
    for ch in reversed(text):
        if ch.isdigit():
            out.append(ch if keep > 0 else "*")
            keep -= 1
        else:
            out.append(ch)
    return "".join(reversed(out))


def mask_phone(value: object) -> str:
    """``repr`` of a phone number masked to its last four digits (for attrs ``repr=``)."""
    return repr(mask_digits(value)) if isinstance(value, str) else repr(value)


def redact(text: str) -> str:
    """Mask every phone-number-like run of digits in free text to its last four digits."""
    return _PHONE_LIKE.sub(lambda m: mask_digits(m.group(0)), text)


def redact_text(value: object) -> str:
    """``repr`` of ``value`` with phone-number-like digit runs masked."""
    return redact(repr(value))
