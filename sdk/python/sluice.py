"""Sluice processors in Python: one function over a message.

    from sluice import Failure, processor

    def configure(config):          # optional: the pipeline's [processor.config]
        return config.get("field", "payload")

    def enrich(msg, field):         # once per message: records, or raise Failure
        return [msg.record().set(field, msg.get(field).upper())]

    WitWorld = processor(enrich, init=configure)

Build with componentize-py against sdk/wit, passing this folder with `-p`
(scripts/build-plugins does). The runtime hands the component a batch; this
module calls your function once per message and turns its records, or the
Failure it raises, into the WIT outcomes. Any other exception is a `retry`
failure with its text, so one bad message never fails its neighbours.
"""

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log
from wit_world.imports.types import Failure as _WitFailure
from wit_world.imports.types import FailureKind, Field, Output

_KINDS = {
    "retry": FailureKind.RETRY,
    "dead-letter": FailureKind.DEAD_LETTER,
    "drop": FailureKind.DROP,
}
_LEVELS = {
    "trace": _log.Level.TRACE,
    "debug": _log.Level.DEBUG,
    "info": _log.Level.INFO,
    "warn": _log.Level.WARN,
    "error": _log.Level.ERROR,
}


class Failure(Exception):
    """Raise to fail a message: kind is "retry", "dead-letter" or "drop"."""

    def __init__(self, kind, reason):
        if kind not in _KINDS:
            raise ValueError(f"failure kind must be retry, dead-letter or drop, not {kind!r}")
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def log(level, message):
    """Writes to the runtime's log: "trace", "debug", "info", "warn" or "error"."""
    _log.log(_LEVELS[level], str(message))


class KvError(Exception):
    """The key-value store failed (Redis unreachable, say); uncaught, it
    fails the message as a `retry`."""


def _kv_call(op, call):
    try:
        return call()
    except Err as e:
        raise KvError(f"kv {op}: {e.value}") from None


def _bytes(value):
    return value.encode() if isinstance(value, str) else bytes(value)


class kv:
    """The pipeline's key-value store, in Redis, shared by every instance of
    the pipeline's processors. Keys are text; values bytes (str is stored as
    UTF-8). Errors raise KvError."""

    @staticmethod
    def get(key):
        """The value at `key` as bytes, or None."""
        return _kv_call("get", lambda: _kv.get(key))

    @staticmethod
    def set(key, value, ttl_ms=None):
        """Stores `value` at `key`; with `ttl_ms` it expires that much later."""
        _kv_call("set", lambda: _kv.set(key, _bytes(value), ttl_ms))

    @staticmethod
    def set_new(key, value, ttl_ms=None):
        """Stores `value` only if `key` holds nothing; returns whether it did."""
        return _kv_call("set-new", lambda: _kv.set_new(key, _bytes(value), ttl_ms))

    @staticmethod
    def delete(key):
        _kv_call("delete", lambda: _kv.delete(key))

    @staticmethod
    def incr(key, by=1):
        """Adds `by` to the integer at `key` (missing: 0); returns the new value."""
        return _kv_call("incr", lambda: _kv.incr(key, by))


class Record:
    """An output record: fields in order, and optionally the sink it goes `to`."""

    def __init__(self, fields=None, to=None):
        self.fields = list(fields or [])
        self.to = to

    def set(self, name, value):
        """Sets a field (the first of that name, else appends); str becomes UTF-8."""
        value = value.encode() if isinstance(value, str) else bytes(value)
        for i, (n, _) in enumerate(self.fields):
            if n == name:
                self.fields[i] = (name, value)
                return self
        self.fields.append((name, value))
        return self

    def route(self, sink):
        """Sends the record to the sink named `sink`."""
        self.to = sink
        return self


class Message:
    """A message: id, source, deliveries, first_delivery_ms and fields
    (a list of (name, bytes)); get(name) gives the first value as text."""

    def __init__(self, raw):
        self.id = raw.id
        self.source = raw.source
        self.deliveries = raw.deliveries
        self.first_delivery_ms = raw.first_delivery_ms
        self.fields = [(f.name, f.value) for f in raw.fields]

    def get(self, name):
        """The first value named `name` as text (invalid UTF-8 replaced), or None."""
        value = self.get_bytes(name)
        return None if value is None else value.decode(errors="replace")

    def get_bytes(self, name):
        for n, v in self.fields:
            if n == name:
                return v
        return None

    def record(self):
        """A record with this message's fields, to change and return."""
        return Record(self.fields)


def _lower(record):
    fields = [Field(n, v.encode() if isinstance(v, str) else bytes(v)) for n, v in record.fields]
    return Output(fields, to=record.to)


def processor(process, init=None):
    """The world's `WitWorld` class from `process(msg, state)` and an optional
    `init(config) -> state` (config: a dict of text)."""
    # componentize-py makes a new WitWorld per call: state lives here.
    state = {"value": None}

    class WitWorld(wit_world.WitWorld):
        def init(self, config):
            if init is not None:
                try:
                    state["value"] = init(dict(config))
                except Exception as e:
                    raise Err(str(e))

        def process(self, batch):
            outcomes = []
            for raw in batch:
                try:
                    records = process(Message(raw), state["value"]) or []
                    outcomes.append(Ok([_lower(r) for r in records]))
                except Failure as f:
                    outcomes.append(Err(_WitFailure(_KINDS[f.kind], f.reason)))
                except Exception as e:
                    outcomes.append(Err(_WitFailure(FailureKind.RETRY, f"{type(e).__name__}: {e}")))
            return outcomes

    return WitWorld
