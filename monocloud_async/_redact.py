"""Keeping phone numbers and secrets out of reprs, logs and error messages."""

from __future__ import annotations

import re

# Eight or more digits, optionally led by '+' and broken by spaces, dots or dashes: long enough
# to be a phone number, short runs (status codes, counts, years) are left readable.
_PHONE_LIKE = re.compile(r"\+?\d(?:[\s.\-()]*\d){7,}")


def mask_phone(value: object) -> str:
    """Mask a phone number to its last four digits: ``'+919988776655'`` -> ``'+*******6655'``."""
    if not isinstance(value, str):
        return repr(value)
    digits = sum(ch.isdigit() for ch in value)
    if digits <= 4:  # noqa: PLR2004 - four digits is the documented masking boundary
        return repr("*" * len(value))
    return repr(_mask(value))


def _mask(text: str) -> str:
    keep = 4
    out = []
    for ch in reversed(text):
        if ch.isdigit() and keep > 0:
            keep -= 1
            out.append(ch)
        elif ch.isdigit():
            out.append("*")
        else:
            out.append(ch)
    return "".join(reversed(out))


def redact(text: str) -> str:
    """Mask every phone-number-like run of digits in free text to its last four digits."""
    return _PHONE_LIKE.sub(lambda m: _mask(m.group(0)), text)


def redact_text(value: object) -> str:
    """``repr`` of ``value`` with phone-number-like digit runs masked."""
    return redact(repr(value))
