"""The commands of the Redis-protocol front door (`dsm.api.resp`): what each means on a DSM node.

Each command calls the store's public operations (`EpidemicStorage.get`, `put`, `delete`, `list_keys`),
at the node's default consistency levels (`write_consistency`, `read_consistency`), as an HTTP request
without a `consistency` parameter does. Keys are UTF-8 text (a key that is not is refused); values are any
bytes. In `siblings` mode a read answers the newest value, and a `SET` supersedes what this node holds of
the key (the context of a local read), as a Redis user expects of an overwrite.

    GET k                   the newest value, or nil
    SET k v [NX|XX] [EX s|PX ms|EXAT t|PXAT t|KEEPTTL]
                            NX: a conditional write `if_absent` (linearizable; nil when the key holds a
                            value); XX: only if the key holds a value (a linearizable read, then a write
                            `if_match` its context, again from the new context while the key changes under
                            it); EX/PX/EXAT/PXAT: the value expires (`ttl_ms`); KEEPTTL: keeps the current
                            expiry. SET's GET option is refused.
    DEL k...                a tombstone for each key (also for a key this node does not hold yet, so a
                            value on its way is deleted too); the count of keys that held a value here
    EXISTS k...             how many of the keys hold a value (a key named twice counts twice)
    MGET k...               the values, nil for each key without one
    MSET k v [k v ...]      the writes, run together; not atomic across keys (each key is)
    SCAN cursor [MATCH prefix*] [COUNT n] [TYPE string]
                            the keys holding a value, in order, n (default 10, at most 1,000) at a time;
                            MATCH takes a prefix pattern (`user:*`) or an exact key; the cursor is the
                            last key returned, as a number (stateless: any node continues it); 0 at the end
    TTL k / PTTL k          seconds / ms until the key expires; -1 if it does not, -2 if it holds no value
    EXPIRE k s [NX|XX|GT|LT] / PEXPIRE k ms [...]
                            sets the expiry: a linearizable read and a write of the same value `if_match`
                            (so a concurrent SET is never overwritten by an old value); 0 or less deletes
    PING [msg], ECHO msg, INFO [section], AUTH [user] token, HELLO [2|3 [AUTH user token] [SETNAME n]],
    SELECT 0, CLIENT SETNAME|GETNAME|ID|SETINFO|INFO, COMMAND [COUNT|INFO|DOCS|LIST], CONFIG GET, QUIT

Any other command is answered `-ERR unknown command`. Errors carry a code first: `ERR` for bad input,
`NOAUTH` / `WRONGPASS` for authentication, `TRYAGAIN` when a consistency level was not met, the node is
stopping or its store failed (retry), `UNKNOWN` when a conditional write may or may not have taken effect.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from dsm import __version__
from dsm.api.resp import REPLY_MAX_BYTES, Reply, RespLimits, RespServer, Session
from dsm.config import ConflictResolution
from dsm.errors import (
    ClosedError,
    ConsistencyError,
    DSMError,
    OutcomeUnknownError,
    PreconditionFailedError,
    StorageError,
)
from dsm.node import checks
from dsm.node.conditional import LINEARIZABLE

if TYPE_CHECKING:
    import ssl

    from dsm.node import EpidemicStorage
    from dsm.types import ReadResult

#: The Redis version this front door answers as (HELLO, INFO): the commands it has behave as in Redis 7.
REDIS_COMPATIBLE = "7.0.0"
#: Most keys one SCAN returns.
SCAN_MAX = 1000
#: Rounds of a conditional write (SET XX, EXPIRE) against a key that keeps changing under it.
CAS_ROUNDS = 8
#: Keys a multi-key command handles between two yields to the event loop (its reads do not suspend).
YIELD_EVERY = 256
#: Keys whose SCAN cursor would be a number of more digits than Python converts (its 4,300-digit limit,
#: which clients share) get a cursor from this node's table of at most this many.
LONG_CURSORS = 4096

Handler = Callable[[Session, list[bytes]], Awaitable[bytes]]


class CommandError(Exception):
    """A command's arguments are wrong: answered as an error reply with this text (its code first)."""


def _key(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("ERR invalid key: keys are UTF-8 text") from None


def _int(raw: bytes, what: str = "value is not an integer or out of range") -> int:
    """An integer argument as Redis reads one: an optional '-' and ASCII digits, nothing else, 64-bit."""
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or len(raw) > 20:
        raise CommandError(f"ERR {what}")
    n = int(raw)
    if not -(1 << 63) <= n < (1 << 63):
        raise CommandError(f"ERR {what}")
    return n


def error_text(exc: DSMError) -> str:
    """The error reply of a failure of the store (its code first)."""
    message = str(exc)
    if isinstance(exc, OutcomeUnknownError):
        return f"UNKNOWN {message}"
    if isinstance(exc, (ConsistencyError, StorageError)):
        return f"TRYAGAIN {message}"
    if isinstance(exc, ClosedError):
        return "TRYAGAIN the node is stopping"
    return f"ERR {message}"


class Commands:
    """The command table over one store; `dispatch` is what `RespServer` runs for each request."""

    def __init__(self, storage: EpidemicStorage, token: str = "") -> None:
        self.storage = storage
        self.token = token
        self.siblings = storage.config.conflict_resolution is ConflictResolution.SIBLINGS
        self.server: RespServer | None = None
        self.cursors = Cursors()
        #: name -> (handler, arity as Redis counts it: n exactly, -n at least n, the name included).
        self.table: dict[bytes, tuple[Handler, int]] = {
            b"GET": (self.get, 2),
            b"SET": (self.set, -3),
            b"DEL": (self.delete, -2),
            b"EXISTS": (self.exists, -2),
            b"MGET": (self.mget, -2),
            b"MSET": (self.mset, -3),
            b"SCAN": (self.scan, -2),
            b"TTL": (self.ttl, 2),
            b"PTTL": (self.pttl, 2),
            b"EXPIRE": (self.expire, -3),
            b"PEXPIRE": (self.pexpire, -3),
            b"PING": (self.ping, -1),
            b"ECHO": (self.echo, 2),
            b"INFO": (self.info, -1),
            b"AUTH": (self.auth, -2),
            b"HELLO": (self.hello, -1),
            b"SELECT": (self.select, 2),
            b"CLIENT": (self.client, -2),
            b"COMMAND": (self.command, -1),
            b"CONFIG": (self.config, -2),
            b"QUIT": (self.quit, -1),
        }

    def together(self, args: list[bytes]) -> bool:
        """Whether a request is a plain write that may run at once with its pipelined neighbours: a `SET k v`
        without options in 'lww' mode, whose write is queued for its commit before it first waits, so writes
        started in order commit in order. Not with an expiry (it may first wait for the members' support of
        expiry, letting a later write overtake it), nor in 'siblings' mode (a `SET` first reads what the node
        holds, which a write still on its way to its commit is not yet)."""
        return not self.siblings and len(args) == 3 and args[0].upper() == b"SET"

    def _keys(self, raws: Sequence[bytes]) -> list[str]:
        """The keys of a multi-key write, all checked before any is written (so a bad one writes nothing)."""
        return [checks.check_key(_key(raw), self.storage.config) for raw in raws]

    async def dispatch(self, session: Session, args: list[bytes]) -> bytes:
        name = args[0].upper()
        entry = self.table.get(name)
        if entry is None:
            shown = " ".join(f"'{a.decode('utf-8', 'replace')[:40]}'" for a in args[1:4])
            return self._error(
                f"ERR unknown command '{name.decode('utf-8', 'replace')[:40]}', with args beginning with: {shown}"
            )
        handler, arity = entry
        if (arity > 0 and len(args) != arity) or len(args) < -arity:
            return self._error(f"ERR wrong number of arguments for '{name.decode().lower()}' command")
        if not session.authenticated and name not in (b"AUTH", b"HELLO", b"QUIT"):
            return self._error("NOAUTH Authentication required.")
        server = self.server
        if server is not None:
            server.commands[name.decode()] += 1
        try:
            return await handler(session, args)
        except CommandError as exc:
            return self._error(str(exc))
        except DSMError as exc:
            return self._error(error_text(exc))

    def _error(self, text: str) -> bytes:
        if self.server is not None:
            self.server.errors[text.split(" ", 1)[0]] += 1
        return Reply.error(text)

    # -- keys

    async def get(self, session: Session, args: list[bytes]) -> bytes:
        found = await self.storage.get(_key(args[1]))
        return session.reply.value(None if found is None else found.value)

    async def set(self, session: Session, args: list[bytes]) -> bytes:
        key, value = _key(args[1]), args[2]
        condition: bytes | None = None
        ttl_ms: int | None = None
        keep_ttl = False
        i = 3
        while i < len(args):
            option = args[i].upper()
            if option in (b"NX", b"XX") and condition is None:
                condition = option
            elif option in (b"EX", b"PX", b"EXAT", b"PXAT") and ttl_ms is None and not keep_ttl and i + 1 < len(args):
                i += 1
                ttl_ms = self._ttl(option, _int(args[i]), "set")
            elif option == b"KEEPTTL" and ttl_ms is None and not keep_ttl:
                keep_ttl = True
            elif option == b"GET":
                raise CommandError("ERR SET's GET option is not supported by DSM (read with GET first)")
            else:
                raise CommandError("ERR syntax error")
            i += 1
        if keep_ttl:
            ttl_ms = self._remaining_ms(await self.storage.get(key, consistency="local"))
        if condition == b"NX":
            try:
                await self.storage.put(key, value, if_absent=True, ttl_ms=ttl_ms)
            except PreconditionFailedError:
                return session.reply.null()
            return Reply.OK
        if condition == b"XX":
            found = await self.storage.get(key, consistency=LINEARIZABLE)
            if found is None:
                return session.reply.null()
            context: str | None = found.context
            for _ in range(CAS_ROUNDS):
                try:
                    await self.storage.put(key, value, if_match=context, ttl_ms=ttl_ms)
                    return Reply.OK
                except PreconditionFailedError as exc:
                    if not exc.exists:
                        return session.reply.null()
                    context = exc.context
            raise CommandError("TRYAGAIN the key kept changing; nothing was written")
        await self.storage.put(key, value, context=await self._overwriting(key), ttl_ms=ttl_ms)
        return Reply.OK

    def _ttl(self, option: bytes, n: int, command: str) -> int:
        """The ttl_ms an EX/PX/EXAT/PXAT option asks for (at least 1 ms: a time in the past is refused)."""
        if option in (b"EX", b"PX"):
            ms = n * 1000 if option == b"EX" else n
        else:
            ms = (n * 1000 if option == b"EXAT" else n) - self.storage.commits.wall_ms()
        if n <= 0 or ms <= 0:
            raise CommandError(f"ERR invalid expire time in '{command}' command")
        return ms

    def _remaining_ms(self, found: ReadResult | None) -> int | None:
        if found is None or found.newest.expires_ms == 0:
            return None
        return max(1, found.newest.expires_ms - self.storage.commits.wall_ms())

    async def _overwriting(self, key: str) -> str | None:
        """The context a plain write takes: none in 'lww' mode (it wins by timestamp); in 'siblings' mode what
        this node holds of the key, so the write replaces it instead of standing beside it."""
        if not self.siblings:
            return None
        found = await self.storage.get(key, consistency="local")
        return None if found is None else found.context

    async def delete(self, session: Session, args: list[bytes]) -> bytes:
        deleted = 0
        for i, key in enumerate(dict.fromkeys(self._keys(args[1:]))):  # a key named twice is deleted once
            found = await self.storage.get(key, consistency="local")
            await self.storage.delete(key, context=None if found is None else found.context)
            deleted += found is not None
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return Reply.integer(deleted)

    async def exists(self, session: Session, args: list[bytes]) -> bytes:
        count = 0
        for i, raw in enumerate(args[1:]):
            count += await self.storage.get(_key(raw)) is not None
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return Reply.integer(count)

    async def mget(self, session: Session, args: list[bytes]) -> bytes:
        values = []
        size = 0
        for i, raw in enumerate(args[1:]):
            found = await self.storage.get(_key(raw))
            values.append(session.reply.value(None if found is None else found.value))
            size += len(values[-1])
            if size > REPLY_MAX_BYTES:
                raise CommandError(f"ERR the reply would exceed {REPLY_MAX_BYTES} bytes: ask for fewer keys")
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return Reply.array(values)

    async def mset(self, session: Session, args: list[bytes]) -> bytes:
        if len(args) % 2 != 1:
            raise CommandError("ERR wrong number of arguments for 'mset' command")
        keys = self._keys(args[1::2])
        pairs = dict(zip(keys, args[2::2], strict=True))  # a key named twice: its last value, as in Redis
        contexts = [await self._overwriting(key) for key in pairs]  # before any write starts
        writes = [self.storage.put(k, v, context=c) for (k, v), c in zip(pairs.items(), contexts, strict=True)]
        for result in await asyncio.gather(*writes, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        return Reply.OK

    async def scan(self, session: Session, args: list[bytes]) -> bytes:
        after = self.cursors.decode(args[1])
        prefix, exact, limit, only_strings = "", None, 10, True
        i = 2
        while i < len(args):
            option = args[i].upper()
            if i + 1 >= len(args):
                raise CommandError("ERR syntax error")
            if option == b"MATCH":
                prefix, exact = match_prefix(args[i + 1])
            elif option == b"COUNT":
                limit = _int(args[i + 1])
                if limit < 1:
                    raise CommandError("ERR syntax error")
            elif option == b"TYPE":
                only_strings = args[i + 1].lower() == b"string"
            else:
                raise CommandError("ERR syntax error")
            i += 2
        if not only_strings:
            return Reply.array([Reply.bulk(b"0"), Reply.array([])])
        if exact is not None:
            found = not after and await self.storage.get(exact) is not None
            return Reply.array([Reply.bulk(b"0"), Reply.array([Reply.bulk(exact)] if found else [])])
        keys, more = await self.storage.list_keys(prefix, after, min(limit, SCAN_MAX))
        cursor = self.cursors.encode(keys[-1]) if more and keys else b"0"
        return Reply.array([Reply.bulk(cursor), Reply.array([Reply.bulk(k) for k in keys])])

    async def ttl(self, session: Session, args: list[bytes]) -> bytes:
        ms = await self._ttl_of(_key(args[1]))
        return Reply.integer(ms if ms < 0 else (ms + 500) // 1000)

    async def pttl(self, session: Session, args: list[bytes]) -> bytes:
        return Reply.integer(await self._ttl_of(_key(args[1])))

    async def _ttl_of(self, key: str) -> int:
        found = await self.storage.get(key)
        if found is None:
            return -2
        remaining = self._remaining_ms(found)
        return -1 if remaining is None else remaining

    async def expire(self, session: Session, args: list[bytes]) -> bytes:
        return await self._expire(args, 1000, "expire")

    async def pexpire(self, session: Session, args: list[bytes]) -> bytes:
        return await self._expire(args, 1, "pexpire")

    async def _expire(self, args: list[bytes], unit_ms: int, command: str) -> bytes:
        key, ttl_ms = _key(args[1]), _int(args[2]) * unit_ms
        flags = {a.upper() for a in args[3:]}
        if not flags <= {b"NX", b"XX", b"GT", b"LT"}:
            raise CommandError(f"ERR Unsupported option {_text(next(iter(flags - {b'NX', b'XX', b'GT', b'LT'})))}")
        if len(flags) != len(args) - 3 or len(flags) > 1:
            raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
        for _ in range(CAS_ROUNDS):
            found = await self.storage.get(key, consistency=LINEARIZABLE)
            if found is None:
                return Reply.integer(0)
            now = self.storage.commits.wall_ms()
            current = found.newest.expires_ms  # 0: none (forever)
            wanted = now + ttl_ms
            if (
                (b"NX" in flags and current)
                or (b"XX" in flags and not current)
                or (b"GT" in flags and (not current or wanted <= current))
                or (b"LT" in flags and current and wanted >= current)
            ):
                return Reply.integer(0)
            try:
                if ttl_ms <= 0:
                    await self.storage.delete(key, if_match=found.context)
                else:
                    await self.storage.put(key, found.value, if_match=found.context, ttl_ms=ttl_ms)
                return Reply.integer(1)
            except PreconditionFailedError as exc:
                if not exc.exists:
                    return Reply.integer(0)
        raise CommandError(f"TRYAGAIN the key kept changing; its expiry is unchanged ('{command}')")

    # -- connection

    async def ping(self, session: Session, args: list[bytes]) -> bytes:
        if len(args) > 2:
            raise CommandError("ERR wrong number of arguments for 'ping' command")
        return Reply.PONG if len(args) == 1 else Reply.bulk(args[1])

    async def echo(self, session: Session, args: list[bytes]) -> bytes:
        return Reply.bulk(args[1])

    async def auth(self, session: Session, args: list[bytes]) -> bytes:
        if len(args) > 3:
            raise CommandError("ERR syntax error")
        self._authenticate(session, args[1:])
        return Reply.OK

    def _authenticate(self, session: Session, given: Sequence[bytes]) -> None:
        """AUTH [user] token: the user, if named, is `default` (the only one); the token is http_token."""
        if not self.token:
            raise CommandError(
                "ERR AUTH <password> called without any password configured for the default user "
                "(this node has no http_token)"
            )
        user, password = (b"default", given[0]) if len(given) == 1 else (given[0], given[1])
        if user != b"default" or not hmac.compare_digest(password, self.token.encode()):
            raise CommandError("WRONGPASS invalid username-password pair or user is disabled.")
        session.authenticated = True

    async def hello(self, session: Session, args: list[bytes]) -> bytes:
        proto = session.reply.proto
        i = 1
        if len(args) > 1:
            proto = _int(args[1], "Protocol version is not an integer or out of range")
            if proto not in (2, 3):
                raise CommandError("NOPROTO unsupported protocol version")
            i = 2
        name: str | None = None
        while i < len(args):
            option = args[i].upper()
            if option == b"AUTH" and i + 2 < len(args):
                self._authenticate(session, args[i + 1 : i + 3])
                i += 3
            elif option == b"SETNAME" and i + 1 < len(args):
                name = _client_name(args[i + 1])
                i += 2
            else:
                raise CommandError(f"ERR Syntax error in HELLO option '{option.decode('utf-8', 'replace')}'")
        if not session.authenticated:
            raise CommandError(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> "
                "AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol "
                "version at the same time"
            )
        if name is not None:
            session.name = name
        session.reply.proto = proto
        r = session.reply
        return r.map(
            [
                (r.bulk("server"), r.bulk("redis")),
                (r.bulk("version"), r.bulk(REDIS_COMPATIBLE)),
                (r.bulk("proto"), r.integer(proto)),
                (r.bulk("id"), r.integer(session.id)),
                (r.bulk("mode"), r.bulk("standalone")),
                (r.bulk("role"), r.bulk("master")),
                (r.bulk("modules"), r.array([])),
                (r.bulk("dsm_version"), r.bulk(__version__)),
                (r.bulk("dsm_node"), r.bulk(self.storage.node_id)),
            ]
        )

    async def select(self, session: Session, args: list[bytes]) -> bytes:
        if _int(args[1]) != 0:
            raise CommandError("ERR DB index is out of range (DSM has one keyspace: database 0)")
        return Reply.OK

    async def client(self, session: Session, args: list[bytes]) -> bytes:
        sub = args[1].upper()
        if sub == b"SETNAME" and len(args) == 3:
            session.name = _client_name(args[2])
            return Reply.OK
        if sub == b"GETNAME" and len(args) == 2:
            return session.reply.value(session.name.encode() if session.name else None)
        if sub == b"ID" and len(args) == 2:
            return Reply.integer(session.id)
        if sub == b"SETINFO" and len(args) == 4:
            return Reply.OK  # library name and version: nothing to keep
        if sub == b"INFO" and len(args) == 2:
            return Reply.bulk(
                f"id={session.id} addr={session.peer} name={session.name} db=0 resp={session.reply.proto}\n"
            )
        raise CommandError(
            f"ERR unknown subcommand or wrong number of arguments for 'CLIENT|{sub.decode('utf-8', 'replace')}'"
        )

    async def command(self, session: Session, args: list[bytes]) -> bytes:
        sub = args[1].upper() if len(args) > 1 else b""
        names = sorted(self.table)
        if sub == b"":
            return Reply.array([self._command_info(n) for n in names])
        if sub == b"COUNT":
            return Reply.integer(len(names))
        if sub == b"LIST":
            return Reply.array([Reply.bulk(n.lower()) for n in names])
        if sub == b"INFO":
            return Reply.array(
                [self._command_info(n.upper()) if n.upper() in self.table else session.reply.null() for n in args[2:]]
            )
        if sub == b"DOCS":
            return session.reply.map([])
        raise CommandError(f"ERR unknown subcommand '{sub.decode('utf-8', 'replace')}'. Try COMMAND HELP.")

    def _command_info(self, name: bytes) -> bytes:
        """A command's entry as Redis 7 gives it: name, arity, flags, first key, last key, step, ACL
        categories, tips, key specifications, subcommands."""
        arity = self.table[name][1]
        writes = name in (b"SET", b"DEL", b"MSET", b"EXPIRE", b"PEXPIRE")
        keyed = writes or name in (b"GET", b"EXISTS", b"MGET", b"TTL", b"PTTL")
        last = -1 if name in (b"DEL", b"EXISTS", b"MGET", b"MSET") else 1
        step = 2 if name == b"MSET" else 1
        flags = [b"write"] if writes else [b"readonly"] if keyed else [b"fast"]
        category = b"@write" if writes else b"@read" if keyed else b"@connection"
        return Reply.array(
            [
                Reply.bulk(name.lower()),
                Reply.integer(arity),
                Reply.array([Reply.simple(f.decode()) for f in flags]),
                Reply.integer(1 if keyed else 0),
                Reply.integer(last if keyed else 0),
                Reply.integer(step if keyed else 0),
                Reply.array([Reply.simple(category.decode())]),
                Reply.array([]),
                Reply.array([]),
                Reply.array([]),
            ]
        )

    async def config(self, session: Session, args: list[bytes]) -> bytes:
        if args[1].upper() == b"GET":
            return session.reply.map([])  # DSM's settings are not Redis's (`dsm config` lists them)
        raise CommandError("ERR CONFIG: only CONFIG GET is answered (with nothing); DSM is configured by `dsm config`")

    async def quit(self, session: Session, args: list[bytes]) -> bytes:
        session.close_after = True
        return Reply.OK

    async def info(self, session: Session, args: list[bytes]) -> bytes:
        server = self.server
        lines = [
            "# Server",
            f"redis_version:{REDIS_COMPATIBLE}",
            f"dsm_version:{__version__}",
            f"dsm_node_id:{self.storage.node_id}",
            "redis_mode:standalone",
            f"process_id:{os.getpid()}",
            "",
            "# Clients",
            f"connected_clients:{0 if server is None else len(server.connections)}",
            "",
            "# Stats",
            f"total_connections_received:{0 if server is None else server.accepted}",
            f"total_commands_processed:{0 if server is None else sum(server.commands.values())}",
            "",
        ]
        return Reply.bulk("\r\n".join(lines))


def _text(raw: bytes) -> str:
    """An argument quoted in an error reply: text, at most 40 characters."""
    return raw.decode("utf-8", "replace")[:40]


def _client_name(raw: bytes) -> str:
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError("ERR Client names are UTF-8 text") from None
    if any(c.isspace() or not c.isprintable() for c in name) or len(name) > 256:
        raise CommandError("ERR Client names cannot contain spaces, newlines or special characters.")
    return name


class Cursors:
    """SCAN cursors: the last key returned, as a number any node turns back into the key (`encode_cursor`);
    for a key too long for that (a number of over 4,000 digits, which neither Python nor its clients convert),
    an entry in this node's table instead, under a number tagged 2, the table holding the latest LONG_CURSORS
    (such a scan continues on the node that began it, else `-ERR unknown cursor`)."""

    def __init__(self) -> None:
        self.long: OrderedDict[int, str] = OrderedDict()

    def encode(self, key: str) -> bytes:
        if len(key.encode()) <= 1600:
            return encode_cursor(key)
        token = int.from_bytes(b"\x02" + secrets.token_bytes(8), "big")
        self.long[token] = key
        while len(self.long) > LONG_CURSORS:
            self.long.popitem(last=False)
        return str(token).encode()

    def decode(self, raw: bytes) -> str:
        if len(raw) > 4000:
            raise CommandError("ERR invalid cursor")
        n = _big(raw)
        if n >> 64 == 2 and n < 3 << 64:  # a tagged table entry (9 bytes starting with 2)
            key = self.long.get(n)
            if key is None:
                raise CommandError("ERR unknown cursor: it was given by another node, or too long ago")
            return key
        return decode_cursor(raw)


def _big(raw: bytes) -> int:
    if not raw.isdigit():
        raise CommandError("ERR invalid cursor")
    return int(raw)


def encode_cursor(key: str) -> bytes:
    """A SCAN cursor: the last key returned, as a decimal number (clients parse cursors as integers); a 1
    byte in front keeps leading NUL-free UTF-8 intact and the number above 0 (0 ends a scan)."""
    return str(int.from_bytes(b"\x01" + key.encode(), "big")).encode()


def decode_cursor(raw: bytes) -> str:
    """The key after which a SCAN continues ("" from the start)."""
    try:
        n = int(raw)
    except ValueError:
        raise CommandError("ERR invalid cursor") from None
    if n == 0:
        return ""
    if n < 0:
        raise CommandError("ERR invalid cursor")
    data = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if data[:1] != b"\x01":
        raise CommandError("ERR invalid cursor")
    try:
        return data[1:].decode()
    except UnicodeDecodeError:
        raise CommandError("ERR invalid cursor") from None


def match_prefix(pattern: bytes) -> tuple[str, str | None]:
    """(prefix, exact key or None) of a MATCH pattern: `prefix*` or a key without glob characters."""
    text = _key(pattern)
    body, star = (text[:-1], True) if text.endswith("*") and not text.endswith("\\*") else (text, False)
    if any(c in body for c in "*?[]\\"):
        raise CommandError("ERR DSM's MATCH takes a prefix pattern ('user:*') or an exact key")
    return (body, None) if star else (body, body)


async def start_resp(
    storage: EpidemicStorage, host: str, port: int, *, token: str = "", ssl_context: ssl.SSLContext | None = None
) -> tuple[RespServer, int]:
    """Starts the front door of `storage` on host:port; returns it and its port."""
    commands = Commands(storage, token)
    limits = RespLimits.from_config(storage.config)
    server = RespServer(commands.dispatch, limits, token=token, ssl_context=ssl_context, together=commands.together)
    commands.server = server
    return server, await server.start(host, port)
