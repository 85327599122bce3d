"""json-enrich in Python: parses one field as a JSON object, adds every other
config key to it as a string, and writes it back into the same field. A
message without the field, or whose field is not a JSON object, is
dead-lettered."""

import json

from sluice import Failure, processor


def configure(config):
    field = config.pop("field", "payload")
    return field, config


def enrich(msg, settings):
    field, extra = settings
    value = msg.get_bytes(field)
    if value is None:
        raise Failure("dead-letter", f"missing field `{field}`")
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise Failure("dead-letter", f"field `{field}` is not a JSON object: {e}")
    if not isinstance(obj, dict):
        raise Failure("dead-letter", f"field `{field}` is not a JSON object")
    obj.update(extra)
    return [msg.record().set(field, json.dumps(obj, separators=(",", ":")))]


WitWorld = processor(enrich, init=configure)
