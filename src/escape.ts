/**
 * Text for a terminal, from strings a peer may have chosen: a guest's interface, device and NBD
 * names, its error messages, the other daemon's control answers. Such a string can hold control
 * characters that a terminal obeys — ESC starts sequences that move the cursor, rewrite earlier
 * lines or set the window title, CR overwrites the line, NUL and BS hide text — so whatever the
 * CLI prints and the daemons log goes through one of these two functions first.
 *
 * Escaped: C0 controls (U+0000-U+001F, tab and newline included), DEL, C1 controls
 * (U+0080-U+009F: some terminals take U+009B as ESC [), the Unicode line and paragraph separators
 * and the bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069), which reorder how
 * a line reads. Everything else, backslashes included, is left as it is.
 */

function needsEscape(c: number): boolean {
  return (
    c < 0x20 ||
    (c >= 0x7f && c <= 0x9f) ||
    c === 0x2028 ||
    c === 0x2029 ||
    (c >= 0x202a && c <= 0x202e) ||
    (c >= 0x2066 && c <= 0x2069)
  )
}

function hex(c: number, digits: number): string {
  return c.toString(16).padStart(digits, '0')
}

/**
 * `text` with each control character written as an escape: `\x1b` for ESC (two hex digits for
 * U+0000-U+00FF), `\u202e` for the others. Text without any comes back unchanged (the same
 * string).
 */
export function escapeControl(text: string): string {
  let out: string | undefined
  let from = 0
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (!needsEscape(c)) continue
    out = `${out ?? ''}${text.slice(from, i)}${c <= 0xff ? `\\x${hex(c, 2)}` : `\\u${hex(c, 4)}`}`
    from = i + 1
  }
  return out === undefined ? text : out + text.slice(from)
}

/**
 * JSON text (from JSON.stringify, which escapes only U+0000-U+001F) with the other characters
 * escapeControl escapes written as `\u00XX` escapes: still the same JSON value, and safe to show.
 */
export function escapeJsonText(json: string): string {
  let out: string | undefined
  let from = 0
  for (let i = 0; i < json.length; i++) {
    const c = json.charCodeAt(i)
    // Outside strings JSON.stringify writes only ASCII, and inside them C0 is escaped already.
    if (c < 0x7f || !needsEscape(c)) continue
    out = `${out ?? ''}${json.slice(from, i)}\\u${hex(c, 4)}`
    from = i + 1
  }
  return out === undefined ? json : out + json.slice(from)
}
