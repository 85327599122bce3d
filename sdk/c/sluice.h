/*
 * Sluice processors in C: one function over a message.
 *
 * Build a plain core module with clang (wasm32-wasi, reactor) from your
 * source and sdk/c/sluice.c; Sluice wraps it into a component at load. The
 * structs below are the canonical ABI layouts of the `processor` world in
 * sdk/wit/sluice.wit on wasm32, so the runtime's data is read in place,
 * without a copy.
 *
 * Memory: everything a batch brings (messages, fields) and everything
 * allocated with sluice_alloc() while processing it is freed after the
 * batch. The config handed to sluice_init() stays valid for the life of the
 * instance.
 */
#ifndef SLUICE_H
#define SLUICE_H

#include <stddef.h>
#include <stdint.h>

/* A byte string: Redis values are binary-safe; names and ids are UTF-8. */
typedef struct {
    uint8_t *ptr;
    size_t len;
} sluice_bytes;

/* One named value. */
typedef struct {
    sluice_bytes name;
    sluice_bytes value;
} sluice_field;

typedef struct {
    sluice_field *ptr;
    size_t len;
} sluice_fields;

/* A message read from a source. */
typedef struct {
    sluice_bytes id;            /* stream entry id, or a synthetic one */
    sluice_bytes source;        /* stream key, channel or list key */
    sluice_fields fields;       /* in the order Redis stored them */
    uint32_t deliveries;        /* 1 on first delivery */
    uint64_t first_delivery_ms; /* Unix milliseconds */
} sluice_message;

/* One output record: fields, and the sink to write to (none: the first). */
typedef struct {
    sluice_fields fields;
    uint8_t has_to;
    sluice_bytes to;
} sluice_record;

/* What a failing processor wants done with the message. */
typedef enum {
    SLUICE_RETRY = 0,       /* transient: deliver again later */
    SLUICE_DEAD_LETTER = 1, /* poison: dead-letter now */
    SLUICE_DROP = 2,        /* discard: acked, written nowhere */
} sluice_failure_kind;

/* The result for one message; start from "no records" (filtered). Fill it
 * with sluice_emit() or sluice_fail() rather than by hand. */
typedef struct {
    uint8_t is_err;
    union {
        struct {
            sluice_record *ptr;
            size_t len;
        } ok;
        struct {
            uint8_t kind;
            sluice_bytes reason;
        } err;
    } u;
} sluice_outcome;

/* One `[processor.config]` entry, values as text. */
typedef struct {
    sluice_bytes key;
    sluice_bytes value;
} sluice_config_entry;

/* ---- What a plugin defines ---- */

/* Called once per instance with the pipeline's config. Return NULL to
 * accept it, or a reason to refuse the plugin. */
const char *sluice_init(const sluice_config_entry *config, size_t len);

/* Called once per message: leave `out` alone to filter the message, add
 * records with sluice_emit(), or fail it with sluice_fail(). */
void sluice_process(const sluice_message *msg, sluice_outcome *out);

/* ---- Helpers ---- */

/* Memory freed after the current batch (or kept, during init). */
void *sluice_alloc(size_t size);

/* A byte string over a C string (not copied). */
sluice_bytes sluice_str(const char *text);

/* Whether a byte string equals a C string. */
int sluice_eq(sluice_bytes bytes, const char *text);

/* The value of the first field named `name`, or NULL. */
const sluice_bytes *sluice_get(const sluice_message *msg, const char *name);

/* Adds a record with `fields` (not copied: they may point into the
 * message) and returns it, so its `to` can be set with sluice_route(). */
sluice_record *sluice_emit(sluice_outcome *out, sluice_fields fields);

/* Sends a record to the sink named `sink` (not copied). */
void sluice_route(sluice_record *record, const char *sink);

/* Fails the message; `reason` is copied. */
void sluice_fail(sluice_outcome *out, sluice_failure_kind kind, const char *reason);

/* Writes to the runtime's log, tagged with pipeline and plugin. */
typedef enum {
    SLUICE_TRACE = 0,
    SLUICE_DEBUG = 1,
    SLUICE_INFO = 2,
    SLUICE_WARN = 3,
    SLUICE_ERROR = 4,
} sluice_level;
void sluice_log(sluice_level level, const char *message);

/* ---- The pipeline's key-value store (in Redis, shared by every instance of
 * the pipeline). Each returns NULL on success, or the error's text (valid
 * until the batch ends): fail the message with it, usually as a retry. ---- */

/* The value at `key`: *found is 0 if there is none. The value is valid
 * until the batch ends. */
const char *sluice_kv_get(const char *key, sluice_bytes *value, int *found);
/* Stores `value` (copied) at `key`; expires after `ttl_ms` if above 0. */
const char *sluice_kv_set(const char *key, sluice_bytes value, int64_t ttl_ms);
/* Like sluice_kv_set, but only if `key` holds nothing: *stored says whether
 * it did (first one wins, across every consumer and process). */
const char *sluice_kv_set_new(const char *key, sluice_bytes value, int64_t ttl_ms, int *stored);
const char *sluice_kv_delete(const char *key);
/* Adds `by` to the integer at `key` (missing: 0); *value is the new value. */
const char *sluice_kv_incr(const char *key, int64_t by, int64_t *value);

#endif
