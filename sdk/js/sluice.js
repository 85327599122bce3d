// Sluice processors in JavaScript: one function over a message.
//
//   import { processor, Failure, text } from "./sluice.js";
//   export const { init, process } = processor({
//     init(config) { ... },                // optional; config: { key: "value" }
//     process(msg) { return [record] },    // records, or throw new Failure(kind, why)
//   });
//
// Build with componentize-js against sdk/wit (scripts/build-plugins). The
// runtime hands `process` a batch; this module calls your function once per
// message and turns its records, or the Failure it throws, into the WIT
// outcomes. Any other exception is a `retry` failure with its message.

import * as hostKv from "sluice:processor/kv@0.1.0";
import { log as hostLog } from "sluice:processor/log@0.1.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** What a failing processor wants done with the message: "retry", "dead-letter" or "drop". */
export class Failure extends Error {
  constructor(kind, reason) {
    super(reason);
    if (!["retry", "dead-letter", "drop"].includes(kind)) {
      throw new TypeError(`failure kind must be retry, dead-letter or drop, not ${kind}`);
    }
    this.kind = kind;
  }
}

/** Bytes as UTF-8 text (invalid sequences replaced). */
export function text(bytes) {
  return decoder.decode(bytes);
}

/** Writes to the runtime's log: level is "trace", "debug", "info", "warn" or "error". */
export function log(level, message) {
  hostLog(level, String(message));
}

function kvCall(op, call) {
  try {
    return call();
  } catch (e) {
    // A `result` error arrives as an exception carrying the host's text.
    throw new Error(`kv ${op}: ${e?.payload ?? e?.message ?? e}`);
  }
}

function bytes(value) {
  return typeof value === "string" ? encoder.encode(value) : value;
}

function ttl(ttlMs) {
  return ttlMs === undefined ? undefined : BigInt(ttlMs);
}

/**
 * The pipeline's key-value store, in Redis, shared by every instance of the
 * pipeline's processors. Keys are strings; values bytes (strings are stored
 * as UTF-8). Errors throw, failing the message as a `retry` unless caught.
 */
export const kv = {
  /** The value at `key` as a Uint8Array, or undefined. */
  get: (key) => kvCall("get", () => hostKv.get(key)),
  /** Stores `value` at `key`; with `ttlMs` it expires that much later. */
  set: (key, value, ttlMs) => kvCall("set", () => hostKv.set(key, bytes(value), ttl(ttlMs))),
  /** Stores `value` only if `key` holds nothing; returns whether it did. */
  setNew: (key, value, ttlMs) =>
    kvCall("set-new", () => hostKv.setNew(key, bytes(value), ttl(ttlMs))),
  delete: (key) => kvCall("delete", () => hostKv.delete(key)),
  /** Adds `by` to the integer at `key` (missing: 0); returns the new value as a number. */
  incr: (key, by = 1) => Number(kvCall("incr", () => hostKv.incr(key, BigInt(by)))),
};

/**
 * A message as the function sees it: `id`, `source`, `deliveries`,
 * `firstDeliveryMs` (a number), `fields` (an array of [name, Uint8Array]),
 * `get(name)` (the first value as a string, or undefined) and `record()`
 * (a record with the same fields, to change and return).
 */
class Message {
  constructor(raw) {
    this.id = raw.id;
    this.source = raw.source;
    this.deliveries = raw.deliveries;
    this.firstDeliveryMs = Number(raw.firstDeliveryMs);
    this.fields = raw.fields.map((f) => [f.name, f.value]);
  }

  get(name) {
    const field = this.fields.find(([n]) => n === name);
    return field === undefined ? undefined : text(field[1]);
  }

  record() {
    return new Record(this.fields.map(([n, v]) => [n, v]));
  }
}

/** An output record: fields in order, and optionally the sink it goes `to`. */
export class Record {
  constructor(fields = [], to = undefined) {
    this.fields = fields;
    this.to = to;
  }

  /** Sets a field (replacing the first of that name, else appending); strings become UTF-8. */
  set(name, value) {
    const bytes = typeof value === "string" ? encoder.encode(value) : value;
    const field = this.fields.find(([n]) => n === name);
    if (field) field[1] = bytes;
    else this.fields.push([name, bytes]);
    return this;
  }

  /** Routes the record to the sink named `sink`. */
  route(sink) {
    this.to = sink;
    return this;
  }
}

function lower(record) {
  const fields = record.fields.map(([name, value]) => ({
    name,
    value: typeof value === "string" ? encoder.encode(value) : value,
  }));
  return { fields, to: record.to };
}

/** The world's exports, from one function per message (and an optional init). */
export function processor(impl) {
  let state;
  return {
    init(config) {
      if (impl.init) state = impl.init(Object.fromEntries(config));
    },
    process(batch) {
      return batch.map((raw) => {
        try {
          const records = impl.process(new Message(raw), state) ?? [];
          return { tag: "ok", val: records.map(lower) };
        } catch (e) {
          const kind = e instanceof Failure ? e.kind : "retry";
          return { tag: "err", val: { kind, reason: e?.message ?? String(e) } };
        }
      });
    },
  };
}
