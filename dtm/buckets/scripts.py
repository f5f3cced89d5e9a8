"""The Lua scripts that keep dtm's locks, intents and decisions inside a shard, and the
async API that runs them over a ``ShardLink`` (see docs/redis-engine.md).

Everything dtm keeps in a shard lives in database ``META_DB`` (16), out of reach of the
user's databases 0-15:

- ``dtm:lock:<db>:<key>``: a hash ``tx`` (the holder's txid), ``until`` (the lease
  deadline, ms on the shard's clock). No TTL: a lock whose lease ran out is *resolved*
  (rolled forward or back from the primary's decision), never just dropped.
- ``dtm:intent:<txid>``: a hash ``locks`` (cmsgpack list of the lock keys above),
  ``cmds`` (cmsgpack list of ``{db, command, arg...}``), ``primary`` ("1"/"0"),
  ``until`` (the lease deadline).
- ``dtm:decision:<txid>``: ``commit`` or ``abort``, written once (``SET NX``), kept for
  ``DECISION_TTL`` seconds so a resolver arriving late still finds it.

Each script is one atomic step on its shard: a reader either sees a transaction's intent
not applied at all (its keys locked, so the guard refuses) or applied whole. Scripts
SELECT freely: since Redis 7 a SELECT inside a script does not leak to the caller's
connection, so the shared link stays in database 0. Time comes from the shard's own
``TIME`` (scripts replicate their effects since Redis 7, so that is allowed), so leases
are judged by one clock per shard, never by a front's.

A script's reply goes through Lua, which costs some fidelity the front must know about:
integer replies beyond 2^53 lose precision (Lua numbers are doubles), a null array
(``*-1``) comes back as a null bulk string, and one command can carry at most
``MAX_ARGS`` arguments (Lua's ``unpack`` limit). Commands Redis refuses in scripts
(blocking ones, SUBSCRIBE, …) come back as Redis's own "not allowed from script" error.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Final, Literal, Protocol

import attrs
import trio

from dtm.buckets.address import Arg, ShardError
from dtm.buckets.link import ShardLink

USER_DATABASES: Final = 16  # 0-15: the user's
META_DB: Final = 16  # locks, intents, decisions, the checkpoint's barrier and cut
# 17-32: keys of user database n brought in from other shards go to SCRATCH_DB + n while
# a command spanning shards runs (not used by these scripts).
SCRATCH_DB: Final = 17
DATABASES_NEEDED: Final = SCRATCH_DB + USER_DATABASES
DECISION_TTL: Final = 86400  # seconds a decision outlives its transaction, for resolvers
UNLOCKED_CHANNEL: Final = "dtm:unlocked"
LEASE_KEY: Final = "dtm:checkpoint"  # in META_DB of the first shard: who takes a checkpoint
BARRIER_KEY: Final = "dtm:barrier"  # in META_DB: a checkpoint holds commit decisions back
CUT_KEY: Final = "dtm:cut"  # in META_DB: the checkpoint this shard's data belongs to
# The pair (db, key) whose lock holds a whole shard (its name is dtm:lock:all:).
WHOLE_SHARD: Final = ("all", "")
TOPOLOGY_KEY: Final = "dtm:bucket"  # in META_DB: "<index>/<count>", this shard's place
# Lua's unpack() refuses about 8000 values; keep a margin for what else is on the stack.
MAX_ARGS: Final = 7500

COMMIT: Final = "commit"
ABORT: Final = "abort"
BARRIER: Final = "barrier"
Outcome = Literal["commit", "abort"]

# txids travel inside error replies and key names: printable ASCII, no spaces.
_TXID = re.compile(r"[!-~]{1,200}")
_LOCKED_PREFIX: Final = "DTMLOCKED "

# Shared by the scripts that release locks: a lock is deleted only if this txid holds it,
# so a stale abort can never free another transaction's lock.
_RELEASE = """
local function release(txid, intent_key)
  local packed = redis.call('HGET', intent_key, 'locks')
  if not packed then return false end
  for _, name in ipairs(cmsgpack.unpack(packed)) do
    if redis.call('HGET', name, 'tx') == txid then redis.call('DEL', name) end
  end
  return true
end
"""

_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# The DTMLOCKED error text for the first of keys (in database db) that a transaction
# has locked (or for the whole shard, locked by a transaction over the whole keyspace:
# GLOBAL_LOCK), or nil; run with database 16 selected.
_FIRST_LOCK = """
local function first_lock(db, keys)
  if #keys == 0 then return nil end
  local prefix = 'dtm:lock:' .. db .. ':'
  local names = {'dtm:lock:all:'}
  for i, key in ipairs(keys) do names[i + 1] = prefix .. key end
  if redis.call('EXISTS', unpack(names)) == 0 then return nil end
  for _, name in ipairs(names) do
    local lock = redis.call('HMGET', name, 'tx', 'until')
    if lock[1] then
      return 'DTMLOCKED ' .. lock[2] .. ' ' .. string.format('%d', now_ms()) .. ' ' .. lock[1]
    end
  end
  return nil
end
"""

# guard: KEYS = the command's keys (all in database ARGV[1]); ARGV = db, command, arg...
# If none of the keys is locked, runs the command in db and returns its reply; an error
# reply is returned as it is (pcall), so the caller sees Redis's own text. If one is
# locked, changes nothing and returns the error "DTMLOCKED <until> <now> <txid>": an error
# because no command's reply can be one Redis did not write itself (EVAL and FCALL are
# refused inside scripts), so the marker cannot be confused with user data.
GUARD_SOURCE: Final = _NOW + _FIRST_LOCK + """
redis.call('SELECT', 16)
local locked = first_lock(ARGV[1], KEYS)
if locked then return redis.error_reply(locked) end
redis.call('SELECT', ARGV[1])
return redis.pcall(unpack(ARGV, 2))
"""

# guard_batch: the guard for one of several commands a front pipelines to this shard
# for one client: ARGV = batch token, db, command, arg... Once one of them meets a lock
# it marks the batch halted (a key with the token, for HALT_MS), and the batch's later
# commands then change nothing and return "DTMHALTED": the front runs them again in order
# after the lock, so a client's commands never take effect out of order.
GUARD_BATCH_SOURCE: Final = _NOW + _FIRST_LOCK + """
redis.call('SELECT', 16)
local halt = 'dtm:halt:' .. ARGV[1]
if redis.call('EXISTS', halt) == 1 then return redis.error_reply('DTMHALTED') end
local locked = first_lock(ARGV[2], KEYS)
if locked then
  redis.call('SET', halt, '1', 'PX', 10000)
  return redis.error_reply(locked)
end
redis.call('SELECT', ARGV[2])
return redis.pcall(unpack(ARGV, 3))
"""

# prepare: ARGV = txid, lease_ms, primary ("1"/"0"), n, then n pairs (db, key) to lock,
# then the intent as (db, argc, arg * argc)*. All or nothing: if another txid holds any of
# the keys, returns {"LOCKED", txid, until, now} and changes nothing. On the primary, a
# decision already written (a resolver aborted this txid) returns {"DECIDED", outcome}:
# a slow front cannot lock anew for a transaction that is over. Otherwise locks every key
# until now + lease_ms, stores the intent and returns {"PREPARED", until}. Preparing the
# same txid again (a retry after a lost reply) renews the lease, keeps the locks taken
# before and replaces the commands.
PREPARE_SOURCE: Final = _NOW + """
redis.call('SELECT', 16)
local txid = ARGV[1]
local intent_key = 'dtm:intent:' .. txid
if ARGV[3] == '1' then
  local decided = redis.call('GET', 'dtm:decision:' .. txid)
  if decided then return {'DECIDED', decided} end
end
local now = now_ms()
local deadline = now + tonumber(ARGV[2])
local n = tonumber(ARGV[4])
local names, seen = {}, {}
local function add(name)
  if not seen[name] then seen[name] = true; names[#names + 1] = name end
end
for i = 1, n do add('dtm:lock:' .. ARGV[3 + 2 * i] .. ':' .. ARGV[4 + 2 * i]) end
if redis.call('EXISTS', intent_key) == 0 then
  -- A transaction over the whole keyspace holds the shard: no new transaction starts
  -- here (one already prepared may finish: the holder waits for it).
  local whole = redis.call('HMGET', 'dtm:lock:all:', 'tx', 'until')
  if whole[1] and whole[1] ~= txid then
    return {'LOCKED', whole[1], tonumber(whole[2]), now}
  end
end
for _, name in ipairs(names) do
  local lock = redis.call('HMGET', name, 'tx', 'until')
  if lock[1] and lock[1] ~= txid then
    return {'LOCKED', lock[1], tonumber(lock[2]), now}
  end
end
local before = redis.call('HGET', intent_key, 'locks')
if before then
  for _, name in ipairs(cmsgpack.unpack(before)) do add(name) end
end
local cmds = {}
local i = 5 + 2 * n
while i <= #ARGV do
  local argc = tonumber(ARGV[i + 1])
  local cmd = {ARGV[i]}
  for j = 1, argc do cmd[j + 1] = ARGV[i + 1 + j] end
  cmds[#cmds + 1] = cmd
  i = i + 2 + argc
end
local until_text = string.format('%d', deadline)
for _, name in ipairs(names) do redis.call('HSET', name, 'tx', txid, 'until', until_text) end
redis.call('HSET', intent_key, 'locks', cmsgpack.pack(names), 'cmds', cmsgpack.pack(cmds),
           'primary', ARGV[3], 'until', until_text)
return {'PREPARED', deadline}
"""

# decide: ARGV = txid, outcome, ttl seconds. First writer wins (SET NX); returns the
# outcome that stands, so a roll-back racing a commit settles on exactly one. While a
# checkpoint's barrier is up (BARRIER_KEY), a commit is not decided: it returns "barrier"
# and the front asks again (an abort is always written: it changes nothing).
DECIDE_SOURCE: Final = """
redis.call('SELECT', 16)
if ARGV[2] == 'commit' and redis.call('EXISTS', 'dtm:barrier') == 1 then
  local standing = redis.call('GET', 'dtm:decision:' .. ARGV[1])
  if standing then return standing end
  return 'barrier'
end
local before = redis.call('SET', 'dtm:decision:' .. ARGV[1], ARGV[2], 'NX', 'GET', 'EX', ARGV[3])
if before then return before end
return ARGV[2]
"""

# commit: ARGV = txid. Applies this shard's intent (each command in its db with pcall, as
# EXEC does: an error is that command's reply, the others still apply), releases the
# locks, deletes the intent, publishes the txid on dtm:unlocked, and returns the replies
# in order. With no intent for txid (already committed or aborted, or never prepared
# here) it changes nothing and returns nil. The metadata is written first, so a shard
# that refuses writes fails the script before any of the intent is applied.
COMMIT_SOURCE: Final = _RELEASE + """
redis.call('SELECT', 16)
local txid = ARGV[1]
local intent_key = 'dtm:intent:' .. txid
local packed = redis.call('HGET', intent_key, 'cmds')
if not packed then return false end
release(txid, intent_key)
redis.call('DEL', intent_key)
local replies = {}
for i, cmd in ipairs(cmsgpack.unpack(packed)) do
  redis.call('SELECT', cmd[1])
  replies[i] = redis.pcall(unpack(cmd, 2))
end
redis.call('PUBLISH', 'dtm:unlocked', txid)
return replies
"""

# abort: ARGV = txid. Releases txid's locks and deletes its intent, publishing the txid
# on dtm:unlocked; returns 1, or 0 (and publishes nothing) when there was nothing here.
ABORT_SOURCE: Final = _RELEASE + """
redis.call('SELECT', 16)
local txid = ARGV[1]
local intent_key = 'dtm:intent:' .. txid
if not release(txid, intent_key) then return 0 end
redis.call('DEL', intent_key)
redis.call('PUBLISH', 'dtm:unlocked', txid)
return 1
"""


@attrs.frozen
class Script:
    source: str
    sha: str = attrs.field(init=False)

    @sha.default
    def _sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


GUARD: Final = Script(GUARD_SOURCE)
GUARD_BATCH: Final = Script(GUARD_BATCH_SOURCE)
# For RESP3 clients, over a RESP3 connection: the command's reply keeps its RESP3 types
# (maps, sets, doubles, nulls) through Lua.
_RESP3: Final = "redis.setresp(3)\n"
GUARD3: Final = Script(_RESP3 + GUARD_SOURCE)
GUARD_BATCH3: Final = Script(_RESP3 + GUARD_BATCH_SOURCE)
PREPARE: Final = Script(PREPARE_SOURCE)
DECIDE: Final = Script(DECIDE_SOURCE)
COMMIT_SCRIPT: Final = Script(COMMIT_SOURCE)
ABORT_SCRIPT: Final = Script(ABORT_SOURCE)
ALL_SCRIPTS: Final = (GUARD, GUARD_BATCH, GUARD3, GUARD_BATCH3, PREPARE, DECIDE, COMMIT_SCRIPT, ABORT_SCRIPT)


class ShardMisconfigured(Exception):
    """The shard cannot hold dtm's metadata; ``str()`` is one line for the operator."""


class TooManyArguments(ValueError):
    """A command longer than a script can pass on (``MAX_ARGS``)."""


@attrs.frozen
class Locked:
    """A key is held by transaction ``txid`` until ``until_ms``; ``now_ms`` is the shard's
    clock when it said so, so ``expired`` is judged by the shard, not by this host."""

    txid: str
    until_ms: int
    now_ms: int

    @property
    def expired(self) -> bool:
        return self.now_ms >= self.until_ms


@attrs.frozen
class Prepared:
    until_ms: int  # the lease deadline on the shard's clock


@attrs.frozen
class Decided:
    """prepare on the primary found the transaction already decided (a resolver won)."""

    outcome: Outcome


def locked_from(error: ShardError) -> Locked | None:
    """The lock named by a guard's DTMLOCKED error, or None for any other error (for
    callers that pipeline guard calls and get errors as values)."""
    text = str(error)
    if not text.startswith(_LOCKED_PREFIX):
        return None
    until, now, txid = text[len(_LOCKED_PREFIX):].split(" ", 2)
    return Locked(txid, int(until), int(now))


def _check_txid(txid: str) -> None:
    if not _TXID.fullmatch(txid):
        raise ValueError(f"a txid is 1-200 printable ASCII characters without spaces: {txid!r}")


def _check_db(db: int) -> None:
    if not 0 <= db < META_DB:
        raise ValueError(f"user databases are 0-{META_DB - 1}, not {db}")


def _check_length(argv: Sequence[Arg]) -> None:
    if not argv:
        raise ValueError("an empty command")
    if len(argv) > MAX_ARGS:
        raise TooManyArguments(f"a command of {len(argv)} arguments is longer than a "
                               f"script can run ({MAX_ARGS})")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@attrs.define(eq=False)
class ShardScripts:
    """The lock/intent scripts on one shard, run over its shared link. Scripts are called
    by their SHA1 (computed here); a shard that does not know one (restarted, or SCRIPT
    FLUSHed) gets it loaded and the call is repeated."""

    link: ShardLink
    loads: int = attrs.field(default=0, init=False)  # SCRIPT LOADs sent

    async def load(self) -> None:
        """Check the shard can hold the metadata and load every script (optional: calls
        load what they need; this makes a misconfigured shard fail at start)."""
        reply = await self.link.call("CONFIG", "GET", "databases")
        databases = int(reply[1]) if len(reply) == 2 else 0
        if databases < DATABASES_NEEDED:
            raise ShardMisconfigured(
                f"shard {self.link.address} has {databases} databases; dtm needs "
                f"{DATABASES_NEEDED} (set 'databases {DATABASES_NEEDED}' in its config)")
        for script in ALL_SCRIPTS:
            await self._load(script)

    async def guard(self, db: int, keys: Sequence[Arg], argv: Sequence[Arg]) -> Any:
        """``argv``'s reply, run in ``db`` if none of ``keys`` is locked; else a Locked.
        An error reply raises ShardError with Redis's own text."""
        _check_db(db)
        _check_length(argv)
        if len(keys) > MAX_ARGS:
            raise TooManyArguments(f"{len(keys)} keys are more than a script can check")
        try:
            return await self._run(GUARD, keys, (db, *argv))
        except ShardError as error:
            locked = locked_from(error)
            if locked is None:
                raise
            return locked

    async def prepare(self, txid: str, lease_ms: int, locks: Sequence[tuple[int | str, Arg]],
                      intent: Sequence[tuple[int, Sequence[Arg]]],
                      primary: bool = False) -> Prepared | Locked | Decided:
        """Lock ``locks`` and store ``intent`` for ``txid``, all or nothing."""
        _check_txid(txid)
        if lease_ms <= 0:
            raise ValueError("a lease must be positive")
        args: list[Arg] = [txid, lease_ms, 1 if primary else 0, len(locks)]
        for db, key in locks:
            if (db, key) != WHOLE_SHARD:
                _check_db(int(db))
            args += (db, key)
        for db, argv in intent:
            _check_db(db)
            _check_length(argv)
            args += (db, len(argv), *argv)
        reply = await self._run(PREPARE, (), args)
        kind = reply[0]
        if kind == b"PREPARED":
            return Prepared(int(reply[1]))
        if kind == b"LOCKED":
            return Locked(_text(reply[1]), int(reply[2]), int(reply[3]))
        outcome = _text(reply[1])
        assert outcome in (COMMIT, ABORT), outcome
        return Decided(COMMIT if outcome == COMMIT else ABORT)

    async def decide(self, txid: str, outcome: Outcome, ttl: int = DECISION_TTL) -> Outcome:
        """Write ``outcome`` for ``txid`` unless one was written first; the one that
        stands. A commit waits while a checkpoint's barrier is up."""
        _check_txid(txid)
        if outcome not in (COMMIT, ABORT):
            raise ValueError(f"an outcome is {COMMIT!r} or {ABORT!r}, not {outcome!r}")
        pause = 0.0005
        while (standing := _text(await self._run(DECIDE, (), (txid, outcome, ttl)))) == BARRIER:
            await trio.sleep(pause)
            pause = min(pause * 2, 0.01)
        return COMMIT if standing == COMMIT else ABORT

    async def forget(self, txid: str) -> None:
        """Drop txid's decision once every shard has applied it."""
        _check_txid(txid)
        await self.link.pipeline([("SELECT", META_DB), ("DEL", f"dtm:decision:{txid}"),
                                  ("SELECT", 0)])

    async def commit(self, txid: str) -> list[Any] | None:
        """Apply and release ``txid`` here: the replies of its commands (errors as
        ShardError values), or None if there was nothing to commit."""
        _check_txid(txid)
        reply = await self._run(COMMIT_SCRIPT, (), (txid,))
        return None if reply is None else list(reply)

    async def abort(self, txid: str) -> bool:
        """Release ``txid`` here; False if there was nothing to release."""
        _check_txid(txid)
        return bool(await self._run(ABORT_SCRIPT, (), (txid,)))

    async def _run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self.link.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except ShardError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        await self._load(script)
        return await self.link.call("EVALSHA", script.sha, len(keys), *keys, *args)

    async def _load(self, script: Script) -> None:
        self.loads += 1
        sha = _text(await self.link.call("SCRIPT", "LOAD", script.source))
        if sha != script.sha:
            raise ShardMisconfigured(f"shard {self.link.address} hashed a script to {sha}, "
                                     f"not {script.sha}")


class Finisher(Protocol):
    """What resolving needs of a shard: ShardScripts, or a bucket of the redis engine."""

    async def decide(self, txid: str, outcome: Outcome) -> Outcome: ...

    async def commit(self, txid: str) -> Any: ...

    async def abort(self, txid: str) -> bool: ...


async def resolve(here: Finisher, primary: Finisher, txid: str) -> Outcome:
    """Finish ``txid`` on ``here`` after its lease ran out, from the decision at the
    primary: ``commit`` rolls forward, anything else rolls back. With no decision yet,
    ``abort`` is written first (SET NX): from then on the original front's commit can no
    longer win, and if its commit won first, this rolls forward instead. Idempotent; the
    caller decides the lease is over (``Locked.expired``, judged by the shard's clock)."""
    outcome = await primary.decide(txid, ABORT)
    if outcome == COMMIT:
        await here.commit(txid)
    else:
        await here.abort(txid)
    return outcome
