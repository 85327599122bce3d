"""{{name}}: a Sluice processor. Passes every message on with one field
added, `processed_by` (config `tag`, default "{{name}}"), and dead-letters a
message without a `payload` field."""

from sluice import Failure, processor


def configure(config):
    return config.get("tag", "{{name}}")


def handle(msg, tag):
    if msg.get_bytes("payload") is None:
        raise Failure("dead-letter", "missing field `payload`")
    return [msg.record().set("processed_by", tag)]


WitWorld = processor(handle, init=configure)
