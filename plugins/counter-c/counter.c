/*
 * counter in C: numbers messages with a counter in the pipeline's key-value
 * store (config `key`, default `count`); each message passes with a field
 * `count` holding the counter's new value.
 */
#include <string.h>

#include "sluice.h"

static const char *key = "count";

const char *sluice_init(const sluice_config_entry *config, size_t len) {
    for (size_t i = 0; i < len; i++) {
        if (sluice_eq(config[i].key, "key")) {
            char *k = sluice_alloc(config[i].value.len + 1);
            memcpy(k, config[i].value.ptr, config[i].value.len);
            k[config[i].value.len] = 0;
            key = k;
        }
    }
    return NULL;
}

void sluice_process(const sluice_message *msg, sluice_outcome *out) {
    int64_t n;
    const char *err = sluice_kv_incr(key, 1, &n);
    if (err) {
        sluice_fail(out, SLUICE_RETRY, err);
        return;
    }
    char digits[24];
    size_t len = 0;
    do digits[len++] = (char)('0' + n % 10); while ((n /= 10) > 0);
    uint8_t *text = sluice_alloc(len);
    for (size_t i = 0; i < len; i++) text[i] = (uint8_t)digits[len - 1 - i];

    size_t count = msg->fields.len;
    sluice_field *fields = sluice_alloc((count + 1) * sizeof *fields);
    memcpy(fields, msg->fields.ptr, count * sizeof *fields);
    fields[count].name = sluice_str("count");
    fields[count].value = (sluice_bytes){text, len};
    sluice_emit(out, (sluice_fields){fields, count + 1});
}
