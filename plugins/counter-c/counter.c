/*
 * counter in C: numbers messages with a counter in the pipeline's key-value
 * store (config `key`, default `count`); each message passes with a field
 * `count` holding the counter's new value. It also claims `<key>:first`
 * for the first message it sees (for a minute), and writes that message's
 * id in `first` to every message: the other kv helpers at work.
 */
#include <string.h>

#include "sluice.h"

static const char *key = "count";

/* `key` + `suffix`, NUL-terminated, freed with the batch. */
static const char *key_with(const char *suffix) {
    size_t a = strlen(key), b = strlen(suffix);
    char *k = sluice_alloc(a + b + 1);
    memcpy(k, key, a);
    memcpy(k + a, suffix, b + 1);
    return k;
}

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
    int stored, found;
    sluice_bytes first;
    if ((err = sluice_kv_set_new(key_with(":first"), msg->id, 60000, &stored)) ||
        (err = sluice_kv_set(key_with(":scratch"), sluice_str("x"), 60000)) ||
        (err = sluice_kv_delete(key_with(":scratch"))) ||
        (err = sluice_kv_get(key_with(":first"), &first, &found))) {
        sluice_fail(out, SLUICE_RETRY, err);
        return;
    }
    if (!found) {
        sluice_fail(out, SLUICE_RETRY, "the first id is gone");
        return;
    }
    char digits[24];
    size_t len = 0;
    do digits[len++] = (char)('0' + n % 10); while ((n /= 10) > 0);
    uint8_t *text = sluice_alloc(len);
    for (size_t i = 0; i < len; i++) text[i] = (uint8_t)digits[len - 1 - i];

    size_t count = msg->fields.len;
    sluice_field *fields = sluice_alloc((count + 3) * sizeof *fields);
    memcpy(fields, msg->fields.ptr, count * sizeof *fields);
    fields[count].name = sluice_str("count");
    fields[count].value = (sluice_bytes){text, len};
    fields[count + 1].name = sluice_str("id");
    fields[count + 1].value = msg->id;
    fields[count + 2].name = sluice_str("first");
    fields[count + 2].value = first;
    sluice_emit(out, (sluice_fields){fields, count + 3});
}
