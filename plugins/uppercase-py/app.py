"""Uppercases one field of every message and passes the rest through."""

import wit_world
from componentize_py_types import Err, Ok
from wit_world.imports.types import Failure, FailureKind, Field, Output

# State lives at module level: componentize-py makes a new WitWorld per call.
field = "payload"  # the field to uppercase: config `field`


class WitWorld(wit_world.WitWorld):
    def init(self, config):
        global field
        field = dict(config).get("field", "payload")

    def process(self, batch):
        return [uppercase(msg.fields) for msg in batch]


def uppercase(fields):
    for i, f in enumerate(fields):
        if f.name == field:
            fields[i] = Field(f.name, upper(f.value))
            return Ok([Output(fields, to=None)])
    return Err(Failure(FailureKind.DEAD_LETTER, f"missing field `{field}`"))


def upper(value):
    """UTF-8 text with Unicode rules, other bytes as ASCII."""
    try:
        return value.decode().upper().encode()
    except UnicodeDecodeError:
        return value.upper()
