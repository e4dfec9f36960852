//! A JSON scanner that reads a handful of fields and skips the rest.
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
//! It is a scanner, not a validator. Where it reads (the top-level object and the
//! objects it descends into: `metadata`, `request`, `conversation`, and for the
//! fingerprint the opening messages) it checks the grammar fully, bare words included
//! (numbers or `true`/`false`/`null`); inside an array or object it only skips, it
//! checks that strings end, brackets balance and match and nesting stays within
//! [`MAX_DEPTH`], and passes over whatever else lies between strings and brackets
//! (commas, colons, words). A body malformed only inside a skipped value may thus be
//! scanned successfully; since the body is forwarded unchanged, the upstream still
//! judges it.
//!
//! Escapes: a string the scanner *reads* (a key it compares, a value it returns) is
//! unescaped exactly (`\uXXXX` with surrogate pairs included); one with an invalid escape
//! or a lone surrogate never matches a field name and is never a session id.
//!
//! Duplicate keys: the last occurrence wins, as in most JSON parsers, at every level the
//! scanner reads (`conversation.id`, `metadata.*`, `request.session_id`, the `session_id`
//! inside Claude's `user_id` string), and a repeated object replaces the earlier one
//! whole. The one exception is [`find_response_id`]: it stops at the first `id` of a
//! response, so that it can answer from a response's first bytes.

use std::borrow::Cow;
use std::hash::Hasher;

use http::HeaderValue;

use crate::extract::{DEFAULT_MAX_SESSION_ID_LEN, InvalidSessionId, SessionId, validate};

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

type R<T> = Result<T, Stop>;

/// A string as it appears between its quotes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawStr<'a> {
    raw: &'a [u8],
}

impl<'a> RawStr<'a> {
    /// Whether the string holds an escape (only asked of the few strings that are read).
    fn escaped(self) -> bool {
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
    fn is(self, name: &[u8]) -> bool {
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
fn scalar_ok(tok: &[u8]) -> bool {
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

    #[inline]
    fn peek(&mut self) -> R<u8> {
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
    fn at_end(&mut self) -> bool {
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

    fn string(&mut self) -> R<RawStr<'a>> {
        self.eat(b'"')?;
        self.string_body()
    }

    /// The next value if it is a string; any other value is skipped and gives `None`.
    fn string_value(&mut self) -> R<Option<RawStr<'a>>> {
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
    fn object(&mut self, f: impl FnMut(&mut Self, RawStr<'a>) -> R<bool>) -> R<()> {
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
    fn array(&mut self, mut f: impl FnMut(&mut Self) -> R<()>) -> R<()> {
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
    fn last_string(&mut self, key: &[u8]) -> R<Option<RawStr<'a>>> {
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
    /// [`find_response_id`]).
    fn first_string(&mut self, key: &[u8]) -> R<Option<RawStr<'a>>> {
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

/// The body fields a session id is read from, in priority order.
pub(crate) const FIELDS: [&str; 10] = [
    "conversation",
    "conversation.id",
    "metadata.user_id",
    "prompt_cache_key",
    "session_id",
    "sessionId",
    "litellm_session_id",
    "metadata.session_id",
    "request.session_id",
    "user_prompt_id",
];

const CONVERSATION: usize = 0;
const CONVERSATION_ID: usize = 1;
const METADATA_USER_ID: usize = 2;
const PROMPT_CACHE_KEY: usize = 3;
const SESSION_ID: usize = 4;
const SESSION_ID_CAMEL: usize = 5;
const LITELLM_SESSION_ID: usize = 6;
const METADATA_SESSION_ID: usize = 7;
const REQUEST_SESSION_ID: usize = 8;
const USER_PROMPT_ID: usize = 9;

/// The separator between Gemini CLI's session id and its prompt counter in `user_prompt_id`.
const PROMPT_ID_SEPARATOR: &[u8] = b"########";

/// A field whose value is not a valid session id, and why.
pub(crate) type Rejected = (&'static str, InvalidSessionId);

/// What a complete request body yielded, before validation.
#[derive(Default, Debug)]
pub(crate) struct Scanned<'a> {
    /// Candidates per field (index into [`FIELDS`]); the last occurrence of a key wins.
    pub(crate) candidates: [Option<Cow<'a, [u8]>>; FIELDS.len()],
    pub(crate) previous_response_id: Option<Cow<'a, [u8]>>,
    /// The top-level `store` member, when it is `true` or `false`.
    pub(crate) store: Option<bool>,
    /// The top-level `model` string.
    pub(crate) model: Option<Cow<'a, [u8]>>,
    /// The fingerprint's inputs, when asked for: the system prompt's value and the first
    /// user message's content, as raw JSON.
    pub(crate) system: Option<&'a [u8]>,
    pub(crate) first_user: Option<&'a [u8]>,
}

impl<'a> Scanned<'a> {
    /// The first candidate in priority order that is a valid session id, and the first
    /// rejected one before it (for a debug event).
    pub(crate) fn session(
        &self,
        max_len: usize,
    ) -> (Option<(SessionId, &'static str)>, Option<Rejected>) {
        let mut rejected = None;
        for (i, c) in self.candidates.iter().enumerate() {
            let Some(v) = c else { continue };
            match session_id(v, max_len) {
                Ok(id) => return (Some((id, FIELDS[i])), rejected),
                Err(reason) => {
                    rejected.get_or_insert((FIELDS[i], reason));
                }
            }
        }
        (None, rejected)
    }
}

/// `bytes` as a session id of at most `max_len` bytes, validated once (by
/// [`SessionId::from_header_value`]; `HeaderValue`'s own check rejects nothing it would
/// accept).
pub(crate) fn session_id(bytes: &[u8], max_len: usize) -> Result<SessionId, InvalidSessionId> {
    // Too long: rejected before `HeaderValue` copies it.
    if bytes.len() > max_len {
        return Err(InvalidSessionId::TooLong);
    }
    let value = HeaderValue::from_bytes(bytes).map_err(|_| InvalidSessionId::Byte)?;
    SessionId::from_header_value(value, max_len)
}

/// A read string's value, unescaped (a copy only if it holds escapes; its length is
/// bounded by the buffered body's).
fn read(s: Option<RawStr<'_>>) -> Option<Cow<'_, [u8]>> {
    s?.unescaped()
}

/// The session part of a Claude Code `metadata.user_id`: either
/// `user_<hash>_account_<uuid>_session_<uuid>` or a JSON string holding an object with a
/// `session_id` member. A user id without a session part is not a session.
fn claude_session(user_id: &[u8]) -> Option<Cow<'static, [u8]>> {
    let trimmed = user_id.trim_ascii_start();
    if trimmed.first() == Some(&b'{') {
        let mut c = Cursor::new(trimmed);
        let s = c.last_string(b"session_id").ok()??;
        return read(Some(s)).map(|v| Cow::Owned(v.into_owned()));
    }
    let at = memchr::memmem::rfind(user_id, b"_session_")?;
    Some(Cow::Owned(user_id[at + b"_session_".len()..].to_vec()))
}

fn gemini_session(prompt_id: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(prompt_id, PROMPT_ID_SEPARATOR)?;
    Some(&prompt_id[..at])
}

/// Scans a complete request body. `fingerprint` asks for the fingerprint's inputs too.
pub(crate) fn scan(body: &[u8], fingerprint: bool) -> Result<Scanned<'_>, Stop> {
    let mut out = Scanned::default();
    let mut c = Cursor::new(body);
    let first = c.peek().map_err(|_| Stop::Invalid)?;
    if first != b'{' {
        // Valid JSON that is not an object has none of our fields.
        if !matches!(first, b'"' | b'[') {
            // A bare scalar: the whole body is the token.
            return if scalar_ok(body.trim_ascii()) {
                Ok(out)
            } else {
                Err(Stop::Invalid)
            };
        }
        c.skip_value()?;
        return if c.at_end() {
            Ok(out)
        } else {
            Err(Stop::Invalid)
        };
    }
    let mut system = None;
    let mut instructions = None;
    let mut system_message = None;
    c.object(|c, key| {
        let k = if key.escaped() {
            match key.unescaped() {
                Some(k) => k,
                None => return c.skip_value().map(|_| false),
            }
        } else {
            Cow::Borrowed(key.raw)
        };
        match &*k {
            // A repeated object key replaces the earlier value whole, as in a DOM: what an
            // earlier `conversation`, `metadata` or `request` held is forgotten first.
            b"conversation" => {
                out.candidates[CONVERSATION] = None;
                out.candidates[CONVERSATION_ID] = None;
                if c.peek()? == b'{' {
                    out.candidates[CONVERSATION_ID] = read(c.last_string(b"id")?);
                } else {
                    out.candidates[CONVERSATION] = read(c.string_value()?);
                }
            }
            b"metadata" => {
                out.candidates[METADATA_USER_ID] = None;
                out.candidates[METADATA_SESSION_ID] = None;
                if c.peek()? != b'{' {
                    c.skip_value()?;
                    return Ok(false);
                }
                c.object(|c, k| {
                    if k.is(b"user_id") {
                        out.candidates[METADATA_USER_ID] =
                            read(c.string_value()?).and_then(|v| claude_session(&v));
                    } else if k.is(b"session_id") {
                        out.candidates[METADATA_SESSION_ID] = read(c.string_value()?);
                    } else {
                        c.skip_value()?;
                    }
                    Ok(false)
                })?;
            }
            b"request" => {
                out.candidates[REQUEST_SESSION_ID] = None;
                if c.peek()? != b'{' {
                    c.skip_value()?;
                    return Ok(false);
                }
                c.object(|c, k| {
                    if k.is(b"session_id") {
                        out.candidates[REQUEST_SESSION_ID] = read(c.string_value()?);
                    } else {
                        c.skip_value()?;
                    }
                    Ok(false)
                })?;
            }
            b"prompt_cache_key" => out.candidates[PROMPT_CACHE_KEY] = read(c.string_value()?),
            b"session_id" => out.candidates[SESSION_ID] = read(c.string_value()?),
            b"sessionId" => out.candidates[SESSION_ID_CAMEL] = read(c.string_value()?),
            b"litellm_session_id" => {
                out.candidates[LITELLM_SESSION_ID] = read(c.string_value()?);
            }
            b"user_prompt_id" => {
                out.candidates[USER_PROMPT_ID] = read(c.string_value()?).and_then(|v| match v {
                    Cow::Borrowed(b) => gemini_session(b).map(Cow::Borrowed),
                    Cow::Owned(o) => gemini_session(&o).map(|s| Cow::Owned(s.to_vec())),
                });
            }
            b"previous_response_id" => out.previous_response_id = read(c.string_value()?),
            b"model" => out.model = read(c.string_value()?),
            // A bare word, checked as any skipped scalar is: only its bytes are compared.
            b"store" => {
                out.store = match c.skip_value()? {
                    b"true" => Some(true),
                    b"false" => Some(false),
                    _ => None,
                };
            }
            b"system" if fingerprint => system = Some(c.skip_value()?),
            b"instructions" if fingerprint => instructions = Some(c.skip_value()?),
            b"messages" | b"input" if fingerprint => {
                if c.peek()? == b'"' {
                    // Responses API: `input` may be the user's text itself.
                    out.first_user.get_or_insert(c.skip_value()?);
                } else if c.peek()? == b'[' {
                    c.opening_messages(&mut system_message, &mut out.first_user)?;
                } else {
                    c.skip_value()?;
                }
            }
            _ => {
                c.skip_value()?;
            }
        }
        Ok(false)
    })?;
    if !c.at_end() {
        return Err(Stop::Invalid);
    }
    out.system = system.or(instructions).or(system_message);
    Ok(out)
}

impl<'a> Cursor<'a> {
    /// Walks a `messages` / `input` array, recording the content of the first
    /// `system`/`developer` message and of the first `user` message.
    fn opening_messages(
        &mut self,
        system: &mut Option<&'a [u8]>,
        user: &mut Option<&'a [u8]>,
    ) -> R<()> {
        self.array(|c| {
            if user.is_some() || c.peek()? != b'{' {
                return c.skip_value().map(drop);
            }
            let mut role = None;
            let mut content = None;
            c.object(|c, k| {
                if k.is(b"role") {
                    role = c.string_value()?;
                } else if k.is(b"content") {
                    content = Some(c.skip_value()?);
                } else {
                    c.skip_value()?;
                }
                Ok(false)
            })?;
            match (role, content) {
                (Some(r), Some(v)) if r.is(b"user") => *user = Some(v),
                (Some(r), Some(v)) if r.is(b"system") || r.is(b"developer") => {
                    system.get_or_insert(v);
                }
                _ => {}
            }
            Ok(())
        })
    }
}

/// Feeds the text of a prompt value into `h`: a string as it is, or the `text` members of
/// an array of content blocks (other members, such as `cache_control`, which clients move
/// from turn to turn, are left out).
pub(crate) fn hash_text(value: &[u8], h: &mut impl Hasher) {
    fn piece(h: &mut impl Hasher, s: RawStr<'_>) {
        h.write_usize(s.raw.len());
        h.write(s.raw);
    }
    let mut c = Cursor::new(value);
    let _ = (|| -> R<()> {
        match c.peek()? {
            b'"' => {
                c.i += 1;
                piece(h, c.string_body()?);
            }
            b'[' => c.array(|c| {
                match c.peek()? {
                    b'"' => {
                        c.i += 1;
                        piece(h, c.string_body()?);
                    }
                    b'{' => c.object(|c, k| {
                        if k.is(b"text") {
                            if let Some(s) = c.string_value()? {
                                piece(h, s);
                            }
                        } else {
                            c.skip_value()?;
                        }
                        Ok(false)
                    })?,
                    _ => {
                        c.skip_value()?;
                    }
                }
                Ok(())
            })?,
            _ => {}
        }
        Ok(())
    })();
}

/// What [`find_response_id`] found in the first bytes of a response body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseIdScan<'a> {
    /// A Responses API id (`resp_…`), borrowed from the input.
    Found(&'a str),
    /// The bytes seen so far end before the answer: call again with more.
    NeedMore,
    /// This response carries no Responses API id where one is looked for.
    Absent,
}

/// Finds the Responses API id (`resp_…`) of a response from its first bytes, without
/// copying them.
///
/// Looked for: the top-level `"id"` of a JSON body, or `response.id` in the data of an SSE
/// stream's first event when that event is `response.created` (by its `event:` line or its
/// `type` member). The scan stops at the id, so the rest of the event (a
/// `response.created` event repeats the request's instructions and tools, often many KiB)
/// need not have arrived; for the same reason the first `id` counts, not a repeated one
/// after it (an upstream's response does not repeat its id). An id that is not 1–256
/// bytes of visible ASCII, or that holds a JSON escape, counts as absent.
///
/// [`NeedMore`](ResponseIdScan::NeedMore) asks for the bytes seen so far plus the next
/// frame; bound what you keep for it (OpenAI's streams name the id within their first
/// few hundred bytes, so a few KiB is plenty) and give up past that bound. Each call
/// scans from the start: it is meant for the first frame or two of a response.
///
/// ```
/// use tower_sticky_session::body_session::{ResponseIdScan, find_response_id};
///
/// let sse = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_abc\",\"object\":\"resp";
/// assert_eq!(find_response_id(sse), ResponseIdScan::Found("resp_abc"));
/// assert_eq!(find_response_id(b"event: response.created\ndata: {\"type\":\"resp"), ResponseIdScan::NeedMore);
/// assert_eq!(find_response_id(b"{\"id\":\"chatcmpl-1\"}"), ResponseIdScan::Absent);
/// ```
pub fn find_response_id(prefix: &[u8]) -> ResponseIdScan<'_> {
    let start = prefix.iter().position(|c| !c.is_ascii_whitespace());
    let Some(start) = start else {
        return ResponseIdScan::NeedMore;
    };
    let rest = &prefix[start..];
    if rest[0] == b'{' {
        let mut c = Cursor::new(rest);
        return response_id(c.first_string(b"id"));
    }
    sse_response_id(rest)
}

fn response_id(found: R<Option<RawStr<'_>>>) -> ResponseIdScan<'_> {
    match found {
        Err(Stop::Eof) => ResponseIdScan::NeedMore,
        Err(Stop::Invalid) | Ok(None) => ResponseIdScan::Absent,
        Ok(Some(s)) => {
            if s.escaped()
                || !s.raw.starts_with(b"resp_")
                || validate(s.raw, DEFAULT_MAX_SESSION_ID_LEN).is_err()
            {
                return ResponseIdScan::Absent;
            }
            // Visible ASCII, so valid UTF-8.
            match std::str::from_utf8(s.raw) {
                Ok(id) => ResponseIdScan::Found(id),
                Err(_) => ResponseIdScan::Absent,
            }
        }
    }
}

const CREATED: &[u8] = b"response.created";

fn sse_response_id(mut rest: &[u8]) -> ResponseIdScan<'_> {
    let mut named = false;
    loop {
        if let Some(data) = rest.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if let Some(found) = sse_data_unbounded(data, named) {
                return found;
            }
        }
        let (line, next) = match memchr::memchr(b'\n', rest) {
            Some(n) => (&rest[..n], Some(&rest[n + 1..])),
            None => (rest, None),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(data) = line.strip_prefix(b"data:") {
            let data = data.strip_prefix(b" ").unwrap_or(data);
            return sse_data(data, named);
        }
        let Some(next) = next else {
            // An incomplete line that is not data: wait for the rest of it, unless it
            // cannot start a line of the first event.
            let fits = line.is_empty()
                || line[0] == b':'
                || [&b"event:"[..], b"id:", b"retry:", b"data:"]
                    .iter()
                    .any(|f| f.starts_with(line) || line.starts_with(f));
            return if fits {
                ResponseIdScan::NeedMore
            } else {
                ResponseIdScan::Absent
            };
        };
        if line.is_empty()
            || line[0] == b':'
            || line.starts_with(b"id:")
            || line.starts_with(b"retry:")
        {
            // Blank line before any data, comment, or a field that does not matter.
        } else if let Some(name) = line.strip_prefix(b"event:") {
            if name.trim_ascii() != CREATED {
                return ResponseIdScan::Absent;
            }
            named = true;
        } else {
            return ResponseIdScan::Absent;
        }
        rest = next;
    }
}

/// [`sse_data`] on a `data:` line whose end has not been looked for: the walk runs over
/// the rest of the input and its answer stands if it stopped without crossing a line
/// break (it then read the same bytes the line-bounded walk would). `None`: walk the line.
///
/// This spares the search for the end of a line that may be many KiB long (a
/// `response.created` event repeats the request's instructions and tools) when the id is
/// near its start.
fn sse_data_unbounded(data: &[u8], named: bool) -> Option<ResponseIdScan<'_>> {
    let walk = sse_walk(data);
    walk.result.ok()?;
    if memchr::memchr(b'\n', &data[..walk.end]).is_some() {
        return None;
    }
    Some(walk.answer(named))
}

fn sse_data(data: &[u8], named: bool) -> ResponseIdScan<'_> {
    sse_walk(data).answer(named)
}

/// A walk of the first event's data for `type` and `response.id`.
struct SseWalk<'a> {
    result: R<()>,
    typed: bool,
    found: Option<R<Option<RawStr<'a>>>>,
    /// Where the walk stopped.
    end: usize,
}

impl<'a> SseWalk<'a> {
    fn answer(self, named: bool) -> ResponseIdScan<'a> {
        match (self.result, self.found) {
            (Err(Stop::Eof), _) => ResponseIdScan::NeedMore,
            (Err(Stop::Invalid), _) => ResponseIdScan::Absent,
            (Ok(()), Some(f)) if named || self.typed => response_id(f),
            _ => ResponseIdScan::Absent,
        }
    }
}

fn sse_walk(data: &[u8]) -> SseWalk<'_> {
    let mut c = Cursor::new(data);
    let mut typed = false;
    let mut found = None;
    let result = c.object(|c, k| {
        if k.is(b"type") {
            match c.string_value()? {
                Some(t) if t.is(CREATED) => typed = true,
                _ => return Err(Stop::Invalid),
            }
            Ok(false)
        } else if k.is(b"response") && c.peek()? == b'{' {
            found = Some(c.first_string(b"id"));
            Ok(true)
        } else {
            c.skip_value().map(|_| false)
        }
    });
    SseWalk {
        result,
        typed,
        found,
        end: c.i,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The winning session (field, id) of a body.
    fn session(body: &str) -> Option<(&'static str, String)> {
        let s = scan(body.as_bytes(), false).expect("valid JSON");
        let (found, _) = s.session(256);
        found.map(|(v, f)| (f, v.as_str().to_owned()))
    }

    fn invalid(body: &[u8]) -> bool {
        scan(body, false).is_err()
    }

    #[test]
    fn each_field_is_read_on_its_own() {
        let cases = [
            (r#"{"conversation":"conv_1"}"#, "conversation", "conv_1"),
            (
                r#"{"conversation":{"id":"conv_2"}}"#,
                "conversation.id",
                "conv_2",
            ),
            (
                r#"{"metadata":{"user_id":"user_ab12_account_c3d4_session_5e6f"}}"#,
                "metadata.user_id",
                "5e6f",
            ),
            (r#"{"prompt_cache_key":"pck"}"#, "prompt_cache_key", "pck"),
            (r#"{"session_id":"sid"}"#, "session_id", "sid"),
            (r#"{"sessionId":"camel"}"#, "sessionId", "camel"),
            (
                r#"{"litellm_session_id":"lls"}"#,
                "litellm_session_id",
                "lls",
            ),
            (
                r#"{"metadata":{"session_id":"msid"}}"#,
                "metadata.session_id",
                "msid",
            ),
            (
                r#"{"request":{"session_id":"rsid"}}"#,
                "request.session_id",
                "rsid",
            ),
            (
                "{\"user_prompt_id\":\"g-sess########7\"}",
                "user_prompt_id",
                "g-sess",
            ),
        ];
        for (body, field, id) in cases {
            assert_eq!(session(body), Some((field, id.to_string())), "{body}");
        }
    }

    #[test]
    fn fields_win_in_priority_order_whatever_their_position() {
        // All fields present, in reverse priority order in the body.
        let all = concat!(
            "{\"user_prompt_id\":\"i########1\",",
            r#""request":{"session_id":"h"},
            "metadata":{"session_id":"g","user_id":"user_x_account_y_session_c"},
            "litellm_session_id":"f","sessionId":"e","session_id":"d","prompt_cache_key":"b",
            "conversation":"a"}"#
        );
        assert_eq!(session(all), Some(("conversation", "a".into())));
        let without = all.replace(r#""conversation":"a""#, r#""x":1"#);
        assert_eq!(session(&without), Some(("metadata.user_id", "c".into())));
        let without = without.replace("_session_c", "");
        assert_eq!(session(&without), Some(("prompt_cache_key", "b".into())));
        let without = without.replace(r#""prompt_cache_key":"b""#, r#""y":2"#);
        assert_eq!(session(&without), Some(("session_id", "d".into())));
    }

    #[test]
    fn conversation_object_id_is_found_among_other_members() {
        let body = r#"{"conversation":{"object":"conversation","id":"conv_9","meta":{"id":"no"}},"prompt_cache_key":"p"}"#;
        assert_eq!(session(body), Some(("conversation.id", "conv_9".into())));
        // An object without an id is no session; the next field wins.
        let body = r#"{"conversation":{"object":"conversation"},"prompt_cache_key":"p"}"#;
        assert_eq!(session(body), Some(("prompt_cache_key", "p".into())));
    }

    #[test]
    fn claude_user_id_json_string_form_gives_its_session_id() {
        let inner = r#"{"device_id":"d1","account_uuid":"a2","session_id":"4f6e-uuid"}"#;
        let body = serde_json::json!({"metadata": {"user_id": inner}}).to_string();
        assert!(
            body.contains(r#"\"session_id\""#),
            "the inner JSON is escaped: {body}"
        );
        assert_eq!(
            session(&body),
            Some(("metadata.user_id", "4f6e-uuid".into()))
        );
    }

    #[test]
    fn claude_user_id_without_session_part_is_not_a_session() {
        for user_id in [
            "user_4b1d7c",
            "user_4b1d_account_9e0c",
            r#"{"device_id":"d1","account_uuid":"a2"}"#,
            r#"{"device_id":"d1","session_id":null}"#,
        ] {
            let body = serde_json::json!({"metadata": {"user_id": user_id}}).to_string();
            assert_eq!(session(&body), None, "{user_id}");
            // ... and does not hide a lower-priority field.
            let body = serde_json::json!({"metadata": {"user_id": user_id}, "session_id": "s"})
                .to_string();
            assert_eq!(
                session(&body),
                Some(("session_id", "s".into())),
                "{user_id}"
            );
        }
        // An empty session part is invalid, and falls through too.
        let body = r#"{"metadata":{"user_id":"user_a_account_b_session_"},"session_id":"s"}"#;
        assert_eq!(session(body), Some(("session_id", "s".into())));
    }

    #[test]
    fn user_prompt_id_without_separator_is_not_a_session() {
        assert_eq!(session(r#"{"user_prompt_id":"abc#1"}"#), None);
        assert_eq!(session("{\"user_prompt_id\":\"########1\"}"), None);
    }

    #[test]
    fn long_escaped_value_is_judged_unescaped() {
        // 6000 bytes of escapes are 1000 bytes unescaped: too long for 256, valid for 2000.
        let body = format!(r#"{{"session_id":"{}"}}"#, "\\u0041".repeat(1000));
        let scanned = scan(body.as_bytes(), false).unwrap();
        assert_eq!(
            scanned.session(256).1.map(|r| r.1),
            Some(InvalidSessionId::TooLong)
        );
        let (found, _) = scanned.session(2000);
        assert_eq!(found.map(|(v, _)| v.as_str().len()), Some(1000));
    }

    #[test]
    fn invalid_value_falls_through_to_the_next_field_and_is_reported() {
        let long = "x".repeat(257);
        let body = format!(r#"{{"prompt_cache_key":"{long}","session_id":"ok"}}"#);
        let s = scan(body.as_bytes(), false).unwrap();
        let (found, rejected) = s.session(256);
        assert_eq!(found.map(|f| f.1), Some("session_id"));
        assert_eq!(
            rejected,
            Some(("prompt_cache_key", InvalidSessionId::TooLong))
        );
        let body = r#"{"prompt_cache_key":"has space","session_id":""}"#;
        let scanned = scan(body.as_bytes(), false).unwrap();
        let (found, rejected) = scanned.session(256);
        assert!(found.is_none());
        assert_eq!(rejected, Some(("prompt_cache_key", InvalidSessionId::Byte)));
    }

    #[test]
    fn values_of_other_types_are_ignored() {
        for v in ["1", "null", "true", "[\"a\"]", "{\"id\":\"x\"}", "-1.5e3"] {
            let body = format!(r#"{{"prompt_cache_key":{v},"session_id":"s"}}"#);
            assert_eq!(session(&body), Some(("session_id", "s".into())), "{v}");
        }
        // metadata / request that are not objects.
        assert_eq!(
            session(r#"{"metadata":"m","request":[1],"sessionId":"c"}"#),
            Some(("sessionId", "c".into()))
        );
    }

    #[test]
    fn escapes_in_values_are_unescaped_before_validation() {
        assert_eq!(
            session(r#"{"session_id":"a\/b\u0041"}"#),
            Some(("session_id", "a/bA".into()))
        );
        // An escape that decodes to a space or control character is not a valid id.
        let scanned = scan(br#"{"session_id":"a\u0020b"}"#, false).unwrap();
        let (found, rejected) = scanned.session(256);
        assert!(found.is_none());
        assert_eq!(rejected.unwrap().1, InvalidSessionId::Byte);
        // Non-ASCII (even written as an escape) is not a valid id.
        assert_eq!(session(r#"{"session_id":"caf\u00e9"}"#), None);
        // Invalid escapes and lone surrogates never count.
        for v in [
            r#"a\x"#,
            r#"a\u12"#,
            r#"a\ud800"#,
            r#"a\udc00b"#,
            r#"a\ud800\u0041"#,
        ] {
            let body = format!(r#"{{"session_id":"{v}","sessionId":"next"}}"#);
            assert_eq!(session(&body), Some(("sessionId", "next".into())), "{v}");
        }
    }

    #[test]
    fn escaped_keys_match_their_unescaped_names() {
        assert_eq!(
            session(r#"{"prompt\u005fcache_key":"p"}"#),
            Some(("prompt_cache_key", "p".into()))
        );
        assert_eq!(
            session(r#"{"meta\u0064ata":{"session\u005fid":"m"}}"#),
            Some(("metadata.session_id", "m".into()))
        );
        // An escaped quote inside a key is part of it.
        assert_eq!(session(r#"{"session_id\"":"x"}"#), None);
    }

    #[test]
    fn last_occurrence_of_a_repeated_key_wins() {
        assert_eq!(
            session(r#"{"session_id":"first","session_id":"second"}"#),
            Some(("session_id", "second".into()))
        );
        // Inside the objects the scanner reads, too.
        assert_eq!(
            session(r#"{"conversation":{"id":"c1","object":"conversation","id":"c2"}}"#),
            Some(("conversation.id", "c2".into()))
        );
        assert_eq!(
            session(r#"{"metadata":{"session_id":"m1","session_id":"m2"}}"#),
            Some(("metadata.session_id", "m2".into()))
        );
        assert_eq!(
            session(r#"{"request":{"session_id":"r1","session_id":"r2"}}"#),
            Some(("request.session_id", "r2".into()))
        );
        // ... and inside Claude's JSON-string `user_id`.
        let inner = r#"{"session_id":"u1","device_id":"d","session_id":"u2"}"#;
        let body = serde_json::json!({"metadata": {"user_id": inner}}).to_string();
        assert_eq!(session(&body), Some(("metadata.user_id", "u2".into())));
        // A later value that is not a string hides an earlier one.
        assert_eq!(
            session(r#"{"conversation":{"id":"c1","id":null},"session_id":"s"}"#),
            Some(("session_id", "s".into()))
        );
        assert_eq!(
            session(
                r#"{"metadata":{"user_id":"user_a_account_b_session_u1","user_id":7},"session_id":"s"}"#
            ),
            Some(("session_id", "s".into()))
        );
    }

    #[test]
    fn a_repeated_object_replaces_the_earlier_one_whole() {
        // As in a DOM: the second `metadata` has no `session_id`, so there is none.
        assert_eq!(
            session(
                r#"{"metadata":{"session_id":"m1"},"metadata":{"user_id":"x"},"sessionId":"c"}"#
            ),
            Some(("sessionId", "c".into()))
        );
        assert_eq!(
            session(r#"{"request":{"session_id":"r1"},"request":null}"#),
            None
        );
        // `conversation` as a string, then as an object: the object's id.
        assert_eq!(
            session(r#"{"conversation":"conv_a","conversation":{"id":"conv_b"}}"#),
            Some(("conversation.id", "conv_b".into()))
        );
        assert_eq!(
            session(r#"{"conversation":{"id":"conv_b"},"conversation":"conv_a"}"#),
            Some(("conversation", "conv_a".into()))
        );
        // The same bodies through serde_json agree.
        for body in [
            r#"{"metadata":{"session_id":"m1"},"metadata":{"user_id":"x"}}"#,
            r#"{"conversation":"conv_a","conversation":{"id":"conv_b"}}"#,
        ] {
            let v: serde_json::Value = serde_json::from_str(body).unwrap();
            let dom = v["metadata"]["session_id"]
                .as_str()
                .or(v["conversation"]["id"].as_str());
            let ours = session(body).map(|(_, id)| id);
            assert_eq!(ours.as_deref(), dom, "{body}");
        }
    }

    #[test]
    fn a_response_id_is_the_first_one() {
        // The documented exception: the scan stops at the first `id`.
        assert_eq!(
            found(br#"{"id":"resp_1","object":"response","id":"resp_2"}"#),
            ResponseIdScan::Found("resp_1")
        );
    }

    #[test]
    fn nested_fields_are_not_read_at_the_wrong_level() {
        let body = r#"{"messages":[{"role":"user","content":"x","session_id":"nested","prompt_cache_key":"n2"}],
            "tools":[{"metadata":{"session_id":"deep"}}],"input":{"request":{"session_id":"deeper"}}}"#;
        assert_eq!(session(body), None);
        // A key inside a string is just text.
        assert_eq!(session(r#"{"text":"\"session_id\":\"fake\""}"#), None);
    }

    #[test]
    fn top_level_store_is_read_when_it_is_a_boolean() {
        let store = |body: &str| scan(body.as_bytes(), false).expect("valid JSON").store;
        assert_eq!(
            store(r#"{"model":"gpt-5","store":false,"input":"hi"}"#),
            Some(false)
        );
        assert_eq!(store(r#"{"store" : true}"#), Some(true));
        assert_eq!(store(r#"{"input":"hi"}"#), None);
        // Not a boolean, nested, or escaped key: as JSON has it.
        assert_eq!(store(r#"{"store":"false"}"#), None);
        assert_eq!(store(r#"{"store":null}"#), None);
        assert_eq!(store(r#"{"metadata":{"store":false}}"#), None);
        assert_eq!(store(r#"{"store":false}"#), Some(false));
        // The last occurrence wins, as for every field.
        assert_eq!(store(r#"{"store":false,"store":true}"#), Some(true));
        assert_eq!(store(r#"{"store":true,"store":false}"#), Some(false));
        // A misspelt word is still invalid JSON.
        assert!(invalid(br#"{"store":fals}"#));
    }

    #[test]
    fn the_top_level_model_is_read_and_the_last_one_wins() {
        let model = |b: &str| {
            scan(b.as_bytes(), false)
                .unwrap()
                .model
                .map(|m| m.into_owned())
        };
        assert_eq!(
            model(r#"{"model":"gpt-5","input":"hi"}"#),
            Some(b"gpt-5".to_vec())
        );
        assert_eq!(model(r#"{"metadata":{"model":"x"}}"#), None);
        assert_eq!(model(r#"{"model":"a","model":"b"}"#), Some(b"b".to_vec()));
        assert_eq!(model(r#"{"model":"gpt\u002d5"}"#), Some(b"gpt-5".to_vec()));
        assert_eq!(model(r#"{"model":5}"#), None);
    }

    #[test]
    fn previous_response_id_is_read_separately() {
        let s = scan(
            br#"{"previous_response_id":"resp_123","input":"hi"}"#,
            false,
        )
        .unwrap();
        assert_eq!(s.previous_response_id.as_deref(), Some(&b"resp_123"[..]));
        assert_eq!(s.session(256).0, None);
    }

    #[test]
    fn non_object_json_has_no_fields_but_is_valid() {
        for body in [
            "[1,2,{\"session_id\":\"x\"}]",
            "\"session_id\"",
            "42 ",
            "null",
        ] {
            let s = scan(body.as_bytes(), false).expect(body);
            assert!(s.session(256).0.is_none());
        }
    }

    #[test]
    fn malformed_bodies_are_invalid() {
        for body in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"a\":",
            b"{\"a\":1",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{a:1}",
            b"{\"a\":1}}",
            b"{\"a\":1} x",
            b"{\"a\":[1,2}",
            b"{\"a\":{\"b\":1]}",
            b"{\"a\":tru}",
            b"{\"a\":nope}",
            b"{\"a\":\"unterminated}",
            b"{\"a\":\"ends in escape\\",
            b"{\"session_id\":\"x\"",
            b"\xff\xfe",
            b"data: {}",
        ] {
            assert!(invalid(body), "{:?}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_invalid() {
        let ok = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH),
            "]".repeat(MAX_DEPTH)
        );
        assert!(!invalid(ok.as_bytes()));
        let deep = format!(
            "{{\"a\":{}{}}}",
            "[".repeat(MAX_DEPTH + 1),
            "]".repeat(MAX_DEPTH + 1)
        );
        assert!(invalid(deep.as_bytes()));
        // Far deeper input fails fast, without recursion.
        let huge = format!("{{\"a\":{}", "[".repeat(1_000_000));
        assert!(invalid(huge.as_bytes()));
    }

    #[test]
    fn a_skipped_container_is_checked_for_strings_and_brackets_only() {
        // What lies between strings and brackets inside a skipped value is passed over...
        assert!(!invalid(br#"{"a":[nope,:,{"k" 1}],"session_id":"s"}"#));
        // ... but a bare word the scanner reads is checked.
        assert!(invalid(br#"{"a":nope,"session_id":"s"}"#));
    }

    #[test]
    fn whitespace_everywhere_is_accepted() {
        let body = " \n{ \"metadata\" :\t{ \"session_id\" : \"m\" } ,\r\n \"x\" : [ 1 , { } ] } \n";
        assert_eq!(session(body), Some(("metadata.session_id", "m".into())));
    }

    #[test]
    fn fingerprint_inputs_are_found_in_each_api_shape() {
        let anthropic = br#"{"system":[{"type":"text","text":"S"}],"messages":[{"role":"user","content":"U"},{"role":"user","content":"U2"}]}"#;
        let s = scan(anthropic, true).unwrap();
        assert_eq!(s.system, Some(&br#"[{"type":"text","text":"S"}]"#[..]));
        assert_eq!(s.first_user, Some(&br#""U""#[..]));
        let chat = br#"{"messages":[{"role":"developer","content":"D"},{"role":"assistant","content":"A"},{"content":"U","role":"user"}]}"#;
        let s = scan(chat, true).unwrap();
        assert_eq!(s.system, Some(&br#""D""#[..]));
        assert_eq!(s.first_user, Some(&br#""U""#[..]));
        let responses = br#"{"instructions":"I","input":[{"type":"message","role":"user","content":[{"type":"input_text","text":"U"}]}]}"#;
        let s = scan(responses, true).unwrap();
        assert_eq!(s.system, Some(&br#""I""#[..]));
        assert_eq!(
            s.first_user,
            Some(&br#"[{"type":"input_text","text":"U"}]"#[..])
        );
        let s = scan(br#"{"input":"just text"}"#, true).unwrap();
        assert_eq!(s.first_user, Some(&br#""just text""#[..]));
        // Not asked for: not collected.
        let s = scan(anthropic, false).unwrap();
        assert!(s.system.is_none() && s.first_user.is_none());
    }

    #[test]
    fn hash_text_ignores_members_other_than_text() {
        use std::hash::{DefaultHasher, Hasher};
        let h = |v: &[u8]| {
            let mut h = DefaultHasher::new();
            hash_text(v, &mut h);
            h.finish()
        };
        let a = h(br#"[{"type":"text","text":"hello"}]"#);
        let b = h(br#"[{"type":"text","text":"hello","cache_control":{"type":"ephemeral"}}]"#);
        let c = h(br#"[{"type":"text","text":"hellO"}]"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Two pieces are not one concatenated piece.
        assert_ne!(h(br#"["ab","c"]"#), h(br#"["a","bc"]"#));
    }

    fn found(prefix: &[u8]) -> ResponseIdScan<'_> {
        find_response_id(prefix)
    }

    const CREATED_EVENT: &str = "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_0a1b2c\",\"object\":\"response\",\"status\":\"in_progress\",\"instructions\":\"long...\"}}\n\n";

    #[test]
    fn response_id_of_a_json_body() {
        assert_eq!(
            found(br#"{"id":"resp_68af","object":"response","output":[]}"#),
            ResponseIdScan::Found("resp_68af")
        );
        // Not first: found after skipping the members before it.
        assert_eq!(
            found(br#" {"object":"response","meta":{"id":"x"},"id":"resp_2"}"#),
            ResponseIdScan::Found("resp_2")
        );
        assert_eq!(found(br#"{"id":"chatcmpl-1"}"#), ResponseIdScan::Absent);
        assert_eq!(found(br#"{"object":"list"}"#), ResponseIdScan::Absent);
        assert_eq!(found(br#"{"id":"resp_\u0031"}"#), ResponseIdScan::Absent);
        assert_eq!(found(br#"{"id":"resp_ x"}"#), ResponseIdScan::Absent);
        assert_eq!(found(b"not json"), ResponseIdScan::Absent);
        assert_eq!(found(b""), ResponseIdScan::NeedMore);
        assert_eq!(found(br#"{"object":"respo"#), ResponseIdScan::NeedMore);
    }

    #[test]
    fn response_id_of_a_first_sse_event() {
        assert_eq!(
            found(CREATED_EVENT.as_bytes()),
            ResponseIdScan::Found("resp_0a1b2c")
        );
        let crlf = CREATED_EVENT.replace('\n', "\r\n");
        assert_eq!(found(crlf.as_bytes()), ResponseIdScan::Found("resp_0a1b2c"));
        // No event line: the type says it; comments and retry lines before it are fine.
        let typed = ": keep-alive\nretry: 100\ndata:{\"type\":\"response.created\",\"response\":{\"id\":\"resp_t\"}}\n\n";
        assert_eq!(found(typed.as_bytes()), ResponseIdScan::Found("resp_t"));
        // An event line alone is enough.
        let named = "event: response.created\ndata: {\"response\":{\"id\":\"resp_n\"}}\n\n";
        assert_eq!(found(named.as_bytes()), ResponseIdScan::Found("resp_n"));
    }

    #[test]
    fn other_first_events_have_no_response_id() {
        for s in [
            "event: response.in_progress\ndata: {\"type\":\"response.in_progress\",\"response\":{\"id\":\"resp_1\"}}\n\n",
            "data: {\"type\":\"response.output_text.delta\",\"response\":{\"id\":\"resp_1\"}}\n\n",
            "data: {\"response\":{\"id\":\"resp_1\"}}\n\n",
            "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\"}\n\n",
            "event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
            "data: [DONE]\n\n",
            "hello world\n",
        ] {
            assert_eq!(found(s.as_bytes()), ResponseIdScan::Absent, "{s}");
        }
    }

    #[test]
    fn every_prefix_before_the_id_needs_more_and_after_it_finds_it() {
        let full = CREATED_EVENT.as_bytes();
        let end_of_id = CREATED_EVENT.find("resp_0a1b2c").unwrap() + "resp_0a1b2c\"".len();
        for n in 0..full.len() {
            let got = found(&full[..n]);
            if n < end_of_id {
                assert_eq!(got, ResponseIdScan::NeedMore, "prefix of {n} bytes");
            } else {
                assert_eq!(
                    got,
                    ResponseIdScan::Found("resp_0a1b2c"),
                    "prefix of {n} bytes"
                );
            }
        }
        let json = br#"{"id":"resp_9","object":"response"}"#;
        for n in 0..json.len() {
            let got = found(&json[..n]);
            assert!(
                matches!(
                    got,
                    ResponseIdScan::NeedMore | ResponseIdScan::Found("resp_9")
                ),
                "{n}: {got:?}"
            );
        }
    }

    #[test]
    fn quotes_after_even_and_odd_backslash_runs() {
        // In skipped values (inside a container) and in read values (at the top level),
        // with runs of every length from 0 to 6 and at every distance from the opening
        // quote, so the inline search and memchr both see them.
        for run in 0..=6 {
            for pad in [0, 7, 8, 63, 64, 65, 200] {
                let text = format!("{}{}", "x".repeat(pad), "\\".repeat(run));
                if run % 2 == 0 {
                    // An even run: the quote after it ends the string.
                    let body =
                        format!(r#"{{"messages":[{{"content":"{text}"}}],"session_id":"s{run}"}}"#);
                    assert_eq!(session(&body), Some(("session_id", format!("s{run}"))));
                    let body = format!(r#"{{"prompt_cache_key":"{text}","session_id":"s"}}"#);
                    let s = scan(body.as_bytes(), false).unwrap();
                    let want = "\\".repeat(run / 2);
                    let want = format!("{}{want}", "x".repeat(pad));
                    assert_eq!(
                        s.candidates[PROMPT_CACHE_KEY].as_deref(),
                        Some(want.as_bytes())
                    );
                } else {
                    // An odd run: the quote is escaped and the string goes on.
                    let body = format!(
                        r#"{{"messages":[{{"content":"{text}" ]}} tail"}}],"session_id":"s"}}"#
                    );
                    assert_eq!(session(&body), Some(("session_id", "s".into())), "{body}");
                    let body = format!(r#"{{"session_id":"{text}" x","sessionId":"c"}}"#);
                    let s = scan(body.as_bytes(), false).unwrap();
                    let want = "\\".repeat(run / 2);
                    let want = format!("{}{want}\" x", "x".repeat(pad));
                    assert_eq!(s.candidates[SESSION_ID].as_deref(), Some(want.as_bytes()));
                    assert_eq!(s.candidates[SESSION_ID_CAMEL].as_deref(), Some(&b"c"[..]));
                }
            }
        }
        // A string that is all backslashes up to its end is unterminated.
        assert!(invalid(br#"{"a":["\\\"]}"#));
        assert!(!invalid(br#"{"a":["\\\\"]}"#));
    }

    #[test]
    fn brackets_inside_strings_are_text() {
        for text in ["]", "}", "[[[", "{{{", "]}]}", "[{\\\"]}", "a]b}c[d{e"] {
            let body = format!(
                r#"{{"messages":[{{"content":"{text}","x":["{text}",{{"{text}":"{text}"}}]}}],"session_id":"s"}}"#
            );
            assert_eq!(session(&body), Some(("session_id", "s".into())), "{body}");
        }
        // Brackets of both kinds, nested to the limit, across the eight-byte words.
        let nested = format!(
            r#"{{"a":{}1{},"session_id":"s"}}"#,
            "[{\"k\":".repeat(40),
            "}]".repeat(40)
        );
        assert_eq!(session(&nested), Some(("session_id", "s".into())));
        // Mismatched brackets around a string holding the matching one.
        assert!(invalid(br#"{"a":["}"}}"#));
        assert!(invalid(br#"{"a":{"]":1]}"#));
    }

    #[test]
    fn sse_data_that_crosses_a_line_break_is_judged_by_its_line() {
        // The object goes on after a line break: the data line alone is incomplete.
        let split = "data: {\"type\":\"response.created\",\n\"response\":{\"id\":\"resp_1\"}}\n\n";
        assert_eq!(found(split.as_bytes()), ResponseIdScan::NeedMore);
        let split = "data: {\"type\":\"response.created\",\"response\":{\"object\":1\n,\"id\":\"resp_1\"}}\n\n";
        assert_eq!(found(split.as_bytes()), ResponseIdScan::NeedMore);
        // A `type` after `response` is not read: the walk stops at the id.
        let typed_late =
            "data: {\"response\":{\"id\":\"resp_2\"},\"type\":\"response.created\"}\n\n";
        assert_eq!(found(typed_late.as_bytes()), ResponseIdScan::Absent);
    }

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
        use proptest::prelude::{
            Just, Strategy, any, prop_assert, prop_assert_eq, prop_oneof, proptest,
        };
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

            #[test]
            fn scanner_never_panics_on_arbitrary_bytes(bytes in collection::vec(any::<u8>(), 0..512)) {
                let _ = scan(&bytes, true);
                let _ = find_response_id(&bytes);
            }

            #[test]
            fn scanner_never_panics_on_json_like_noise(
                s in collection::vec(
                    sample::select(&[
                        "{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "d83d", "a", "1", "-", "e",
                        "true", "null", " ", "\"session_id\"", "\"metadata\"", "\"user_id\"",
                        "\"conversation\"", "\"messages\"", "\"role\"", "\"user\"", "\"content\"",
                        "\"text\"", "data:", "event:", "\n", "\"response\"", "\"id\"", "\"resp_1\"",
                    ][..]),
                    0..64,
                )
            ) {
                let body = s.concat();
                let _ = scan(body.as_bytes(), true);
                let _ = find_response_id(body.as_bytes());
            }

            #[test]
            fn scanner_agrees_with_serde_json_on_serialized_values(
                id in "\\PC{0,40}",
                filler in "\\PC{0,200}",
                pos in 0usize..3,
            ) {
                let mut members = vec![
                    ("messages", serde_json::json!([{"role": "user", "content": filler.clone()}])),
                    ("model", serde_json::json!("m")),
                ];
                members.insert(pos.min(members.len()), ("prompt_cache_key", serde_json::json!(id.clone())));
                let obj: serde_json::Map<String, serde_json::Value> =
                    members.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let body = serde_json::to_vec(&obj).unwrap();
                let s = scan(&body, true).unwrap();
                prop_assert_eq!(s.candidates[PROMPT_CACHE_KEY].as_deref(), Some(id.as_bytes()));
            }

            #[test]
            fn scanner_accepts_what_serde_json_accepts(v in arb_json()) {
                let body = serde_json::to_vec(&v).unwrap();
                prop_assert!(scan(&body, true).is_ok());
                let pretty = serde_json::to_vec_pretty(&v).unwrap();
                prop_assert!(scan(&pretty, true).is_ok());
            }
        }

        fn arb_json() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|n| serde_json::json!(n)),
                "\\PC{0,20}".prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                    collection::btree_map("\\PC{0,10}", inner, 0..8)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
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
