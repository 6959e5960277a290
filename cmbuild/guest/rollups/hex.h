/*
 * Hex decoding with the errors of the Rust `hex` crate 0.4 (what the reference server reports:
 * "Odd number of digits", "Invalid character 'g' at position 3", "Invalid string length").
 */
#ifndef ROLLUPS_HEX_H
#define ROLLUPS_HEX_H

#include "sys.h"

/* The value of one hex digit (either case), -1 for any other byte. */
int hex_value(u8 c);

enum hex_status { HEX_OK = 0, HEX_ODD_LENGTH, HEX_INVALID_CHAR, HEX_INVALID_LENGTH };

struct hex_error {
    enum hex_status status;
    u8 c;        /* HEX_INVALID_CHAR: the byte */
    size_t index; /* HEX_INVALID_CHAR: its position in the decoded text */
};

/* Decode n hex digits (no prefix) into out (room for n / 2 bytes). */
enum hex_status hex_decode(const u8 *s, size_t n, u8 *out, struct hex_error *err);
/* The error as the hex crate displays it. */
void hex_error_text(struct sb *b, const struct hex_error *err);
/* Rust's Debug of a char, for the Latin-1 value c: 'x', '\n', '\u{80}' */
void rust_debug_char(struct sb *b, u32 c);
/* Rust's Debug of a str (quoted, escaped); the bytes must be valid UTF-8. */
void rust_debug_str(struct sb *b, const u8 *s, size_t n);

#endif
