/*
 * json-enrich in C: parses one field as a JSON object, adds every other
 * config key to it as a JSON string (replacing a key already there), and
 * writes it back into the same field. A message without the field, or whose
 * field is not a JSON object, is dead-lettered.
 */
#include <string.h>

#include "sluice.h"

static sluice_bytes field;            /* config `field`, default `payload` */
static const sluice_config_entry *extra; /* every other config entry */
static size_t n_extra;

const char *sluice_init(const sluice_config_entry *config, size_t len) {
    field = sluice_str("payload");
    sluice_config_entry *rest = sluice_alloc(len * sizeof *rest + 1);
    for (size_t i = 0; i < len; i++) {
        if (sluice_eq(config[i].key, "field"))
            field = config[i].value;
        else
            rest[n_extra++] = config[i];
    }
    extra = rest;
    return NULL;
}

/* ---- A small JSON validator: advances *p past one value, or fails. ---- */

typedef struct {
    const uint8_t *p, *end;
} cursor;

static void ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int lit(cursor *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
    c->p += n;
    return 1;
}

static int string(cursor *c) {
    if (c->p >= c->end || *c->p != '"') return 0;
    for (c->p++; c->p < c->end; c->p++) {
        if (*c->p == '"') return c->p++, 1;
        if (*c->p < 0x20) return 0;
        if (*c->p == '\\' && ++c->p == c->end) return 0;
    }
    return 0;
}

static int digits(cursor *c) {
    const uint8_t *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
    return c->p > start;
}

static int number(cursor *c) {
    if (c->p < c->end && *c->p == '-') c->p++;
    if (!digits(c)) return 0;
    if (c->p < c->end && *c->p == '.' && (c->p++, !digits(c))) return 0;
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
        if (!digits(c)) return 0;
    }
    return 1;
}

static int value(cursor *c, int depth);

/* Items of an array or members of an object, up to the closing bracket. */
static int items(cursor *c, int depth, uint8_t close, int members) {
    c->p++;
    ws(c);
    if (c->p < c->end && *c->p == close) return c->p++, 1;
    for (;;) {
        if (members) {
            if (!string(c)) return 0;
            ws(c);
            if (c->p >= c->end || *c->p++ != ':') return 0;
        }
        if (!value(c, depth + 1)) return 0;
        ws(c);
        if (c->p >= c->end) return 0;
        if (*c->p == close) return c->p++, 1;
        if (*c->p++ != ',') return 0;
        ws(c);
    }
}

static int value(cursor *c, int depth) {
    ws(c);
    if (c->p >= c->end || depth > 128) return 0;
    switch (*c->p) {
        case '{': return items(c, depth, '}', 1);
        case '[': return items(c, depth, ']', 0);
        case '"': return string(c);
        case 't': return lit(c, "true");
        case 'f': return lit(c, "false");
        case 'n': return lit(c, "null");
        default: return number(c);
    }
}

/* ---- Output ---- */

typedef struct {
    uint8_t *buf;
    size_t len;
} out_buf;

static void put(out_buf *o, const uint8_t *bytes, size_t n) {
    memcpy(o->buf + o->len, bytes, n);
    o->len += n;
}

/* A config string as a JSON string; at most 6 bytes per input byte. */
static void put_string(out_buf *o, sluice_bytes s) {
    static const char hex[] = "0123456789abcdef";
    o->buf[o->len++] = '"';
    for (size_t i = 0; i < s.len; i++) {
        uint8_t b = s.ptr[i];
        if (b == '"' || b == '\\') {
            o->buf[o->len++] = '\\';
            o->buf[o->len++] = b;
        } else if (b < 0x20) {
            put(o, (const uint8_t *)"\\u00", 4);
            o->buf[o->len++] = hex[b >> 4];
            o->buf[o->len++] = hex[b & 15];
        } else {
            o->buf[o->len++] = b;
        }
    }
    o->buf[o->len++] = '"';
}

/* Whether a member's raw key (quotes included) names a config key. */
static int replaced(const uint8_t *key, size_t len) {
    for (size_t i = 0; i < n_extra; i++)
        if (len == extra[i].key.len + 2 && memcmp(key + 1, extra[i].key.ptr, len - 2) == 0) return 1;
    return 0;
}

/* Dead-letters the message with "<before>`<field>`<after>". */
static void dead_letter(sluice_outcome *out, const char *before, const char *after) {
    size_t a = strlen(before), b = strlen(after);
    char *reason = sluice_alloc(a + field.len + b + 3);
    memcpy(reason, before, a);
    reason[a] = '`';
    memcpy(reason + a + 1, field.ptr, field.len);
    reason[a + 1 + field.len] = '`';
    memcpy(reason + a + 2 + field.len, after, b + 1);
    sluice_fail(out, SLUICE_DEAD_LETTER, reason);
}

void sluice_process(const sluice_message *msg, sluice_outcome *out) {
    const sluice_bytes *json = NULL;
    size_t at = 0;
    for (; at < msg->fields.len; at++)
        if (msg->fields.ptr[at].name.len == field.len &&
            memcmp(msg->fields.ptr[at].name.ptr, field.ptr, field.len) == 0) {
            json = &msg->fields.ptr[at].value;
            break;
        }
    if (!json) {
        dead_letter(out, "missing field ", "");
        return;
    }
    size_t room = json->len + 2;
    for (size_t i = 0; i < n_extra; i++) room += 6 * (extra[i].key.len + extra[i].value.len) + 6;
    out_buf o = {sluice_alloc(room), 0};
    o.buf[o.len++] = '{';

    /* Copy the members whose keys are not replaced, validating as we go. */
    cursor c = {json->ptr, json->ptr + json->len};
    ws(&c);
    int ok = c.p < c.end && *c.p == '{';
    if (ok) {
        c.p++;
        ws(&c);
        if (c.p < c.end && *c.p == '}') {
            c.p++;
        } else {
            for (;;) {
                const uint8_t *start = c.p;
                if (!string(&c)) { ok = 0; break; }
                size_t key_len = (size_t)(c.p - start);
                ws(&c);
                if (c.p >= c.end || *c.p++ != ':' || !value(&c, 1)) { ok = 0; break; }
                if (!replaced(start, key_len)) {
                    if (o.len > 1) o.buf[o.len++] = ',';
                    put(&o, start, (size_t)(c.p - start));
                }
                ws(&c);
                if (c.p < c.end && *c.p == '}') { c.p++; break; }
                if (c.p >= c.end || *c.p++ != ',') { ok = 0; break; }
                ws(&c);
            }
        }
        ws(&c);
        ok = ok && c.p == c.end;
    }
    if (!ok) {
        dead_letter(out, "field ", " is not a JSON object");
        return;
    }
    for (size_t i = 0; i < n_extra; i++) {
        if (o.len > 1) o.buf[o.len++] = ',';
        put_string(&o, extra[i].key);
        o.buf[o.len++] = ':';
        put_string(&o, extra[i].value);
    }
    o.buf[o.len++] = '}';

    /* The message's fields, with the JSON one replaced. */
    sluice_fields fields = {sluice_alloc(msg->fields.len * sizeof(sluice_field)), msg->fields.len};
    memcpy(fields.ptr, msg->fields.ptr, msg->fields.len * sizeof(sluice_field));
    fields.ptr[at].value.ptr = o.buf;
    fields.ptr[at].value.len = o.len;
    sluice_emit(out, fields);
}
