/*
 * JSON request bodies, read the way the reference server reads them: serde_json 1.0
 * (`from_slice`) deserializing a `#[derive(Deserialize)]` struct whose fields are `String`,
 * `Option<String>` or `u16`. Accepted and refused inputs, and the error messages with their
 * "at line L column C" positions, follow serde_json's parser:
 *
 *   - a struct is an object ({"status": "accept"}) or an array of its fields in order
 *     (["accept"]); unknown keys are skipped (their values must still be valid JSON);
 *   - "missing field `status`", "duplicate field `status`", "invalid type: integer `1`,
 *     expected a string", "invalid value: integer `70000`, expected u16", "invalid length 0,
 *     expected struct FinishRequest with 1 element", "trailing characters", "EOF while parsing
 *     an object", "key must be a string", "control character (\u0000-\u001F) found while
 *     parsing a string", "invalid escape", "invalid unicode code point", "lone leading
 *     surrogate in hex escape", "number out of range", ...;
 *   - a floating point number in a message is printed as Rust's ryu crate prints it (1.5, 1e20,
 *     -0.0).
 */
#ifndef ROLLUPS_JSON_H
#define ROLLUPS_JSON_H

#include "sys.h"

enum jtype { J_STRING, J_OPT_STRING, J_U16 };

struct jfield {
    const char *name;
    enum jtype type;
};

struct jschema {
    const char *name; /* the Rust struct's name, for "expected struct Name" */
    size_t nfields;
    const struct jfield *fields;
};

struct jvalue {
    bool present;  /* false only for an Option field that is absent or null */
    const u8 *s;   /* J_STRING / J_OPT_STRING: the decoded UTF-8 bytes (valid until the next parse) */
    size_t len;
    u16 u;         /* J_U16 */
};

/* Parse `in` into out[schema->nfields]. On failure, append serde_json's message (with its
 * position) to err and return false. */
bool json_parse(const struct jschema *schema, const u8 *in, size_t n, struct jvalue *out, struct sb *err);

/* Give back the memory of a big parse (the strings of the last parse become invalid). */
void json_release(void);

/* f64 as Rust's ryu crate formats it (shortest round trip: "1.5", "1e20", "0.0001", "-0.0"). */
void format_f64(struct sb *b, double v);

#endif
