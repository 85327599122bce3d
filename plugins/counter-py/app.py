"""counter in Python: numbers messages with a counter in the pipeline's
key-value store (config `key`, default `count`); each message passes with a
field `count` holding the counter's new value."""

from sluice import kv, processor


def configure(config):
    return config.get("key", "count")


def count(msg, key):
    return [msg.record().set("count", str(kv.incr(key)))]


WitWorld = processor(count, init=configure)
