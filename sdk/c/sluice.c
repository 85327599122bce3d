/*
 * The canonical-ABI side of a C processor: the exports Sluice calls
 * (init, process, cabi_realloc and the post-return hooks) and the helpers
 * declared in sluice.h. Compile it into the module beside your source.
 */
#include "sluice.h"

#include <stdalign.h>
#include <stdlib.h>
#include <string.h>

/* The header's structs must be the canonical ABI's layouts on wasm32. */
_Static_assert(sizeof(sluice_field) == 16, "field layout");
_Static_assert(sizeof(sluice_message) == 40, "message layout");
_Static_assert(offsetof(sluice_message, first_delivery_ms) == 32, "message layout");
_Static_assert(sizeof(sluice_record) == 20, "output layout");
_Static_assert(offsetof(sluice_record, to) == 12, "output layout");
_Static_assert(sizeof(sluice_outcome) == 16, "outcome layout");
_Static_assert(offsetof(sluice_outcome, u) == 4, "outcome layout");
_Static_assert(sizeof(sluice_config_entry) == 16, "config layout");

/* Blocks to free after the batch. Before init returns nothing is tracked,
 * so the config stays valid for the instance's life. */
static void **batch_blocks;
static size_t batch_len, batch_cap;
static int initialized;

static void *alloc_block(size_t size, size_t align) {
    void *block = aligned_alloc(align < alignof(max_align_t) ? alignof(max_align_t) : align,
                                size ? size : 1);
    if (!block) __builtin_trap();
    if (initialized) {
        if (batch_len == batch_cap) {
            batch_cap = batch_cap ? batch_cap * 2 : 64;
            batch_blocks = realloc(batch_blocks, batch_cap * sizeof(void *));
            if (!batch_blocks) __builtin_trap();
        }
        batch_blocks[batch_len++] = block;
    }
    return block;
}

void *sluice_alloc(size_t size) { return alloc_block(size, alignof(max_align_t)); }

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    void *block = alloc_block(new_size, align);
    if (old) memcpy(block, old, old_size < new_size ? old_size : new_size);
    return block;
}

/* result<_, string>: tag, then the error text. */
static struct {
    uint8_t is_err;
    sluice_bytes reason;
} init_result;

__attribute__((export_name("init")))
void *export_init(sluice_config_entry *config, size_t len) {
    const char *refused = sluice_init(config, len);
    init_result.is_err = refused != NULL;
    if (refused) init_result.reason = sluice_str(refused);
    return &init_result;
}

__attribute__((export_name("cabi_post_init")))
void post_init(void *ret) {
    (void)ret;
    initialized = 1;
}

static struct {
    sluice_outcome *ptr;
    size_t len;
} process_result;

__attribute__((export_name("process")))
void *export_process(sluice_message *msgs, size_t len) {
    sluice_outcome *outcomes = sluice_alloc(len * sizeof(sluice_outcome));
    memset(outcomes, 0, len * sizeof(sluice_outcome));
    for (size_t i = 0; i < len; i++) sluice_process(&msgs[i], &outcomes[i]);
    process_result.ptr = outcomes;
    process_result.len = len;
    return &process_result;
}

/* The runtime has read the outcomes: free the batch. */
__attribute__((export_name("cabi_post_process")))
void post_process(void *ret) {
    (void)ret;
    for (size_t i = 0; i < batch_len; i++) free(batch_blocks[i]);
    batch_len = 0;
}

sluice_bytes sluice_str(const char *text) {
    sluice_bytes b = {(uint8_t *)text, strlen(text)};
    return b;
}

int sluice_eq(sluice_bytes bytes, const char *text) {
    size_t n = strlen(text);
    return bytes.len == n && memcmp(bytes.ptr, text, n) == 0;
}

const sluice_bytes *sluice_get(const sluice_message *msg, const char *name) {
    for (size_t i = 0; i < msg->fields.len; i++)
        if (sluice_eq(msg->fields.ptr[i].name, name)) return &msg->fields.ptr[i].value;
    return NULL;
}

sluice_record *sluice_emit(sluice_outcome *out, sluice_fields fields) {
    if (out->is_err) return NULL;
    size_t n = out->u.ok.len;
    sluice_record *records = sluice_alloc((n + 1) * sizeof(sluice_record));
    if (n) memcpy(records, out->u.ok.ptr, n * sizeof(sluice_record));
    memset(&records[n], 0, sizeof(sluice_record));
    records[n].fields = fields;
    out->u.ok.ptr = records;
    out->u.ok.len = n + 1;
    return &records[n];
}

void sluice_route(sluice_record *record, const char *sink) {
    record->has_to = 1;
    record->to = sluice_str(sink);
}

void sluice_fail(sluice_outcome *out, sluice_failure_kind kind, const char *reason) {
    size_t n = strlen(reason);
    uint8_t *copy = sluice_alloc(n + 1);
    memcpy(copy, reason, n + 1);
    out->is_err = 1;
    out->u.err.kind = (uint8_t)kind;
    out->u.err.reason.ptr = copy;
    out->u.err.reason.len = n;
}

__attribute__((import_module("sluice:processor/log@0.1.0"), import_name("log")))
extern void host_log(int32_t level, const uint8_t *ptr, size_t len);

void sluice_log(sluice_level level, const char *message) {
    host_log((int32_t)level, (const uint8_t *)message, strlen(message));
}

/* ---- kv: the imports with the canonical ABI's lowered signatures. A
 * result is returned through an area the caller passes: the tag (u8) at 0,
 * the payload after it at the payload's alignment. ---- */

#define KV_IMPORT(name) \
    __attribute__((import_module("sluice:processor/kv@0.1.0"), import_name(name)))

KV_IMPORT("get") extern void host_kv_get(const char *key, size_t key_len, void *ret);
KV_IMPORT("set")
extern void host_kv_set(const char *key, size_t key_len, const uint8_t *value, size_t value_len,
                        int32_t has_ttl, int64_t ttl, void *ret);
KV_IMPORT("set-new")
extern void host_kv_set_new(const char *key, size_t key_len, const uint8_t *value,
                            size_t value_len, int32_t has_ttl, int64_t ttl, void *ret);
KV_IMPORT("delete") extern void host_kv_delete(const char *key, size_t key_len, void *ret);
KV_IMPORT("incr") extern void host_kv_incr(const char *key, size_t key_len, int64_t by, void *ret);

/* The error string of a failed call, NUL-terminated for the caller. */
static const char *kv_error(sluice_bytes text) {
    char *copy = sluice_alloc(text.len + 1);
    memcpy(copy, text.ptr, text.len);
    copy[text.len] = 0;
    return copy;
}

const char *sluice_kv_get(const char *key, sluice_bytes *value, int *found) {
    /* result<option<list<u8>>, string> */
    struct {
        uint8_t is_err;
        union {
            struct {
                uint8_t is_some;
                sluice_bytes value;
            } ok;
            sluice_bytes err;
        } u;
    } ret;
    host_kv_get(key, strlen(key), &ret);
    if (ret.is_err) return kv_error(ret.u.err);
    *found = ret.u.ok.is_some;
    if (ret.u.ok.is_some) *value = ret.u.ok.value;
    return NULL;
}

/* result<_, string> and result<bool, string> */
typedef struct {
    uint8_t is_err;
    union {
        uint8_t ok;
        sluice_bytes err;
    } u;
} kv_small_result;

const char *sluice_kv_set(const char *key, sluice_bytes value, int64_t ttl_ms) {
    kv_small_result ret;
    host_kv_set(key, strlen(key), value.ptr, value.len, ttl_ms > 0, ttl_ms > 0 ? ttl_ms : 0, &ret);
    return ret.is_err ? kv_error(ret.u.err) : NULL;
}

const char *sluice_kv_set_new(const char *key, sluice_bytes value, int64_t ttl_ms, int *stored) {
    kv_small_result ret;
    host_kv_set_new(key, strlen(key), value.ptr, value.len, ttl_ms > 0, ttl_ms > 0 ? ttl_ms : 0,
                    &ret);
    if (ret.is_err) return kv_error(ret.u.err);
    *stored = ret.u.ok;
    return NULL;
}

const char *sluice_kv_delete(const char *key) {
    kv_small_result ret;
    host_kv_delete(key, strlen(key), &ret);
    return ret.is_err ? kv_error(ret.u.err) : NULL;
}

const char *sluice_kv_incr(const char *key, int64_t by, int64_t *value) {
    /* result<s64, string>: the payload at offset 8 */
    struct {
        uint8_t is_err;
        union {
            int64_t ok;
            sluice_bytes err;
        } u;
    } ret;
    _Static_assert(offsetof(__typeof__(ret), u) == 8, "result<s64, string> layout");
    host_kv_incr(key, strlen(key), by, &ret);
    if (ret.is_err) return kv_error(ret.u.err);
    *value = ret.u.ok;
    return NULL;
}
