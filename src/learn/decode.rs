//! The first bytes of a compressed answer, decoded for the learner.
//!
//! An account that compresses its answers (`Content-Encoding: gzip`, `deflate`, `br`,
//! `zstd`) would hide the response id from the learner. The learner reads a *copy*: the
//! body is forwarded untouched, and only its prefix is decoded, by a stream decoder fed
//! frame by frame, into a buffer of at most `MAX_PREFIX` (8 KiB) bytes. Decoding stops at that
//! bound (a decompression bomb costs the decoder's own window at most, never its whole
//! output), after `MAX_ENCODED` (64 KiB) of input, at the end of the stream, or at the
//! first invalid byte; the learner stops feeding once it has its answer.
//!
//! What each decoder holds besides the decoded prefix: gzip and `deflate` a 32 KiB
//! window and a 32 KiB output buffer (`flate2` with the pure-Rust `miniz_oxide`
//! backend); `zstd` its window, refused above 8 MiB (RFC 9659's limit for HTTP), of which
//! only what it decodes is touched; `br` its ring buffer, at most the stream's window
//! (16 MiB; large-window streams, which are not HTTP's `br`, are refused), which it may
//! fill once before handing output back.

use http::HeaderMap;
use http::header::CONTENT_ENCODING;

/// A response's `Content-Encoding`, as far as the learner is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Coding {
    /// None, or only `identity`.
    Identity,
    Gzip,
    /// zlib-wrapped deflate (HTTP's `deflate`); raw deflate is accepted too.
    Deflate,
    Brotli,
    Zstd,
    /// Several codings (`gzip, br`), or one the learner does not know.
    Unsupported,
}

impl Coding {
    /// The coding of a response with these headers. Every `Content-Encoding` field is
    /// read, each a comma-separated list; `identity` and empty members are ignored.
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let mut found = Coding::Identity;
        for value in headers.get_all(CONTENT_ENCODING) {
            let Ok(value) = value.to_str() else {
                return Coding::Unsupported;
            };
            for name in value.split(',').map(str::trim) {
                let this = match name.to_ascii_lowercase().as_str() {
                    "" | "identity" => continue,
                    "gzip" | "x-gzip" => Coding::Gzip,
                    "deflate" => Coding::Deflate,
                    "br" => Coding::Brotli,
                    "zstd" => Coding::Zstd,
                    _ => return Coding::Unsupported,
                };
                if found != Coding::Identity {
                    return Coding::Unsupported;
                }
                found = this;
            }
        }
        found
    }

    /// A name for debug events.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Unsupported => "unsupported",
        }
    }
}

/// Why a [`Decoder`] takes no more input.
#[cfg_attr(not(feature = "learn-compressed"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// `MAX_PREFIX` bytes decoded.
    Full,
    /// `MAX_ENCODED` bytes of input taken.
    InputBound,
    /// The compressed stream ended.
    Ended,
    /// The input is not valid for its coding.
    Invalid,
}

#[cfg(feature = "learn-compressed")]
pub(crate) use self::imp::Decoder;

/// Without the `learn-compressed` feature there is no decoder: a compressed answer is
/// not learned from.
#[cfg(not(feature = "learn-compressed"))]
pub(crate) enum Decoder {}

#[cfg(not(feature = "learn-compressed"))]
impl Decoder {
    pub(crate) fn new(_: Coding) -> Option<Self> {
        None
    }

    pub(crate) fn write(&mut self, _: &[u8]) -> Result<(), Stopped> {
        match *self {}
    }

    pub(crate) fn decoded(&self) -> &[u8] {
        match *self {}
    }
}

#[cfg(feature = "learn-compressed")]
mod imp {
    use std::io::{self, Write};

    use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
    use zstd::stream::raw::{DParameter, Operation};

    use super::{Coding, Stopped};
    use crate::learn::MAX_PREFIX;

    /// The most compressed bytes decoded: a prefix that has not given [`MAX_PREFIX`]
    /// decoded bytes by then is given up on (compressed text is smaller than its text).
    pub(crate) const MAX_ENCODED: usize = 64 * 1024;

    /// zstd windows above 8 MiB are refused (RFC 9659: HTTP's `zstd` uses at most 8 MiB).
    const ZSTD_WINDOW_LOG_MAX: u32 = 23;

    /// A stream decoder of one coding and the prefix it decoded so far.
    pub(crate) struct Decoder {
        kind: Kind,
        /// Compressed bytes taken so far.
        taken: usize,
    }

    enum Kind {
        Gzip(flate2::write::GzDecoder<Prefix>),
        Zlib(flate2::write::ZlibDecoder<Prefix>),
        RawDeflate(flate2::write::DeflateDecoder<Prefix>),
        /// `deflate` before its first two bytes tell zlib from raw deflate.
        DeflateStart(Option<u8>),
        Brotli {
            state: Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
            out: Prefix,
        },
        Zstd {
            dec: Box<zstd::stream::raw::Decoder<'static>>,
            out: Prefix,
        },
    }

    /// The decoded prefix: takes bytes up to [`MAX_PREFIX`], then refuses
    /// (`WriteZero`), which stops a `flate2` writer.
    #[derive(Default)]
    struct Prefix {
        buf: Vec<u8>,
        full: bool,
    }

    impl Write for Prefix {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let take = data.len().min(MAX_PREFIX - self.buf.len());
            if take == 0 && !data.is_empty() {
                self.full = true;
            }
            self.buf.extend_from_slice(&data[..take]);
            Ok(take)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Prefix {
        /// Runs `f` over the room left (zero-filled), keeping what it wrote: for the
        /// decoders that write into a slice. `f` returns the bytes written.
        fn fill<T>(&mut self, f: impl FnOnce(&mut [u8]) -> (usize, T)) -> T {
            let len = self.buf.len();
            self.buf.resize(MAX_PREFIX, 0);
            let (n, out) = f(&mut self.buf[len..]);
            self.buf.truncate(len + n);
            out
        }

        fn is_full(&self) -> bool {
            self.full || self.buf.len() == MAX_PREFIX
        }
    }

    impl Decoder {
        /// A decoder for `coding`; `None` for `Identity` and `Unsupported`.
        pub(crate) fn new(coding: Coding) -> Option<Self> {
            let kind = match coding {
                Coding::Identity | Coding::Unsupported => return None,
                Coding::Gzip => Kind::Gzip(flate2::write::GzDecoder::new(Prefix::default())),
                Coding::Deflate => Kind::DeflateStart(None),
                Coding::Brotli => {
                    let mut state = Box::new(BrotliState::new(
                        StandardAlloc::default(),
                        StandardAlloc::default(),
                        StandardAlloc::default(),
                    ));
                    // Windows of up to 16 MiB, as RFC 7932 (HTTP's `br`) has them.
                    state.large_window = false;
                    Kind::Brotli {
                        state,
                        out: Prefix::default(),
                    }
                }
                Coding::Zstd => {
                    let mut dec = zstd::stream::raw::Decoder::new().ok()?;
                    dec.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                        .ok()?;
                    Kind::Zstd {
                        dec: Box::new(dec),
                        out: Prefix::default(),
                    }
                }
            };
            Some(Self { kind, taken: 0 })
        }

        /// The bytes decoded so far (at most [`MAX_PREFIX`]).
        pub(crate) fn decoded(&self) -> &[u8] {
            match &self.kind {
                Kind::Gzip(d) => &d.get_ref().buf,
                Kind::Zlib(d) => &d.get_ref().buf,
                Kind::RawDeflate(d) => &d.get_ref().buf,
                Kind::DeflateStart(_) => &[],
                Kind::Brotli { out, .. } | Kind::Zstd { out, .. } => &out.buf,
            }
        }

        /// Decodes the next piece of the compressed stream into the prefix. `Err`: it
        /// takes no more (what was decoded stays readable).
        pub(crate) fn write(&mut self, input: &[u8]) -> Result<(), Stopped> {
            if self.taken >= MAX_ENCODED {
                return Err(Stopped::InputBound);
            }
            let input = &input[..input.len().min(MAX_ENCODED - self.taken)];
            self.taken += input.len();
            self.decode(input)?;
            if self.decoded().len() >= MAX_PREFIX {
                Err(Stopped::Full)
            } else if self.taken >= MAX_ENCODED {
                Err(Stopped::InputBound)
            } else {
                Ok(())
            }
        }

        fn decode(&mut self, input: &[u8]) -> Result<(), Stopped> {
            if let Kind::DeflateStart(first) = &mut self.kind {
                let (b0, b1) = match (*first, input) {
                    (_, []) => return Ok(()),
                    (None, [b0]) => {
                        *first = Some(*b0);
                        return Ok(());
                    }
                    (None, [b0, b1, ..]) => (*b0, *b1),
                    (Some(b0), [b1, ..]) => (b0, *b1),
                };
                let held = *first;
                self.kind = if is_zlib_header(b0, b1) {
                    Kind::Zlib(flate2::write::ZlibDecoder::new(Prefix::default()))
                } else {
                    Kind::RawDeflate(flate2::write::DeflateDecoder::new(Prefix::default()))
                };
                if let Some(b0) = held {
                    self.decode(&[b0])?;
                }
            }
            match &mut self.kind {
                Kind::Gzip(d) => write_flate(d, input, |d| d.get_ref().is_full()),
                Kind::Zlib(d) => write_flate(d, input, |d| d.get_ref().is_full()),
                Kind::RawDeflate(d) => write_flate(d, input, |d| d.get_ref().is_full()),
                Kind::DeflateStart(_) => Ok(()),
                Kind::Brotli { state, out } => write_brotli(state, out, input),
                Kind::Zstd { dec, out } => write_zstd(dec, out, input),
            }
        }
    }

    /// RFC 1950: compression method 8 (deflate), a window of at most 32 KiB, and a
    /// header check that makes the two bytes a multiple of 31.
    fn is_zlib_header(cmf: u8, flg: u8) -> bool {
        cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
    }

    /// Writes `input` into a `flate2` write-side decoder and flushes what it decoded
    /// into its [`Prefix`].
    fn write_flate<W: Write>(
        dec: &mut W,
        mut input: &[u8],
        full: impl Fn(&W) -> bool,
    ) -> Result<(), Stopped> {
        let stop = |dec: &W| {
            if full(dec) {
                Stopped::Full
            } else {
                Stopped::Invalid
            }
        };
        while !input.is_empty() {
            match dec.write(input) {
                // Nothing taken: the stream has ended (what follows it is not read).
                Ok(0) => {
                    dec.flush().map_err(|_| stop(dec))?;
                    return Err(Stopped::Ended);
                }
                Ok(n) => input = &input[n..],
                Err(_) => return Err(stop(dec)),
            }
        }
        dec.flush().map_err(|_| stop(dec))?;
        if full(dec) {
            return Err(Stopped::Full);
        }
        Ok(())
    }

    fn write_brotli(
        state: &mut BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>,
        out: &mut Prefix,
        input: &[u8],
    ) -> Result<(), Stopped> {
        let mut available_in = input.len();
        let mut input_offset = 0;
        let result = out.fill(|room| {
            let mut available_out = room.len();
            let mut output_offset = 0;
            let mut total_out = 0;
            let result = BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                input,
                &mut available_out,
                &mut output_offset,
                room,
                &mut total_out,
                state,
            );
            (output_offset, result)
        });
        match result {
            BrotliResult::NeedsMoreInput => Ok(()),
            BrotliResult::NeedsMoreOutput => Err(Stopped::Full),
            BrotliResult::ResultSuccess => Err(Stopped::Ended),
            BrotliResult::ResultFailure => Err(Stopped::Invalid),
        }
    }

    fn write_zstd(
        dec: &mut zstd::stream::raw::Decoder<'static>,
        out: &mut Prefix,
        mut input: &[u8],
    ) -> Result<(), Stopped> {
        loop {
            let status = out.fill(|room| match dec.run_on_buffers(input, room) {
                Ok(s) => (s.bytes_written, Ok(s)),
                Err(_) => (0, Err(Stopped::Invalid)),
            })?;
            input = &input[status.bytes_read..];
            if status.bytes_read == 0 && status.bytes_written == 0 && !input.is_empty() {
                // No progress with room to write into: not a stream zstd can go on with.
                return Err(Stopped::Invalid);
            }
            if out.is_full() {
                return Err(Stopped::Full);
            }
            if status.remaining == 0 {
                // A frame ended (and nothing of it is left to flush).
                return Err(Stopped::Ended);
            }
            if input.is_empty() {
                // Output may still be held back for want of room; there is room, so
                // no: it was all handed over. Wait for the next frame.
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(CONTENT_ENCODING, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn coding_is_read_from_every_content_encoding_field() {
        let cases: [(&[&str], Coding); 12] = [
            (&[], Coding::Identity),
            (&["identity"], Coding::Identity),
            (&["gzip"], Coding::Gzip),
            (&["X-Gzip"], Coding::Gzip),
            (&[" deflate "], Coding::Deflate),
            (&["br"], Coding::Brotli),
            (&["ZSTD"], Coding::Zstd),
            (&["identity, gzip"], Coding::Gzip),
            (&["gzip, br"], Coding::Unsupported),
            (&["gzip", "br"], Coding::Unsupported),
            (&["compress"], Coding::Unsupported),
            (&["aes128gcm"], Coding::Unsupported),
        ];
        for (values, expect) in cases {
            assert_eq!(Coding::of(&headers(values)), expect, "{values:?}");
        }
    }

    #[cfg(feature = "learn-compressed")]
    mod decoding {
        use std::io::Write;

        use super::super::imp::MAX_ENCODED;
        use super::*;
        use crate::learn::MAX_PREFIX;

        pub(crate) fn encode(coding: Coding, raw_deflate: bool, text: &[u8]) -> Vec<u8> {
            let level = flate2::Compression::default();
            match coding {
                Coding::Gzip => {
                    let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
                    e.write_all(text).unwrap();
                    e.finish().unwrap()
                }
                Coding::Deflate if raw_deflate => {
                    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), level);
                    e.write_all(text).unwrap();
                    e.finish().unwrap()
                }
                Coding::Deflate => {
                    let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
                    e.write_all(text).unwrap();
                    e.finish().unwrap()
                }
                Coding::Brotli => {
                    let mut out = Vec::new();
                    let mut e = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                    e.write_all(text).unwrap();
                    drop(e);
                    out
                }
                Coding::Zstd => zstd::stream::encode_all(text, 3).unwrap(),
                _ => unreachable!(),
            }
        }

        /// Writes the pieces until the decoder stops; why it stopped, if it did.
        fn feed<'a>(
            d: &mut Decoder,
            pieces: impl IntoIterator<Item = &'a [u8]>,
        ) -> Option<Stopped> {
            pieces.into_iter().find_map(|p| d.write(p).err())
        }

        const ALL: [(Coding, bool); 5] = [
            (Coding::Gzip, false),
            (Coding::Deflate, false),
            (Coding::Deflate, true),
            (Coding::Brotli, false),
            (Coding::Zstd, false),
        ];

        /// Text that compresses a little, as JSON does.
        fn text(len: usize) -> Vec<u8> {
            let mut t = Vec::with_capacity(len + 64);
            let mut i = 0u64;
            while t.len() < len {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                t.extend_from_slice(format!("\"k{}\":\"{:x}\",", i % 97, i >> 40).as_bytes());
            }
            t.truncate(len);
            t
        }

        #[test]
        fn each_coding_decodes_a_prefix_fed_one_byte_at_a_time() {
            let t = text(3000);
            for (coding, raw) in ALL {
                let enc = encode(coding, raw, &t);
                let mut d = Decoder::new(coding).unwrap();
                let stop = feed(&mut d, enc.chunks(1));
                assert_eq!(d.decoded(), &t[..], "{coding:?} raw={raw}");
                // The end of the stream is seen, or its last bytes were never needed.
                assert!(
                    matches!(stop, None | Some(Stopped::Ended)),
                    "{coding:?}: {stop:?}"
                );
            }
        }

        #[test]
        fn decoding_stops_at_the_prefix_bound() {
            let t = text(200 * 1024);
            for (coding, raw) in ALL {
                let enc = encode(coding, raw, &t);
                let mut d = Decoder::new(coding).unwrap();
                let stop = feed(&mut d, enc.chunks(700));
                assert_eq!(stop, Some(Stopped::Full), "{coding:?} raw={raw}");
                assert_eq!(d.decoded(), &t[..MAX_PREFIX], "{coding:?} raw={raw}");
            }
        }

        #[test]
        fn a_decompression_bomb_stops_at_the_bound() {
            // 100 MiB of zeros: about 100 KiB of gzip. Decoding stops after 8 KiB out.
            let zeros = vec![0u8; 100 << 20];
            let enc = encode(Coding::Gzip, false, &zeros);
            drop(zeros);
            let mut d = Decoder::new(Coding::Gzip).unwrap();
            assert_eq!(d.write(&enc), Err(Stopped::Full));
            assert_eq!(d.decoded().len(), MAX_PREFIX);
            assert!(d.write(&enc).is_err(), "and takes no more");
            for coding in [Coding::Brotli, Coding::Zstd, Coding::Deflate] {
                let enc = encode(coding, false, &vec![0u8; 8 << 20]);
                let mut d = Decoder::new(coding).unwrap();
                assert_eq!(d.write(&enc), Err(Stopped::Full), "{coding:?}");
                assert_eq!(d.decoded().len(), MAX_PREFIX);
            }
        }

        #[test]
        fn compressed_input_is_bounded_too() {
            // A stream whose output lags its input is cut at MAX_ENCODED.
            let mut d = Decoder::new(Coding::Gzip).unwrap();
            let mut header = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff];
            // FEXTRA of 65535 bytes: header bytes that decode to nothing.
            header.extend_from_slice(&[0xff, 0xff]);
            header.extend(std::iter::repeat_n(b'x', 65535));
            assert_eq!(feed(&mut d, header.chunks(1000)), Some(Stopped::InputBound));
            assert!(d.decoded().is_empty());
            assert!(MAX_ENCODED < header.len());
        }

        #[test]
        fn invalid_streams_stop_without_output() {
            for coding in [Coding::Gzip, Coding::Deflate, Coding::Brotli, Coding::Zstd] {
                let mut d = Decoder::new(coding).unwrap();
                let garbage = b"{\"id\":\"resp_plain\"} is not compressed at all, though labelled";
                let stop = feed(&mut d, garbage.chunks(7));
                assert_eq!(stop, Some(Stopped::Invalid), "{coding:?}");
                assert!(!d.decoded().starts_with(b"{\"id\""), "{coding:?}");
            }
        }
    }
}
