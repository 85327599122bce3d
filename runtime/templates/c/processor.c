/*
 * {{name}}: a Sluice processor. Passes every message on with one field
 * added, `processed_by` (config `tag`, default "{{name}}"), and dead-letters
 * a message without a `payload` field.
 */
#include <string.h>

#include "sluice.h"

static sluice_bytes tag;

const char *sluice_init(const sluice_config_entry *config, size_t len) {
    tag = sluice_str("{{name}}");
    for (size_t i = 0; i < len; i++)
        if (sluice_eq(config[i].key, "tag")) tag = config[i].value;
    return NULL;
}

void sluice_process(const sluice_message *msg, sluice_outcome *out) {
    if (!sluice_get(msg, "payload")) {
        sluice_fail(out, SLUICE_DEAD_LETTER, "missing field `payload`");
        return;
    }
    /* The message's fields plus one; freed with the batch. */
    size_t n = msg->fields.len;
    sluice_field *fields = sluice_alloc((n + 1) * sizeof *fields);
    memcpy(fields, msg->fields.ptr, n * sizeof *fields);
    fields[n].name = sluice_str("processed_by");
    fields[n].value = tag;
    sluice_emit(out, (sluice_fields){fields, n + 1});
}
