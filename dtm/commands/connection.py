"""Connection commands: PING, ECHO, QUIT, RESET, HELLO, AUTH, SELECT, CLIENT …"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any

from dtm import REDIS_COMPAT_VERSION
from dtm.commands.args import c_int
from dtm.commands.table import c_text, command, container, subcommand_error
from dtm.errors import DB_RANGE, SYNTAX, CommandError, err
from dtm.resp import Verbatim, parse_int

if TYPE_CHECKING:
    from dtm.session import Session

GROUP = "connection"
WRONGPASS = CommandError("WRONGPASS invalid username-password pair or user is disabled.")


@command("ping", -1, "fast", group=GROUP, summary="Ping the server")
def ping(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 2:
        raise err("wrong number of arguments for 'ping' command")
    return argv[1] if len(argv) == 2 else "PONG"


@command("echo", 2, "fast", group=GROUP, summary="Echo the message")
def echo(s: Session, argv: list[bytes]) -> Any:
    return argv[1]


@command("quit", -1, "noscript loading stale fast no_auth allow_busy", group=GROUP, summary="Close the connection")
def quit_(s: Session, argv: list[bytes]) -> Any:
    s.close_after_reply = True
    return "OK"


@command("reset", 1, "noscript loading stale fast no_auth allow_busy", group=GROUP, summary="Reset the connection", since="6.2.0")
def reset(s: Session, argv: list[bytes]) -> Any:
    s.leave_modes()
    s.discard_multi()
    s.unwatch()
    s.select(0)
    s.proto = 2
    s.name = b""
    if s.server.config.requirepass:
        s.authenticated = False
        s.limits.authenticated = False
    return "RESET"


def _check_password(s: Session, username: bytes, password: bytes) -> None:
    required = s.server.config.requirepass
    if username != b"default":
        raise WRONGPASS
    if required and not hmac.compare_digest(password, required.encode()):
        raise WRONGPASS


@command("auth", -2, "noscript loading stale fast no_auth allow_busy", group=GROUP, summary="Authenticate the connection")
def auth(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 3:
        raise SYNTAX
    if len(argv) == 2:
        if not s.server.config.requirepass:
            raise err(
                "AUTH <password> called without any password configured for the default "
                "user. Are you sure your configuration is correct?"
            )
        username, password = b"default", argv[1]
    else:
        username, password = argv[1], argv[2]
    _check_password(s, username, password)
    s.authenticate()
    return "OK"


@command("hello", -1, "noscript loading stale fast no_auth allow_busy", group=GROUP, summary="Handshake: protocol, auth, name", since="6.0.0")
def hello(s: Session, argv: list[bytes]) -> Any:
    proto = s.proto
    credentials: tuple[bytes, bytes] | None = None
    name: bytes | None = None
    if len(argv) > 1:
        version = parse_int(argv[1])
        if version is None:
            raise err("Protocol version is not an integer or out of range")
        if version not in (2, 3):
            raise CommandError("NOPROTO unsupported protocol version")
        proto = version
        i = 2
        while i < len(argv):
            option = argv[i].lower()
            if option == b"auth" and i + 2 < len(argv):
                credentials = (argv[i + 1], argv[i + 2])
                i += 3
            elif option == b"setname" and i + 1 < len(argv):
                name = argv[i + 1]
                i += 2
            else:
                raise err(f"Syntax error in HELLO option '{c_text(argv[i])}'")
    if credentials is not None:
        _check_password(s, *credentials)
        s.authenticate()
    elif not s.authenticated:
        raise CommandError(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise "
            "the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the "
            "client and select the RESP protocol version at the same time"
        )
    if name is not None:
        _validate_name(name)
        s.name = name
    s.proto = proto
    return {
        b"server": b"redis",
        b"version": REDIS_COMPAT_VERSION.encode(),
        b"proto": proto,
        b"id": s.id,
        b"mode": b"standalone",
        b"role": b"master",
        b"modules": [],
    }


@command("select", 2, "loading stale fast", group=GROUP, summary="Change the selected database")
def select(s: Session, argv: list[bytes]) -> Any:
    index = c_int(argv[1])
    if not 0 <= index < s.server.keyspace.databases:
        raise DB_RANGE
    s.select(index)
    return "OK"


# -------------------------------------------------------------------- CLIENT

CLIENT = container("client", group=GROUP, summary="Client connection commands", since="2.4.0")


def _validate_name(name: bytes) -> None:
    if any(c < 33 or c > 126 for c in name):
        raise err("Client names cannot contain spaces, newlines or special characters.")


@command("id", 2, "noscript loading stale", group=GROUP, summary="This connection's id", parent=CLIENT, since="5.0.0")
def client_id(s: Session, argv: list[bytes]) -> Any:
    return s.id


@command("setname", 3, "noscript loading stale", group=GROUP, summary="Name this connection", parent=CLIENT, since="2.6.9")
def client_setname(s: Session, argv: list[bytes]) -> Any:
    _validate_name(argv[2])
    s.name = argv[2]
    return "OK"


@command("getname", 2, "noscript loading stale", group=GROUP, summary="This connection's name", parent=CLIENT, since="2.6.9")
def client_getname(s: Session, argv: list[bytes]) -> Any:
    return s.name or None


@command("setinfo", 4, "noscript loading stale", group=GROUP, summary="Record the client library's name and version", parent=CLIENT, since="7.2.0")
def client_setinfo(s: Session, argv: list[bytes]) -> Any:
    attribute, value = argv[2].lower(), argv[3]
    if attribute not in (b"lib-name", b"lib-ver"):
        raise err(f"Unrecognized option '{c_text(argv[2])}'")
    if any(c < 33 or c > 126 for c in value):
        raise err(
            f"{attribute.decode()} cannot contain spaces, newlines or special characters."
        )
    if attribute == b"lib-name":
        s.lib_name = value
    else:
        s.lib_ver = value
    return "OK"


@command("list", -2, "admin noscript loading stale", group=GROUP, summary="List the connections", parent=CLIENT, since="2.4.0")
def client_list(s: Session, argv: list[bytes]) -> Any:
    sessions = list(s.server.clients.values())
    if len(argv) > 2:
        option = argv[2].lower()
        if option == b"id" and len(argv) > 3:
            wanted = set()
            for raw in argv[3:]:
                value = parse_int(raw)
                if value is None:  # Redis takes any int64: one no client has matches none
                    raise err("Invalid client ID")
                wanted.add(value)
            sessions = [c for c in sessions if c.id in wanted]
        elif option == b"type" and len(argv) == 4:
            kind = argv[3].lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise err(f"Unknown client type '{c_text(argv[3])}'")
            if kind != b"normal":
                sessions = []
        else:
            raise SYNTAX
    text = "".join(c.describe() + "\n" for c in sorted(sessions, key=lambda c: c.id))
    return Verbatim(text.encode())


@command("info", 2, "noscript loading stale", group=GROUP, summary="This connection's details", parent=CLIENT, since="6.2.0")
def client_info(s: Session, argv: list[bytes]) -> Any:
    return Verbatim((s.describe() + "\n").encode())


@command("kill", -3, "admin noscript loading stale", group=GROUP, summary="Close connections", parent=CLIENT, since="2.4.0")
def client_kill(s: Session, argv: list[bytes]) -> Any:
    clients = s.server.clients.values()
    if len(argv) == 3:  # the old form: CLIENT KILL addr:port
        address = argv[2].decode("utf-8", "replace")
        for victim in list(clients):
            if victim.addr == address:
                _kill(s, victim)
                return "OK"
        raise err("No such client")
    if len(argv) % 2 != 0:
        raise SYNTAX
    filters: list[Any] = []
    skip_me = True
    for i in range(2, len(argv), 2):
        option, value = argv[i].lower(), argv[i + 1]
        text = value.decode("utf-8", "replace")
        if option == b"id":
            wanted = parse_int(value)
            if wanted is None or wanted <= 0:
                raise err("client-id should be greater than 0")
            filters.append(lambda c, w=wanted: c.id == w)
        elif option == b"addr":
            filters.append(lambda c, a=text: c.addr == a)
        elif option == b"laddr":
            filters.append(lambda c, a=text: c.laddr == a)
        elif option == b"user":
            filters.append(lambda c, u=text: u == "default")
        elif option == b"type":
            kind = value.lower()
            if kind not in (b"normal", b"master", b"replica", b"slave", b"pubsub"):
                raise err(f"Unknown client type '{text}'")
            filters.append(lambda c, k=kind: k == b"normal")
        elif option == b"skipme":
            if value.lower() not in (b"yes", b"no"):
                raise SYNTAX
            skip_me = value.lower() == b"yes"
        else:
            raise SYNTAX
    killed = 0
    for victim in list(clients):
        if skip_me and victim is s:
            continue
        if all(f(victim) for f in filters):
            _kill(s, victim)
            killed += 1
    return killed


def _kill(s: Session, victim: Session) -> None:
    if victim is s:
        s.close_after_reply = True  # reply first, then close, as Redis does
    else:
        victim.kill()


@command("unblock", -3, "admin noscript loading stale", group=GROUP, summary="Unblock a client blocked in a blocking command", parent=CLIENT, since="5.0.0")
def client_unblock(s: Session, argv: list[bytes]) -> Any:
    if len(argv) > 4:
        raise subcommand_error(argv)
    error = False
    if len(argv) == 4:  # as Redis: the reason is checked before the id
        mode = argv[3].lower()
        if mode not in (b"timeout", b"error"):
            raise err("CLIENT UNBLOCK reason should be TIMEOUT or ERROR")
        error = mode == b"error"
    client_id = parse_int(argv[2])
    if client_id is None:
        raise err("value is not an integer or out of range")
    target = s.server.clients.get(client_id)
    unblock = getattr(target, "unblock", None)
    return 1 if unblock is not None and unblock(error) else 0


@command("help", 2, "loading stale", group=GROUP, summary="CLIENT subcommands", parent=CLIENT, since="5.0.0")
def client_help(s: Session, argv: list[bytes]) -> Any:
    return [b"CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:"] + [
        name.upper() for name in sorted(CLIENT.subcommands)
    ]
