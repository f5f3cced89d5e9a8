"""Argument parsing shared by command families, with Redis's strictness and error texts."""

from __future__ import annotations

import math
from fractions import Fraction

from dtm import clock
from dtm.errors import NOT_FLOAT, NOT_INTEGER, err
from dtm.resp import parse_int

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)


def integer(raw: bytes) -> int:
    value = parse_int(raw)
    if value is None:
        raise NOT_INTEGER
    return value


def expire_deadline(raw: bytes, unit_ms: int, absolute: bool, command: str) -> int:
    """An EX/PX/EXAT/PXAT argument as an absolute Unix-ms deadline (Redis's
    getExpireMillisecondsOrReply): positive, and no overflow."""
    value = integer(raw)
    invalid = err(f"invalid expire time in '{command}' command")
    if value <= 0 or value > LLONG_MAX // unit_ms:
        raise invalid
    value *= unit_ms
    if not absolute:
        value += clock.now_ms()
        if value > LLONG_MAX:
            raise invalid
    return value


# ------------------------------------------------------------ long double emulation
# Redis's INCRBYFLOAT computes in C long double (x87: 64-bit mantissa, 15-bit exponent)
# and prints with "%.17Lf" minus trailing zeros. Exact rationals rounded to that format
# reproduce its results digit for digit.

_MANTISSA = 64
_MAX_EXP = 16384  # values at or beyond 2**16384 overflow to infinity


def _round_mantissa(value: Fraction) -> Fraction:
    if value == 0:
        return value
    sign = -1 if value < 0 else 1
    value = abs(value)
    exponent = value.numerator.bit_length() - value.denominator.bit_length()
    if Fraction(2) ** exponent > value:
        exponent -= 1
    if exponent >= _MAX_EXP:
        raise OverflowError
    shift = _MANTISSA - 1 - max(exponent, -16382)
    scaled = value * Fraction(2) ** shift
    rounded = round(scaled)  # round half to even, as the FPU does
    result = Fraction(rounded) / Fraction(2) ** shift
    if result >= Fraction(2) ** _MAX_EXP:
        raise OverflowError
    return sign * result


def long_double(raw: bytes) -> Fraction:
    """Parse like Redis's string2ld: no spaces, no NaN; infinity counts as overflow."""
    text = raw.decode("ascii", "replace")
    if not text or text != text.strip() or len(raw) > 5 * 1024:
        raise NOT_FLOAT
    try:
        as_float = float(text)
    except ValueError:
        raise NOT_FLOAT from None
    if math.isnan(as_float):
        raise NOT_FLOAT
    if math.isinf(as_float):
        if text.lstrip("+-").lower() in ("inf", "infinity"):
            raise OverflowError
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise NOT_FLOAT from None
    else:
        if text.lower().startswith(("0x", "-0x", "+0x")):
            value = Fraction(as_float)
        else:
            value = Fraction(text)
    try:
        return _round_mantissa(value)
    except OverflowError:  # strtold reports ERANGE for finite input beyond the format
        raise NOT_FLOAT from None


def add_long_doubles(a: Fraction, b: Fraction) -> Fraction:
    return _round_mantissa(a + b)


def format_long_double(value: Fraction) -> bytes:
    """'%.17Lf' with trailing zeros (and a bare point) removed."""
    scaled = value * 10**17
    digits = round(scaled)
    sign = "-" if digits < 0 else ""
    digits = abs(digits)
    whole, frac = divmod(digits, 10**17)
    text = f"{whole}.{frac:017d}".rstrip("0").rstrip(".")
    if text == "0" and value < 0:
        sign = "-"  # printf keeps the sign of negative values that round to zero
    return (sign + text).encode()
