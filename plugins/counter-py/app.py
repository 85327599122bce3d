"""counter in Python: numbers messages with a counter in the pipeline's
key-value store (config `key`, default `count`); each message passes with a
field `count` holding the counter's new value. It also claims `<key>:first`
for the first message it sees (for a minute), and writes that message's id
in `first` to every message: the other kv helpers at work."""

from sluice import kv, processor


def configure(config):
    return config.get("key", "count")


def count(msg, key):
    n = kv.incr(key)
    kv.set_new(f"{key}:first", msg.id, ttl_ms=60_000)
    kv.set(f"{key}:scratch", b"x", ttl_ms=60_000)
    kv.delete(f"{key}:scratch")
    first = kv.get(f"{key}:first")
    return [msg.record().set("count", str(n)).set("id", msg.id).set("first", first)]


WitWorld = processor(count, init=configure)
