"""The codec: whole input, byte by byte, trailing bytes, errors; both parsers agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dtm.errors import CommandError, ProtocolError
from dtm.resp import (
    DEFAULT_MAX_BULK, NULL_ARRAY, HiredisParser, Limits, PureParser, Verbatim, encode, parse_int,
    split_args,
)

PARSERS = [PureParser, HiredisParser]


def parse_all(parser_cls: type, data: bytes, chunk: int | None = None, limits: Limits | None = None):
    parser = parser_cls(limits)
    commands = []
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    for piece in pieces:
        parser.feed(piece)
        while (command := parser.next_command()) is not None:
            commands.append(command)
    return commands, parser


def wire(*commands: list[bytes]) -> bytes:
    return b"".join(encode(list(c)) for c in commands)


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_multibulk_whole_and_byte_by_byte(parser_cls: type) -> None:
    data = wire([b"SET", b"k", b"v\r\nx"], [b"GET", b"k"], [b""])
    expected = [[b"SET", b"k", b"v\r\nx"], [b"GET", b"k"], [b""]]
    assert parse_all(parser_cls, data)[0] == expected
    assert parse_all(parser_cls, data, chunk=1)[0] == expected


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_trailing_partial_command_waits(parser_cls: type) -> None:
    data = wire([b"PING"]) + b"*2\r\n$3\r\nGET\r\n$1\r"
    commands, parser = parse_all(parser_cls, data)
    assert commands == [[b"PING"]]
    parser.feed(b"\nk\r\n")
    assert parser.next_command() == [b"GET", b"k"]
    assert parser.next_command() is None


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_inline_commands_with_quotes(parser_cls: type) -> None:
    data = b'SET k "a b\\n" \r\nGET \'k\'\nPING\r\n'
    assert parse_all(parser_cls, data)[0] == [[b"SET", b"k", b"a b\n"], [b"GET", b"k"], [b"PING"]]


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_mixed_inline_and_multibulk(parser_cls: type) -> None:
    data = wire([b"GET", b"a"]) + b"PING\r\n" + wire([b"GET", b"b"])
    assert parse_all(parser_cls, data)[0] == [[b"GET", b"a"], [b"PING"], [b"GET", b"b"]]


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_empty_requests_are_skipped(parser_cls: type) -> None:
    assert parse_all(parser_cls, b"*0\r\n*-1\r\n\r\n" + wire([b"PING"]))[0] == [[b"PING"]]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*1\r\n:5\r\n", "expected '$', got ':'"),
        (b"*1\r\n*1\r\n$1\r\na\r\n", "expected '$', got '*'"),
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*03\r\n", "invalid multibulk length"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*1\r\n$abc\r\n", "invalid bulk length"),
        (b'SET "unterminated\r\n', "unbalanced quotes in request"),
        (b"x" * (64 * 1024 + 1), "too big inline request"),
        (b"*" + b"1" * (64 * 1024 + 1), "too big mbulk count string"),
    ],
)
@pytest.mark.parametrize("parser_cls", PARSERS)
def test_protocol_errors_match_redis(parser_cls: type, data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_all(parser_cls, data)
    assert caught.value.detail == message


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_oversized_bulk_refused_from_its_header(parser_cls: type) -> None:
    with pytest.raises(ProtocolError, match="invalid bulk length"):
        parse_all(parser_cls, b"*1\r\n$1025\r\n", limits=Limits(max_bulk=1024))


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_unauthenticated_limits(parser_cls: type) -> None:
    limits = Limits(authenticated=False)
    with pytest.raises(ProtocolError, match="unauthenticated multibulk length"):
        parse_all(parser_cls, b"*11\r\n", limits=limits)
    with pytest.raises(ProtocolError, match="unauthenticated bulk length"):
        parse_all(parser_cls, b"*1\r\n$16385\r\n", limits=limits)


@pytest.mark.parametrize("parser_cls", PARSERS)
def test_commands_before_an_error_are_delivered(parser_cls: type) -> None:
    parser = parser_cls()
    parser.feed(wire([b"PING"]) + b"*1\r\n:5\r\n")
    assert parser.next_command() == [b"PING"]
    with pytest.raises(ProtocolError):
        parser.next_command()


def test_parse_int_is_strict_like_string2ll() -> None:
    assert parse_int(b"12") == 12
    assert parse_int(b"-7") == -7
    assert parse_int(b"0") == 0
    for bad in (b"", b"+1", b" 1", b"01", b"-0", b"1.0", b"9223372036854775808", b"-"):
        assert parse_int(bad) is None, bad


def test_split_args_escapes() -> None:
    assert split_args(b'a "\\x41\\t" \'it\\\'s\'') == [b"a", b"A\t", b"it's"]
    assert split_args(b'"a"b') is None


def test_encode_resp2_and_resp3() -> None:
    assert encode(None, 2) == b"$-1\r\n"
    assert encode(None, 3) == b"_\r\n"
    assert encode(NULL_ARRAY, 2) == b"*-1\r\n"
    assert encode({b"a": 1}, 2) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode({b"a": 1}, 3) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert encode(True, 3) == b"#t\r\n"
    assert encode(1.5, 3) == b",1.5\r\n"
    assert encode(Verbatim(b"hi"), 3) == b"=6\r\ntxt:hi\r\n"
    assert encode(CommandError("ERR bad\r\nthing"), 2) == b"-ERR bad  thing\r\n"
    assert encode(12345, 2) == b":12345\r\n"


commands_strategy = st.lists(
    st.lists(st.binary(max_size=40), min_size=1, max_size=6), min_size=1, max_size=8
)


@settings(max_examples=150, deadline=None)
@given(commands=commands_strategy, chunk=st.integers(min_value=1, max_value=64))
def test_round_trip_and_parsers_agree(commands: list[list[bytes]], chunk: int) -> None:
    data = wire(*commands)
    pure, _ = parse_all(PureParser, data, chunk)
    fast, _ = parse_all(HiredisParser, data, chunk)
    assert pure == commands
    assert fast == commands


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_parsers_agree_on_arbitrary_bytes(data: bytes) -> None:
    assert outcome(HiredisParser, data) == outcome(PureParser, data)


def outcome(
    parser_cls: type, data: bytes, chunk: int | None = None, limits: Limits | None = None
) -> tuple[list[list[bytes]], str | None]:
    """The commands a parser reads from data fed in chunks, and the protocol error it
    stops at (None if it reaches the end)."""
    parser = parser_cls(limits)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    commands: list[list[bytes]] = []
    try:
        for piece in pieces:
            parser.feed(piece)
            while (command := parser.next_command()) is not None:
                commands.append(command)
    except ProtocolError as exc:
        return commands, exc.detail
    return commands, None


# Pieces a request stream can be made of: honest commands, and every RESP type hiredis
# reads into bytes or lists but Redis refuses in a request, at the top and as elements.
def _bulk(payload: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(payload), payload)


_odd_elements = st.sampled_from([
    b"+simple\r\n", b"(12345\r\n", b"=7\r\ntxt:abc\r\n", b":1\r\n", b",1.5\r\n", b"#t\r\n",
    b"_\r\n", b"$-1\r\n", b"*1\r\n$1\r\na\r\n", b"%1\r\n$1\r\na\r\n$1\r\nb\r\n",
    b"~1\r\n$1\r\na\r\n", b"-ERR x\r\n", b">1\r\n$1\r\na\r\n", b"$3\r\nabcXY",
])
_payloads = st.one_of(st.binary(max_size=24), st.sampled_from([b"+", b"=", b"~", b"|", b"$-1", b"*0\r\n"]))


@st.composite
def _request(draw: st.DrawFn) -> bytes:
    args = [_bulk(p) for p in draw(st.lists(_payloads, min_size=1, max_size=4))]
    if draw(st.booleans()):
        args.insert(draw(st.integers(0, len(args))), draw(_odd_elements))
    head = draw(st.sampled_from([b"*", b"*", b"*", b"~", b"|", b">", b"%"]))
    return head + b"%d\r\n" % len(args) + b"".join(args)


_streams = st.lists(
    st.one_of(_request(), st.sampled_from([b"*0\r\n", b"*-1\r\n", b"PING\r\n", b"$4\r\nPING\r\n"])),
    min_size=1, max_size=6,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(
    data=_streams,
    chunk=st.one_of(st.none(), st.integers(min_value=1, max_value=48)),
    limits=st.sampled_from([(DEFAULT_MAX_BULK, True), (DEFAULT_MAX_BULK, False), (4, True)]),
)
def test_parsers_agree_on_lookalike_types_and_limits(
    data: bytes, chunk: int | None, limits: tuple[int, bool]
) -> None:
    args = (data, chunk, Limits(*limits))
    assert outcome(HiredisParser, *args) == outcome(PureParser, *args)
