//! The JSON lexer under the request-body scan, the response-id search and the
//! fingerprint: a [`Cursor`] that walks the members its caller reads and skips the rest.
//!
//! It builds no DOM and copies nothing but the values it returns (and only those that
//! hold escapes). Strings are skipped by searching for quotes only (inline eight bytes
//! at a time for the first 64 bytes, `memchr` beyond) and looking back at the
//! backslashes before a quote only when a backslash precedes it; once a string has
//! shown an escaped quote, the rest of it is skipped 64 bytes at a time by a
//! branch-free test that the compiler vectorises (see `skip_blocks`). Inside a value
//! that is skipped whole, the quotes of the next 64 bytes are known as a bitmask
//! (`QuoteWindow`), so a short string's end is found without a search. Structure
//! between strings is walked byte by byte (between strings it is a few bytes: a
//! word-at-a-time search for the next quote or bracket measured slower than the plain
//! loop).
//!
//! What it checks: where its caller walks ([`Cursor::object`], [`Cursor::array`],
//! [`Cursor::string_value`]) the grammar fully, bare words included (numbers or
//! `true`/`false`/`null`); in a value skipped whole ([`Cursor::skip_value`]) only that
//! strings end, brackets balance and match and nesting stays within [`MAX_DEPTH`],
//! passing over whatever else lies between strings and brackets (commas, colons, words).

use std::borrow::Cow;

/// The deepest nesting the scanner follows (the limit `serde_json` applies by default).
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a walk stopped early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The input ended inside a value: more bytes might complete it.
    Eof,
    /// The input is not JSON.
    Invalid,
}

/// What a step of a walk gives, or why the walk stopped.
pub(crate) type R<T> = Result<T, Stop>;

/// A string as it appears between its quotes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawStr<'a> {
    raw: &'a [u8],
}

impl<'a> RawStr<'a> {
    /// The string's bytes as they appear between its quotes, escapes included.
    pub(crate) fn raw(self) -> &'a [u8] {
        self.raw
    }

    /// Whether the string holds an escape (only asked of the few strings that are read).
    pub(crate) fn escaped(self) -> bool {
        memchr::memchr(b'\\', self.raw).is_some()
    }

    /// The string's bytes, unescaped; `None` if an escape is invalid.
    pub(crate) fn unescaped(self) -> Option<Cow<'a, [u8]>> {
        if self.escaped() {
            unescape(self.raw).map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(self.raw))
        }
    }

    /// Whether the string equals `name` once unescaped.
    pub(crate) fn is(self, name: &[u8]) -> bool {
        if !self.escaped() {
            return self.raw == name;
        }
        // An escape takes at least two bytes for one: a longer unescaped name cannot match.
        self.raw.len() >= name.len() && unescape(self.raw).is_some_and(|u| u == name)
    }
}

fn hex4(b: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(b.get(..4)?).ok()?;
    if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// Unescapes a JSON string's contents.
pub(crate) fn unescape(raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *raw.get(i + 1)?;
        i += 2;
        let byte = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = hex4(raw.get(i..)?)?;
                i += 4;
                let cp = match hi {
                    0xD800..=0xDBFF => {
                        if raw.get(i..i + 2) != Some(b"\\u") {
                            return None;
                        }
                        let lo = hex4(raw.get(i + 2..)?)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return None;
                        }
                        i += 6;
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => hi,
                };
                let ch = char::from_u32(cp)?;
                let mut buf = [0; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(byte);
    }
    Some(out)
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` that is zero. Bytes above a zero byte may be flagged
/// falsely (borrows run upwards), but the lowest flagged byte is always a true zero, and
/// it is the first in memory order.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

#[inline(always)]
fn word(b: &[u8], i: usize) -> Option<u64> {
    let w = <[u8; 8]>::try_from(b.get(i..i + 8)?).ok()?;
    Some(u64::from_le_bytes(w))
}

/// How far [`find_quote`] searches inline before handing over to `memchr`.
const INLINE_QUOTE_SEARCH: usize = 64;

/// The position of the first `"` at or after `from`.
///
/// Only quotes stop the search (whether one is escaped is decided by looking back), so
/// the `\n` escapes prompt text has on every line cost nothing. Most JSON strings are
/// short, and in source code or prose quoted inside a string the next `\"` is a few
/// dozen bytes away: the first 64 bytes are searched inline, eight at a time (SWAR),
/// which costs less than a `memchr` call; longer runs go to `memchr`, which is faster
/// per byte.
#[inline]
fn find_quote(b: &[u8], from: usize) -> Option<usize> {
    const QUOTE: u64 = LO * b'"' as u64;
    let mut i = from;
    let inline_end = from.saturating_add(INLINE_QUOTE_SEARCH).min(b.len());
    // Sixteen bytes per step, one branch for both words.
    while i + 16 <= inline_end {
        let (Some(w0), Some(w1)) = (word(b, i), word(b, i + 8)) else {
            break;
        };
        let m0 = zero_bytes(w0 ^ QUOTE);
        let m1 = zero_bytes(w1 ^ QUOTE);
        if m0 | m1 != 0 {
            return Some(if m0 != 0 {
                i + (m0.trailing_zeros() / 8) as usize
            } else {
                i + 8 + (m1.trailing_zeros() / 8) as usize
            });
        }
        i += 16;
    }
    while i + 8 <= inline_end {
        let Some(w) = word(b, i) else {
            break;
        };
        let m = zero_bytes(w ^ QUOTE);
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    memchr::memchr(b'"', b.get(i..)?).map(|p| i + p)
}

/// The position of the quote that ends the string whose contents start at `start`.
///
/// Quote by quote while no quote has been escaped (most strings are keys and short
/// values, which end at their first quote). After the first escaped quote the string is
/// text that quotes something (source code, JSON in a string), with a `\"` every few dozen
/// bytes: from there on whole blocks are skipped by [`skip_blocks`] and only the block
/// that may hold the end is searched quote by quote.
#[inline]
fn string_end(b: &[u8], start: usize) -> R<usize> {
    let mut from = start;
    let mut blocks = false;
    loop {
        if blocks {
            from = skip_blocks(b, from);
        }
        let Some(at) = find_quote(b, from) else {
            return Err(Stop::Eof);
        };
        // The quote ends the string unless an odd run of backslashes precedes it; most
        // quotes have no backslash before them at all. Each run is walked once, by the
        // quote that follows it.
        if at == start || b[at - 1] != b'\\' {
            return Ok(at);
        }
        let mut j = at - 1;
        while j > start && b[j - 1] == b'\\' {
            j -= 1;
        }
        if (at - j) % 2 == 0 {
            return Ok(at);
        }
        from = at + 1;
        blocks = true;
    }
}

/// The bytes [`skip_blocks`] judges at once.
const BLOCK: usize = 64;

/// Skips whole blocks of `BLOCK` bytes from `i` in which no quote can end the string,
/// and returns the start of the first block in which one may (or where less than a
/// block is left). The caller knows that `i - 1` and `i - 2` are inside the string.
///
/// A byte may end the string if it is a quote that does not follow exactly one
/// backslash: `\"` is escaped, a quote after no backslash ends the string, and one after
/// two or more is left to the exact check (`\\"` ends the string, `\\\"` does not).
/// Each block is one pass of byte-wise comparisons over fixed-size arrays with no
/// branch, which the compiler turns into SIMD compares (16 bytes per instruction with
/// the baseline SSE2, no `unsafe` and no intrinsics here): escaped quotes and `\n`
/// escapes cost nothing, where the quote-by-quote search stops at each `\"`.
#[inline]
fn skip_blocks(b: &[u8], mut i: usize) -> usize {
    loop {
        let Some(w) = i.checked_sub(2).and_then(|lo| b.get(lo..i + BLOCK)) else {
            return i;
        };
        let Ok(w) = <&[u8; BLOCK + 2]>::try_from(w) else {
            return i;
        };
        let mut may_end = 0u8;
        for k in 0..BLOCK {
            // w[k + 2] is the byte at i + k; w[k + 1] and w[k] the two before it.
            let end = (w[k + 2] == b'"') & ((w[k + 1] != b'\\') | (w[k] == b'\\'));
            may_end |= u8::from(end);
        }
        if may_end != 0 {
            return i;
        }
        i += BLOCK;
    }
}

/// The quotes of 64 bytes of the input, one bit per byte, for [`Cursor::skip_container`]:
/// where an unread array holds many short strings (`{"role":"user","content":"ok"}`),
/// finding each string's end is a shift and a count of trailing zeros instead of a search,
/// and the next window's bits do not wait for the previous string's end.
#[derive(Default)]
struct QuoteWindow {
    /// The window is `base..base + 64`.
    base: usize,
    /// Bit `k`: the byte at `base + k` is a quote. No bits: nothing known (then the
    /// search decides).
    bits: u64,
}

impl QuoteWindow {
    /// Loads the window at `base`; `false` if fewer than 64 bytes are left.
    #[inline(always)]
    fn load(&mut self, b: &[u8], base: usize) -> bool {
        let Some(w) = b.get(base..base + 64) else {
            return false;
        };
        let mut bits = 0;
        for (k, word) in w.chunks_exact(8).enumerate() {
            let word = <[u8; 8]>::try_from(word).map_or(0, u64::from_le_bytes);
            bits |= quote_bits(word) << (8 * k);
        }
        self.base = base;
        self.bits = bits;
        true
    }

    /// [`string_end`]: from the window when it holds the first quote at or after `start`
    /// and no backslash precedes that quote, otherwise by the search.
    #[inline(always)]
    fn string_end(&mut self, b: &[u8], start: usize) -> R<usize> {
        let mut rel = start.wrapping_sub(self.base);
        if rel >= 64 {
            // The next window, whose address does not depend on this string; or, past
            // it, the window at the string.
            let base = if rel < 128 { self.base + 64 } else { start };
            if !self.load(b, base) {
                return string_end(b, start);
            }
            rel = start - base;
            if rel >= 64 {
                return string_end(b, start);
            }
        }
        let after = self.bits >> rel;
        if after != 0 {
            let at = start + after.trailing_zeros() as usize;
            if b[at - 1] != b'\\' {
                return Ok(at);
            }
        }
        string_end(b, start)
    }
}

/// One bit per byte of `w` (little-endian) that is a quote, in the low eight bits.
#[inline(always)]
fn quote_bits(w: u64) -> u64 {
    const QUOTE: u64 = LO * b'"' as u64;
    const LOW7: u64 = LO * 0x7f;
    let x = w ^ QUOTE;
    // Exact: the high bit of each byte of x that is zero (no borrow between bytes).
    let zero = !(((x & LOW7) + LOW7) | x) & HI;
    // Gathers bit 8k to bit 56 + k; the partial products never overlap, so no carries.
    (zero >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// Whether a bare word is a number or `true`/`false`/`null` (numbers loosely: their
/// characters, not their grammar).
pub(crate) fn scalar_ok(tok: &[u8]) -> bool {
    match tok.first() {
        Some(b'-' | b'0'..=b'9') => tok
            .iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E')),
        Some(_) => matches!(tok, b"true" | b"false" | b"null"),
        None => false,
    }
}

/// A position in a byte slice holding JSON.
pub(crate) struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    /// Where the cursor is: the offset of the next byte it reads.
    pub(crate) fn pos(&self) -> usize {
        self.i
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(&c) = self.b.get(self.i) {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    /// The next byte after whitespace (the cursor is left at it).
    #[inline]
    pub(crate) fn peek(&mut self) -> R<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Stop::Eof)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> R<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Stop::Invalid)
        }
    }

    /// Whether only whitespace is left.
    pub(crate) fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.b.len()
    }

    /// The rest of a string whose opening quote was consumed; leaves the cursor after the
    /// closing quote.
    #[inline]
    fn string_body(&mut self) -> R<RawStr<'a>> {
        let start = self.i;
        let at = string_end(self.b, start)?;
        self.i = at + 1;
        Ok(RawStr {
            raw: &self.b[start..at],
        })
    }

    /// The string at the cursor (after whitespace); anything else is invalid.
    pub(crate) fn string(&mut self) -> R<RawStr<'a>> {
        self.eat(b'"')?;
        self.string_body()
    }

    /// The next value if it is a string; any other value is skipped and gives `None`.
    pub(crate) fn string_value(&mut self) -> R<Option<RawStr<'a>>> {
        if self.peek()? == b'"' {
            self.i += 1;
            self.string_body().map(Some)
        } else {
            self.skip_value().map(|_| None)
        }
    }

    /// Skips one value and returns the bytes it spanned.
    pub(crate) fn skip_value(&mut self) -> R<&'a [u8]> {
        let c = self.peek()?;
        let start = self.i;
        match c {
            b'"' => {
                self.i += 1;
                self.string_body()?;
            }
            b'{' | b'[' => self.skip_container()?,
            _ => self.skip_scalar()?,
        }
        Ok(&self.b[start..self.i])
    }

    fn skip_scalar(&mut self) -> R<()> {
        let start = self.i;
        while let Some(&c) = self.b.get(self.i) {
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.') {
                self.i += 1;
            } else {
                break;
            }
        }
        if self.i == self.b.len() {
            // A number or word may continue in bytes not yet seen.
            return Err(Stop::Eof);
        }
        if scalar_ok(&self.b[start..self.i]) {
            Ok(())
        } else {
            Err(Stop::Invalid)
        }
    }

    /// Skips an object or array (cursor at its opening bracket).
    fn skip_container(&mut self) -> R<()> {
        // One bit per open level: 1 for an object, 0 for an array.
        let mut stack: u128 = 0;
        let mut depth = 0usize;
        let b = self.b;
        let mut i = self.i;
        let mut quotes = QuoteWindow::default();
        loop {
            let Some(&c) = b.get(i) else {
                self.i = i;
                return Err(Stop::Eof);
            };
            i += 1;
            match c {
                b'"' => {
                    i = quotes.string_end(b, i)? + 1;
                }
                b'{' | b'[' => {
                    if depth == MAX_DEPTH {
                        return Err(Stop::Invalid);
                    }
                    stack = (stack << 1) | u128::from(c == b'{');
                    depth += 1;
                }
                b'}' | b']' => {
                    if depth == 0 || (stack & 1 == 1) != (c == b'}') {
                        return Err(Stop::Invalid);
                    }
                    stack >>= 1;
                    depth -= 1;
                    if depth == 0 {
                        self.i = i;
                        return Ok(());
                    }
                }
                _ => {}
            }
        }
    }

    /// Walks an object's members (cursor at `{`); `f` gets each key with the cursor at its
    /// value and must consume the value. `f` returns `true` to stop the walk early (then the
    /// cursor is left wherever `f` left it).
    pub(crate) fn object(&mut self, f: impl FnMut(&mut Self, RawStr<'a>) -> R<bool>) -> R<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        self.members(f)
    }

    /// The members of an object from the cursor (at a key) to its closing `}`, as
    /// [`object`](Self::object) walks them.
    #[inline]
    fn members(&mut self, mut f: impl FnMut(&mut Self, RawStr<'a>) -> R<bool>) -> R<()> {
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            if f(self, key)? || self.member_end()? {
                return Ok(());
            }
        }
    }

    /// After a member's value: consumes a `,` (`false`: a member follows) or the
    /// closing `}` (`true`).
    #[inline]
    fn member_end(&mut self) -> R<bool> {
        match self.peek()? {
            b',' => {
                self.i += 1;
                Ok(false)
            }
            b'}' => {
                self.i += 1;
                Ok(true)
            }
            _ => Err(Stop::Invalid),
        }
    }

    /// Walks an array's elements (cursor at `[`); `f` must consume each element.
    pub(crate) fn array(&mut self, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Ok(());
        }
        loop {
            f(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// The value of `key` in the object at the cursor, if it is a string; the whole object
    /// is walked and the last occurrence of `key` wins (a later non-string value hides an
    /// earlier string).
    pub(crate) fn last_string(&mut self, key: &[u8]) -> R<Option<RawStr<'a>>> {
        let mut found = None;
        self.object(|c, k| {
            if k.is(key) {
                found = c.string_value()?;
            } else {
                c.skip_value()?;
            }
            Ok(false)
        })?;
        Ok(found)
    }

    /// The first string value of `key` in the object at the cursor; stops reading there,
    /// so what follows need not have arrived (only for response ids: see
    /// [`find_response_id`](crate::body_session::find_response_id)).
    pub(crate) fn first_string(&mut self, key: &[u8]) -> R<Option<RawStr<'a>>> {
        let mut found = None;
        self.object(|c, k| {
            if k.is(key) {
                found = c.string_value()?;
                Ok(found.is_some())
            } else {
                c.skip_value().map(|_| false)
            }
        })?;
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a string found byte by byte (a backslash escapes the next byte): the
    /// reference [`string_end`] is checked against.
    fn string_end_plain(b: &[u8], start: usize) -> R<usize> {
        let mut i = start;
        while i < b.len() {
            match b[i] {
                b'\\' => i += 2,
                b'"' => return Ok(i),
                _ => i += 1,
            }
        }
        Err(Stop::Eof)
    }

    /// A string or container skipped byte by byte with [`string_end_plain`], brackets
    /// counted on a stack: the reference for [`Cursor::skip_value`]. The end of the value,
    /// or why it has none.
    fn skip_plain(b: &[u8], start: usize) -> R<usize> {
        let mut i = start;
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            i += 1;
        }
        let mut open = Vec::new();
        loop {
            let c = *b.get(i).ok_or(Stop::Eof)?;
            i += 1;
            match c {
                b'"' => i = string_end_plain(b, i)? + 1,
                b'[' | b'{' if open.len() == MAX_DEPTH => return Err(Stop::Invalid),
                b'[' | b'{' => open.push(c),
                b']' | b'}' => match open.pop() {
                    Some(o) if (o == b'{') == (c == b'}') => {}
                    _ => return Err(Stop::Invalid),
                },
                _ if open.is_empty() => unreachable!("only strings and containers"),
                _ => {}
            }
            if open.is_empty() {
                return Ok(i);
            }
        }
    }

    /// [`Cursor::skip_value`]'s end of the value at `start`, or why it has none.
    fn skip_fast(b: &[u8], start: usize) -> R<usize> {
        let mut c = Cursor::new(b);
        c.i = start;
        c.skip_value()?;
        Ok(c.i)
    }

    #[test]
    fn block_skip_finds_every_end_around_block_boundaries() {
        // A `\"` first (from then on whole blocks are skipped), then text of every length
        // across two blocks, then a run of backslashes of every length before a quote: an
        // even run ends the string there, an odd run does not (the string then ends at the
        // next quote).
        for pad in 0..=2 * BLOCK + 3 {
            for run in 0..=5 {
                let body = format!(
                    "[\"\\\"{}{}\"{}]",
                    "x".repeat(pad),
                    "\\".repeat(run),
                    if run % 2 == 0 { "" } else { "\"" }
                );
                let b = body.as_bytes();
                assert_eq!(string_end(b, 2), string_end_plain(b, 2), "{body}");
                let want = if run % 2 == 0 {
                    4 + pad + run
                } else {
                    b.len() - 2
                };
                assert_eq!(string_end(b, 2), Ok(want), "{body}");
                assert_eq!(skip_fast(b, 0), Ok(b.len()), "{body}");
                assert_eq!(skip_fast(b, 0), skip_plain(b, 0), "{body}");
            }
        }
        // Unterminated after a `\"`: the end of input inside a block and after the last
        // whole block.
        for pad in [0, 10, BLOCK, 3 * BLOCK + 5] {
            let body = format!("[\"\\\"{}\\\"", "x".repeat(pad));
            assert_eq!(string_end(body.as_bytes(), 2), Err(Stop::Eof), "{body}");
        }
    }

    mod prop {
        use super::*;
        use crate::body_session::scan::scan;
        use crate::extract::body_fields::SESSION_ID;
        use proptest::prelude::{Just, Strategy, any, prop_assert_eq, prop_oneof, proptest};
        use proptest::{collection, sample};

        /// Text that strains the string skip once serialized: quotes (escaped as `\"`),
        /// backslashes alone and in runs (runs of every parity before a quote, or before
        /// the closing quote), brackets, line breaks, non-ASCII, and stretches of plain
        /// text long enough to cross the 64-byte blocks.
        fn tricky_text() -> impl Strategy<Value = String> {
            collection::vec(
                prop_oneof![
                    4 => "[a-z ]{1,70}",
                    3 => Just("\"".to_owned()),
                    2 => collection::vec(Just("\\"), 1..6).prop_map(|v| v.concat()),
                    1 => sample::select(&["[", "]", "{", "}", "[{", "}]", "\n", "é", "\\\""][..])
                        .prop_map(str::to_owned),
                ],
                0..30,
            )
            .prop_map(|v| v.concat())
        }

        fn tricky_json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<i32>().prop_map(|n| serde_json::json!(n)),
                tricky_text().prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                    collection::btree_map(tricky_text(), inner, 0..6)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// JSON-like bytes, not always valid: plain text runs, quotes, backslashes and
        /// brackets in any order.
        fn noise() -> impl Strategy<Value = Vec<u8>> {
            collection::vec(
                prop_oneof![
                    4 => "[a-z]{1,90}",
                    2 => Just("\\\"".to_owned()),
                    2 => Just("\"".to_owned()),
                    2 => collection::vec(Just("\\"), 1..6).prop_map(|v| v.concat()),
                    2 => sample::select(&["[", "]", "{", "}", ",", ":", " "][..])
                        .prop_map(str::to_owned),
                ],
                0..40,
            )
            .prop_map(|v| format!("[{}", v.concat()).into_bytes())
        }

        proptest! {
            #[test]
            fn fast_skip_agrees_with_the_plain_one_on_generated_json(
                v in tricky_json().prop_filter("a string or container", |v| {
                    v.is_string() || v.is_array() || v.is_object()
                }),
            ) {
                for body in [serde_json::to_vec(&v).unwrap(), serde_json::to_vec_pretty(&v).unwrap()] {
                    prop_assert_eq!(skip_fast(&body, 0), Ok(body.len()));
                    prop_assert_eq!(skip_plain(&body, 0), Ok(body.len()));
                    // Every string, wherever it starts (and from inside strings too).
                    for start in 1..=body.len() {
                        prop_assert_eq!(string_end(&body, start), string_end_plain(&body, start));
                    }
                    let doc = serde_json::json!({"messages": [v.clone()], "session_id": "s"});
                    let doc = serde_json::to_vec(&doc).unwrap();
                    let s = scan(&doc, true).unwrap();
                    prop_assert_eq!(s.candidates[SESSION_ID].as_deref(), Some(&b"s"[..]));
                }
            }

            #[test]
            fn fast_skip_agrees_with_the_plain_one_on_noise(body in noise()) {
                prop_assert_eq!(skip_fast(&body, 0), skip_plain(&body, 0));
                for start in 1..=body.len() {
                    prop_assert_eq!(string_end(&body, start), string_end_plain(&body, start));
                }
            }
        }
    }
}

#[cfg(test)]
mod search_tests {
    use super::{find_quote, quote_bits};
    use proptest::prelude::{any, proptest};

    proptest! {
        #[test]
        fn quote_bits_mark_exactly_the_quotes(
            bytes in proptest::array::uniform8(proptest::prop_oneof![
                any::<u8>(),
                proptest::strategy::Just(b'"'),
                proptest::strategy::Just(b'"' ^ 0x80),
                proptest::strategy::Just(b'"' + 1),
            ]),
        ) {
            let naive = bytes
                .iter()
                .enumerate()
                .fold(0u64, |m, (k, &c)| m | (u64::from(c == b'"') << k));
            proptest::prop_assert_eq!(quote_bits(u64::from_le_bytes(bytes)), naive);
        }

        #[test]
        fn inline_search_agrees_with_a_naive_one(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![any::<u8>(), proptest::strategy::Just(b'"'), proptest::strategy::Just(b'\\')],
                0..200,
            ),
            from in 0usize..200,
        ) {
            let from = from.min(bytes.len());
            let naive = bytes[from..].iter().position(|&c| c == b'"').map(|p| from + p);
            proptest::prop_assert_eq!(find_quote(&bytes, from), naive);
        }
    }
}
