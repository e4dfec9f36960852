//! Finding a Responses API id in the first bytes of a response: [`find_response_id`],
//! which the [`Learner`](super::Learner) runs on a success's first data frames (and
//! which is public as `body_session::find_response_id`, for proxies that learn by
//! themselves).
//!
//! A JSON body's top-level `id`, or `response.id` in the data of an SSE stream's first
//! event `response.created`, read with the request scan's JSON lexer; the walk stops at
//! the id, so the rest of the response need not have arrived.

use crate::body_session::scan::lexer::{Cursor, R, RawStr, Stop};
use crate::extract::{DEFAULT_MAX_SESSION_ID_LEN, validate};

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
                || !s.raw().starts_with(b"resp_")
                || validate(s.raw(), DEFAULT_MAX_SESSION_ID_LEN).is_err()
            {
                return ResponseIdScan::Absent;
            }
            // Visible ASCII, so valid UTF-8.
            match std::str::from_utf8(s.raw()) {
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
        end: c.pos(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_id_is_the_first_one() {
        // The documented exception: the scan stops at the first `id`.
        assert_eq!(
            found(br#"{"id":"resp_1","object":"response","id":"resp_2"}"#),
            ResponseIdScan::Found("resp_1")
        );
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
}
