"""Argument parsing shared by command families, with Redis's strictness and error texts."""

from __future__ import annotations

import decimal
import re
from fractions import Fraction

from dtm import clock
from dtm.errors import NOT_FLOAT, NOT_INTEGER, err
from dtm.resp import parse_int

LLONG_MAX = 2**63 - 1
LLONG_MIN = -(2**63)


def integer(raw: bytes) -> int:
    if len(raw) > 20:  # no int64 is longer; Python refuses to parse past 4300 digits
        raise NOT_INTEGER
    value = parse_int(raw)
    if value is None:
        raise NOT_INTEGER
    return value


INT_MIN, INT_MAX = -(2**31), 2**31 - 1
INT_RANGE = err(f"value is out of range, value must between {INT_MIN} and {INT_MAX}")


def c_int(raw: bytes) -> int:
    """An argument Redis reads into a C int (getIntFromObjectOrReply): a DB index."""
    value = integer(raw)
    if not INT_MIN <= value <= INT_MAX:
        raise INT_RANGE
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


def expire_when(raw: bytes, unit_ms: int, absolute: bool, command: str) -> int:
    """EXPIRE/PEXPIRE/EXPIREAT/PEXPIREAT's argument as a Unix-ms deadline, which may be
    in the past (Redis's expireGenericCommand): only overflow is refused. C division
    truncates toward zero, so the lowest seconds value is -(LLONG_MAX // 1000)."""
    when = integer(raw)
    invalid = err(f"invalid expire time in '{command}' command")
    if unit_ms != 1:
        limit = LLONG_MAX // unit_ms
        if when > limit or when < -limit:
            raise invalid
        when *= unit_ms
    base = 0 if absolute else clock.now_ms()
    if when > LLONG_MAX - base:
        raise invalid
    return when + base


# ------------------------------------------------------------ long double emulation
# Redis's INCRBYFLOAT computes in C long double (x87: 64-bit mantissa, 15-bit exponent)
# and prints with "%.17Lf" minus trailing zeros. Exact rationals rounded to that format
# reproduce its results digit for digit. Every input is bounded before a rational is
# built: an exponent like 1e-999999999 would otherwise make a billion-digit integer on
# the event loop, where strtold answers at once.

_MANTISSA = 64
_MAX_EXP = 16384  # values at or beyond 2**16384 overflow to infinity
_MIN_EXP = -16382  # below it the format is subnormal: a fixed grid of 2**-16445
# Redis's MAX_LONG_DOUBLE_CHARS: string2ld refuses input this long or longer.
MAX_LONG_DOUBLE_CHARS = 5 * 1024
# Decimal orders of magnitude a long double can hold: about 1.19e4932 down to 3.6e-4951.
_MAX_DECIMAL_TOP = 4932
_MIN_DECIMAL_TOP = -4952

_DECIMAL = re.compile(rb"([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?")
_HEX = re.compile(rb"([+-]?)0[xX]([0-9a-fA-F]*)(?:\.([0-9a-fA-F]*))?(?:[pP]([+-]?\d+))?")
_INFINITY = re.compile(rb"[+-]?inf(inity)?", re.IGNORECASE)


def _exponent(raw: bytes | None) -> int:
    """An exponent's value, clamped: past nine digits it only matters that it is huge."""
    if not raw:
        return 0
    sign = -1 if raw[:1] == b"-" else 1
    digits = raw.lstrip(b"+-").lstrip(b"0")
    if len(digits) > 9:
        return sign * 10**9
    return sign * int(digits or b"0")


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
    shift = _MANTISSA - 1 - max(exponent, _MIN_EXP)
    scaled = value * Fraction(2) ** shift
    rounded = round(scaled)  # round half to even, as the FPU does
    result = Fraction(rounded) / Fraction(2) ** shift
    if result >= Fraction(2) ** _MAX_EXP:
        raise OverflowError
    return sign * result


def _parse_decimal(match: re.Match[bytes]) -> Fraction:
    sign, whole, frac, exp = match.groups()
    frac = frac or b""
    if not whole and not frac:
        raise NOT_FLOAT  # "." or "e5": strtold reads no number
    significant = (whole + frac).lstrip(b"0")
    if not significant:
        return Fraction(0)
    exp10 = _exponent(exp) - len(frac)
    top = len(significant) + exp10 - 1  # the value is in [10**top, 10**(top+1))
    if top > _MAX_DECIMAL_TOP or top < _MIN_DECIMAL_TOP:
        raise NOT_FLOAT  # strtold's ERANGE: overflow, or underflow to zero
    # Decimal converts thousands of digits without Python's int-string limit.
    numerator, denominator = decimal.Decimal(f"{significant.decode()}e{exp10}").as_integer_ratio()
    value = Fraction(numerator, denominator)
    return -value if sign == b"-" else value


def _parse_hex(match: re.Match[bytes]) -> Fraction:
    sign, whole, frac, exp = match.groups()
    frac = frac or b""
    if not whole and not frac:
        raise NOT_FLOAT
    mantissa = int(whole + frac, 16)  # base 16 has no digit limit
    if mantissa == 0:
        return Fraction(0)
    exp2 = _exponent(exp) - 4 * len(frac)
    top = mantissa.bit_length() + exp2 - 1
    if top >= _MAX_EXP or top < _MIN_EXP - _MANTISSA:
        raise NOT_FLOAT
    value = Fraction(mantissa) * Fraction(2) ** exp2
    return -value if sign == b"-" else value


def long_double(raw: bytes) -> Fraction:
    """Parse like Redis's string2ld (strtold): decimal or hex, no spaces, no NaN;
    overflow and underflow to zero are not valid floats; infinity raises OverflowError
    (INCRBYFLOAT's "would produce NaN or Infinity")."""
    if not raw or len(raw) >= MAX_LONG_DOUBLE_CHARS:
        raise NOT_FLOAT
    raw = bytes(raw)
    match = _DECIMAL.fullmatch(raw)
    if match is not None:
        value = _parse_decimal(match)
    elif (match := _HEX.fullmatch(raw)) is not None:
        value = _parse_hex(match)
    elif _INFINITY.fullmatch(raw):
        raise OverflowError
    else:
        raise NOT_FLOAT  # NaN, spaces, trailing garbage
    try:
        rounded = _round_mantissa(value)
    except OverflowError:  # strtold reports ERANGE for finite input beyond the format
        raise NOT_FLOAT from None
    if rounded == 0 and value != 0:
        raise NOT_FLOAT  # ERANGE with a zero result: underflow
    return rounded


def add_long_doubles(a: Fraction, b: Fraction) -> Fraction:
    return _round_mantissa(a + b)


def format_long_double(value: Fraction) -> bytes:
    """'%.17Lf' with trailing zeros (and a bare point) removed, and "-0" printed "0"
    (Redis's ld2string in its human-friendly mode)."""
    digits = round(value * 10**17)
    if digits == 0:
        return b"0"
    sign = "-" if digits < 0 else ""
    whole, frac = divmod(abs(digits), 10**17)
    # A long double's integer part has up to 4933 digits: more than str(int) allows.
    whole_text = str(whole) if whole < 10**4000 else str(decimal.Decimal(whole))
    text = f"{whole_text}.{frac:017d}".rstrip("0").rstrip(".")
    return (sign + text).encode()
