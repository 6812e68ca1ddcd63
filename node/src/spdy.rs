//! SPDY/3.1 framing, as `kubectl port-forward` speaks it (the moby
//! spdystream library in client-go): the frame codec, the zlib-compressed
//! header blocks (one compression context per direction for the whole
//! connection, primed with the SPDY/3 dictionary), and flow-control
//! accounting. No I/O here: [`crate::port_forward`] drives it.
//!
//! Frames: a control frame is `1 | version(15) | type(16) | flags(8) |
//! length(24) | payload`; a data frame is `0 | stream-id(31) | flags(8) |
//! length(24) | data`. Decoding never panics: truncated input waits for more
//! bytes, and anything malformed is a [`SpdyError`], after which the
//! connection is done (a header block that fails leaves the shared zlib
//! context unusable, as the spec says).

use bytes::{Buf as _, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version this codec speaks.
pub const VERSION: u16 = 3;
/// The dictionary both zlib contexts start from (SPDY/3, section 2.6.10.1).
pub const DICTIONARY: &[u8] = include_bytes!("spdy_dictionary.bin");
/// The initial flow-control window of a stream (and, in 3.1, the session).
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// The largest window the spec allows.
pub const MAX_WINDOW: i64 = 0x7fff_ffff;
/// Largest frame payload taken from a peer (spdystream writes what one
/// read gave it, 32 KiB with Go's io.Copy).
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Largest header block after decompression.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Most name/value pairs in one header block.
pub const MAX_HEADER_PAIRS: u32 = 256;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INTERNAL_ERROR: u32 = 2;
}

/// SETTINGS ids.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;

/// Why a connection's input cannot be read on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("a frame of {0} bytes is larger than the {MAX_PAYLOAD} allowed")]
    TooLarge(usize),
    #[error("SPDY version {0} is not served (only 3)")]
    Version(u16),
    #[error("a malformed {frame} frame: {why}")]
    Malformed {
        frame: &'static str,
        why: &'static str,
    },
    #[error("a header block does not decompress: {0}")]
    Compression(String),
    #[error("a header block is larger than {MAX_HEADER_BLOCK} bytes")]
    HeaderBlockTooLarge,
}

fn malformed(frame: &'static str, why: &'static str) -> SpdyError {
    SpdyError::Malformed { frame, why }
}

/// A header block: lower-case names, each with its values (SPDY joins
/// several values of one name with NUL).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, Vec<String>)>);

impl Headers {
    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.first())
            .map(String::as_str)
    }

    pub fn with(mut self, name: &str, value: &str) -> Self {
        self.0
            .push((name.to_ascii_lowercase(), vec![value.to_owned()]));
        self
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        /// (flags, id, value)
        entries: Vec<(u8, u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame of a type this codec does not know: ignored, as
    /// the spec asks.
    Unknown {
        kind: u16,
    },
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// The inflating side of a connection's header compression.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }
}

impl HeaderDecompressor {
    /// Inflates one frame's header block (its whole compressed bytes; the
    /// sender flushed at its end), bounded by [`MAX_HEADER_BLOCK`].
    pub fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out: Vec<u8> = Vec::with_capacity(256);
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(SpdyError::HeaderBlockTooLarge);
                }
                out.reserve((out.len().max(256)).min(MAX_HEADER_BLOCK - out.len()));
            }
            let before_in = self.z.total_in();
            let before_out = out.len();
            let res = self
                .z
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.z.total_in() - before_in).unwrap_or(input.len());
            input = input.get(used..).unwrap_or_default();
            match res {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Compression(
                        "the zlib stream ended (SPDY keeps it open)".into(),
                    ));
                }
                Ok(Status::Ok | Status::BufError) => {
                    let progressed = used > 0 || out.len() > before_out;
                    if input.is_empty() && out.len() < out.capacity() {
                        return Ok(out);
                    }
                    if !progressed && out.len() < out.capacity() {
                        return Err(SpdyError::Compression("no progress".into()));
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| SpdyError::Compression(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Compression(e.to_string())),
            }
        }
    }
}

/// The deflating side: one zlib stream, primed with the dictionary,
/// sync-flushed at the end of every header block.
pub struct HeaderCompressor {
    z: Compress,
    primed: bool,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self {
            z: Compress::new(Compression::default(), true),
            primed: false,
        }
    }
}

impl HeaderCompressor {
    pub fn deflate(&mut self, mut input: &[u8]) -> Vec<u8> {
        if !self.primed {
            // Only fails if called after the first deflate, which
            // `primed` rules out.
            let _ = self.z.set_dictionary(DICTIONARY);
            self.primed = true;
        }
        let mut out = Vec::with_capacity(input.len() + 64);
        loop {
            if out.len() == out.capacity() {
                out.reserve(256);
            }
            let before = self.z.total_in();
            let _ = self.z.compress_vec(input, &mut out, FlushCompress::Sync);
            let used = usize::try_from(self.z.total_in() - before).unwrap_or(input.len());
            input = input.get(used..).unwrap_or_default();
            // Done when all input went in and the flush fit.
            if input.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// The uncompressed form of a header block.
pub fn encode_header_block(h: &Headers) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(h.0.len() as u32).to_be_bytes());
    for (name, values) in &h.0 {
        let name = name.to_ascii_lowercase();
        out.extend_from_slice(&(name.len() as u32).to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        let value = values.join("\0");
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// Reads an uncompressed header block.
pub fn decode_header_block(b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = |why| malformed("header block", why);
    let count = be32(b, 0).ok_or(bad("no pair count"))?;
    if count > MAX_HEADER_PAIRS {
        return Err(bad("too many pairs"));
    }
    let mut at = 4usize;
    let take = |at: &mut usize| -> Result<&[u8], SpdyError> {
        let len = be32(b, *at).ok_or(bad("a length past the end"))? as usize;
        let start = *at + 4;
        let s = b
            .get(start..start.saturating_add(len))
            .ok_or(bad("a string past the end"))?;
        *at = start + len;
        Ok(s)
    };
    let mut out: Vec<(String, Vec<String>)> = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = take(&mut at)?;
        if name.is_empty() {
            return Err(bad("an empty name"));
        }
        let name = std::str::from_utf8(name).map_err(|_| bad("a name that is not UTF-8"))?;
        let value = take(&mut at)?;
        let value = std::str::from_utf8(value).map_err(|_| bad("a value that is not UTF-8"))?;
        let name = name.to_ascii_lowercase();
        if out.iter().any(|(n, _)| *n == name) {
            return Err(bad("a duplicate name"));
        }
        out.push((name, value.split('\0').map(str::to_owned).collect()));
    }
    if at != b.len() {
        return Err(bad("bytes after the last pair"));
    }
    Ok(Headers(out))
}

/// Reads frames from a connection's bytes.
#[derive(Default)]
pub struct Decoder {
    headers: HeaderDecompressor,
}

impl Decoder {
    /// The next whole frame at the front of `buf` (taken off it), `None`
    /// while more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        let Some(head) = buf.get(..8) else {
            return Ok(None);
        };
        let word = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let flags = head[4];
        let len = usize::from(head[5]) << 16 | usize::from(head[6]) << 8 | usize::from(head[7]);
        if len > MAX_PAYLOAD {
            return Err(SpdyError::TooLarge(len));
        }
        let control = word & 0x8000_0000 != 0;
        if control {
            let version = ((word >> 16) & 0x7fff) as u16;
            if version != VERSION {
                return Err(SpdyError::Version(version));
            }
        }
        if buf.len() < 8 + len {
            buf.reserve(8 + len - buf.len());
            return Ok(None);
        }
        buf.advance(8);
        let payload = buf.split_to(len).freeze();
        if !control {
            let stream = word & 0x7fff_ffff;
            if stream == 0 {
                return Err(malformed("DATA", "stream 0"));
            }
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: payload,
            }));
        }
        let kind = (word & 0xffff) as u16;
        self.control(kind, flags, &payload).map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, p: &[u8]) -> Result<Frame, SpdyError> {
        let fin = flags & FLAG_FIN != 0;
        let stream_at = |name, at| -> Result<u32, SpdyError> {
            let id = be32(p, at).ok_or(malformed(name, "too short"))? & 0x7fff_ffff;
            if id == 0 {
                return Err(malformed(name, "stream 0"));
            }
            Ok(id)
        };
        Ok(match kind {
            TYPE_SYN_STREAM => {
                let stream = stream_at("SYN_STREAM", 0)?;
                let associated =
                    be32(p, 4).ok_or(malformed("SYN_STREAM", "too short"))? & 0x7fff_ffff;
                let priority = p.get(8).ok_or(malformed("SYN_STREAM", "too short"))? >> 5;
                let block = p.get(10..).ok_or(malformed("SYN_STREAM", "too short"))?;
                let headers = decode_header_block(&self.headers.inflate(block)?)?;
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                let name = if kind == TYPE_SYN_REPLY {
                    "SYN_REPLY"
                } else {
                    "HEADERS"
                };
                let stream = stream_at(name, 0)?;
                let block = p.get(4..).ok_or(malformed(name, "too short"))?;
                let headers = decode_header_block(&self.headers.inflate(block)?)?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream,
                        fin,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                if p.len() != 8 {
                    return Err(malformed("RST_STREAM", "length is not 8"));
                }
                let stream = stream_at("RST_STREAM", 0)?;
                let status = be32(p, 4).unwrap_or(0);
                if status == 0 {
                    return Err(malformed("RST_STREAM", "status 0"));
                }
                Frame::RstStream { stream, status }
            }
            TYPE_SETTINGS => {
                let n = be32(p, 0).ok_or(malformed("SETTINGS", "too short"))? as usize;
                if p.len() != 4 + n.saturating_mul(8) {
                    return Err(malformed("SETTINGS", "length does not match the count"));
                }
                let entries = (0..n)
                    .filter_map(|i| {
                        let fid = be32(p, 4 + i * 8)?;
                        let value = be32(p, 8 + i * 8)?;
                        Some(((fid >> 24) as u8, fid & 0x00ff_ffff, value))
                    })
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                if p.len() != 4 {
                    return Err(malformed("PING", "length is not 4"));
                }
                Frame::Ping {
                    id: be32(p, 0).unwrap_or(0),
                }
            }
            TYPE_GOAWAY => {
                if p.len() != 8 {
                    return Err(malformed("GOAWAY", "length is not 8"));
                }
                Frame::GoAway {
                    last_good: be32(p, 0).unwrap_or(0) & 0x7fff_ffff,
                    status: be32(p, 4).unwrap_or(0),
                }
            }
            TYPE_WINDOW_UPDATE => {
                if p.len() != 8 {
                    return Err(malformed("WINDOW_UPDATE", "length is not 8"));
                }
                let delta = be32(p, 4).unwrap_or(0) & 0x7fff_ffff;
                if delta == 0 {
                    return Err(malformed("WINDOW_UPDATE", "a delta of 0"));
                }
                Frame::WindowUpdate {
                    // 0: the session (SPDY/3.1).
                    stream: be32(p, 0).unwrap_or(0) & 0x7fff_ffff,
                    delta,
                }
            }
            kind => Frame::Unknown { kind },
        })
    }
}

/// Writes frames.
#[derive(Default)]
pub struct Encoder {
    headers: HeaderCompressor,
}

fn control_head(out: &mut Vec<u8>, kind: u16, flags: u8, len: usize) {
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    let len = (len as u32) & 0x00ff_ffff;
    out.extend_from_slice(&((u32::from(flags) << 24) | len).to_be_bytes());
}

impl Encoder {
    /// Appends `frame` to `out`. A DATA frame must hold less than 16 MiB
    /// (its length field); callers send at most [`MAX_PAYLOAD`].
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream,
                fin: f,
                data,
            } => {
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                let len = (data.len() as u32) & 0x00ff_ffff;
                out.extend_from_slice(&((u32::from(fin(*f)) << 24) | len).to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin: f,
                unidirectional,
                headers,
            } => {
                let block = self.headers.deflate(&encode_header_block(headers));
                let flags = fin(*f)
                    | if *unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control_head(out, TYPE_SYN_STREAM, flags, 10 + block.len());
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&associated.to_be_bytes());
                out.push((priority & 7) << 5);
                out.push(0);
                out.extend_from_slice(&block);
            }
            Frame::SynReply {
                stream,
                fin: f,
                headers,
            }
            | Frame::Headers {
                stream,
                fin: f,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.headers.deflate(&encode_header_block(headers));
                control_head(out, kind, fin(*f), 4 + block.len());
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&block);
            }
            Frame::RstStream { stream, status } => {
                control_head(out, TYPE_RST_STREAM, 0, 8);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::Settings { entries } => {
                control_head(out, TYPE_SETTINGS, 0, 4 + entries.len() * 8);
                out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                for (flags, id, value) in entries {
                    out.extend_from_slice(
                        &((u32::from(*flags) << 24) | (id & 0x00ff_ffff)).to_be_bytes(),
                    );
                    out.extend_from_slice(&value.to_be_bytes());
                }
            }
            Frame::Ping { id } => {
                control_head(out, TYPE_PING, 0, 4);
                out.extend_from_slice(&id.to_be_bytes());
            }
            Frame::GoAway { last_good, status } => {
                control_head(out, TYPE_GOAWAY, 0, 8);
                out.extend_from_slice(&last_good.to_be_bytes());
                out.extend_from_slice(&status.to_be_bytes());
            }
            Frame::WindowUpdate { stream, delta } => {
                control_head(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&delta.to_be_bytes());
            }
            Frame::Unknown { .. } => {}
        }
    }
}

/// Why a window cannot take what was asked of it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("the peer sent {sent} bytes into a window of {window}")]
    Overrun { sent: u32, window: i64 },
    #[error("a window update past 2^31-1")]
    Overflow,
}

/// One flow-control window (a stream's or the session's), as SPDY/3.1
/// counts it: data sent takes from it, WINDOW_UPDATE gives back, a new
/// SETTINGS_INITIAL_WINDOW_SIZE shifts every stream's window by the
/// difference (so it may go negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window(i64);

impl Default for Window {
    fn default() -> Self {
        Self(i64::from(INITIAL_WINDOW))
    }
}

impl Window {
    pub fn new(size: u32) -> Self {
        Self(i64::from(size))
    }

    /// What may be sent now.
    pub fn available(&self) -> u32 {
        u32::try_from(self.0.clamp(0, MAX_WINDOW)).unwrap_or(0)
    }

    pub fn size(&self) -> i64 {
        self.0
    }

    /// `n` bytes were sent (or received) in it.
    pub fn consume(&mut self, n: u32) -> Result<(), FlowError> {
        if i64::from(n) > self.0 {
            return Err(FlowError::Overrun {
                sent: n,
                window: self.0,
            });
        }
        self.0 -= i64::from(n);
        Ok(())
    }

    /// A WINDOW_UPDATE of `delta`.
    pub fn grant(&mut self, delta: u32) -> Result<(), FlowError> {
        let next = self.0 + i64::from(delta);
        if next > MAX_WINDOW {
            return Err(FlowError::Overflow);
        }
        self.0 = next;
        Ok(())
    }

    /// The initial window changed from `old` to `new` (SETTINGS).
    pub fn rebase(&mut self, old: u32, new: u32) {
        self.0 += i64::from(new) - i64::from(old);
    }
}

/// The receiving side's accounting for one stream: what arrived takes
/// from the window, what was delivered onward is given back with a
/// WINDOW_UPDATE once half the window is owed (few, large updates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receiver {
    window: Window,
    initial: u32,
    owed: u32,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new(INITIAL_WINDOW)
    }
}

impl Receiver {
    pub fn new(initial: u32) -> Self {
        Self {
            window: Window::new(initial),
            initial,
            owed: 0,
        }
    }

    /// `n` bytes arrived; an error when the sender overran the window.
    /// An overrun is still counted (the window goes negative), so what is
    /// given back later stays right.
    pub fn received(&mut self, n: u32) -> Result<(), FlowError> {
        let r = self.window.consume(n);
        if r.is_err() {
            self.window.0 -= i64::from(n);
        }
        r
    }

    /// `n` bytes were delivered; the WINDOW_UPDATE delta to send now, if
    /// one is due.
    pub fn delivered(&mut self, n: u32) -> Option<u32> {
        self.owed = self.owed.saturating_add(n);
        if self.owed >= self.initial / 2 {
            let delta = std::mem::take(&mut self.owed);
            // Cannot overflow: the window never exceeds its initial size.
            let _ = self.window.grant(delta);
            Some(delta)
        } else {
            None
        }
    }

    pub fn window(&self) -> Window {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = Encoder::default();
        let mut wire = Vec::new();
        for f in frames {
            enc.encode(f, &mut wire);
        }
        let mut dec = Decoder::default();
        let mut buf = BytesMut::from(&wire[..]);
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf).expect("decodes") {
            out.push(f);
        }
        assert!(buf.is_empty(), "everything was read");
        out
    }

    fn pf_headers(kind: &str, id: &str) -> Headers {
        Headers::default()
            .with("streamType", kind)
            .with("port", "80")
            .with("requestID", id)
    }

    #[test]
    fn every_frame_type_survives_encode_and_decode() {
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 3,
                fin: false,
                unidirectional: false,
                headers: pf_headers("error", "0"),
            },
            Frame::SynStream {
                stream: 3,
                associated: 1,
                priority: 0,
                fin: true,
                unidirectional: true,
                headers: pf_headers("data", "0"),
            },
            Frame::SynReply {
                stream: 1,
                fin: false,
                headers: Headers::default(),
            },
            Frame::Headers {
                stream: 3,
                fin: true,
                headers: Headers(vec![("x".into(), vec!["a".into(), "b".into()])]),
            },
            Frame::Data {
                stream: 3,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            },
            Frame::Data {
                stream: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::RstStream {
                stream: 3,
                status: rst::CANCEL,
            },
            Frame::Settings {
                entries: vec![(0, SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20), (1, 4, 100)],
            },
            Frame::Ping { id: 1 },
            Frame::GoAway {
                last_good: 3,
                status: goaway::OK,
            },
            Frame::WindowUpdate {
                stream: 0,
                delta: 4096,
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn the_wire_format_is_spdy3() {
        let mut enc = Encoder::default();
        let mut out = Vec::new();
        enc.encode(&Frame::Ping { id: 7 }, &mut out);
        assert_eq!(out, [0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
        out.clear();
        enc.encode(
            &Frame::Data {
                stream: 5,
                fin: true,
                data: Bytes::from_static(b"hi"),
            },
            &mut out,
        );
        assert_eq!(out, [0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']);
        out.clear();
        enc.encode(
            &Frame::RstStream {
                stream: 3,
                status: rst::PROTOCOL_ERROR,
            },
            &mut out,
        );
        assert_eq!(out, [0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 3, 0, 0, 0, 1]);
    }

    #[test]
    fn header_blocks_are_one_zlib_stream_with_the_spdy_dictionary() {
        assert_eq!(DICTIONARY.len(), 1423);
        let mut c = HeaderCompressor::default();
        let first = c.deflate(&encode_header_block(&pf_headers("error", "0")));
        // zlib header with FDICT set, then the dictionary's Adler-32.
        assert_eq!(first.first(), Some(&0x78));
        assert!(first.get(1).is_some_and(|b| b & 0x20 != 0), "FDICT");
        assert_eq!(first.get(2..6), Some(&[0xe3, 0xc6, 0xa7, 0xc2][..]));
        // The same block again compresses to far less: the context
        // carries over between frames.
        let second = c.deflate(&encode_header_block(&pf_headers("error", "0")));
        assert!(second.len() < first.len(), "{second:?} vs {first:?}");
        let mut d = HeaderDecompressor::default();
        let a = decode_header_block(&d.inflate(&first).expect("first")).expect("block");
        let b = decode_header_block(&d.inflate(&second).expect("second")).expect("block");
        assert_eq!(a, pf_headers("error", "0"));
        assert_eq!(a, b);
        assert_eq!(a.get("StreamType"), Some("error"));
        assert_eq!(a.get("requestid"), Some("0"));
        // The second block alone (a fresh context) cannot be read.
        assert!(HeaderDecompressor::default().inflate(&second).is_err());
    }

    #[test]
    fn header_blocks_from_zlib_with_a_preset_dictionary_are_read() {
        // What Go's zlib.NewWriterLevelDict writes: an independent zlib
        // implementation (flate2's write API) checks the interop.
        use std::io::Write as _;
        let block = encode_header_block(&pf_headers("data", "12"));
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(DICTIONARY).expect("dict");
        let mut w = flate2::write::ZlibEncoder::new_with_compress(Vec::new(), z);
        w.write_all(&block).expect("write");
        w.flush().expect("sync flush");
        let wire = w.get_ref().clone();
        let mut d = HeaderDecompressor::default();
        let h = decode_header_block(&d.inflate(&wire).expect("inflate")).expect("block");
        assert_eq!(h.get("requestid"), Some("12"));
    }

    #[test]
    fn truncated_input_waits_for_more() {
        let mut enc = Encoder::default();
        let mut wire = Vec::new();
        enc.encode(
            &Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: pf_headers("error", "0"),
            },
            &mut wire,
        );
        let mut dec = Decoder::default();
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = dec.decode(&mut buf).expect("no error on a prefix");
            assert_eq!(got.is_some(), i == wire.len() - 1, "byte {i}");
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        let decode = |bytes: &[u8]| Decoder::default().decode(&mut BytesMut::from(bytes));
        // Wrong version.
        assert_eq!(
            decode(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]),
            Err(SpdyError::Version(2))
        );
        // Too large.
        assert!(matches!(
            decode(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff]),
            Err(SpdyError::TooLarge(_))
        ));
        // DATA on stream 0.
        assert!(decode(&[0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // PING of the wrong length.
        assert!(decode(&[0x80, 3, 0, 6, 0, 0, 0, 2, 0, 1]).is_err());
        // RST_STREAM with status 0, and on stream 0.
        assert!(decode(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        assert!(decode(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        // SETTINGS whose count does not match its length.
        assert!(decode(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).is_err());
        // WINDOW_UPDATE with a zero delta.
        assert!(decode(&[0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]).is_err());
        // SYN_STREAM too short, and with a header block that is not zlib.
        assert!(decode(&[0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1]).is_err());
        assert!(matches!(
            decode(&[
                0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4
            ]),
            Err(SpdyError::Compression(_))
        ));
        // An unknown control type is skipped.
        assert_eq!(
            decode(&[0x80, 3, 0, 0x42, 0, 0, 0, 1, 9]),
            Ok(Some(Frame::Unknown { kind: 0x42 }))
        );
    }

    #[test]
    fn malformed_header_blocks_are_errors() {
        assert!(decode_header_block(&[]).is_err());
        assert!(decode_header_block(&[0, 0, 0, 1]).is_err());
        assert!(decode_header_block(&[0, 0, 0, 1, 0, 0, 0, 9, b'a']).is_err());
        assert!(decode_header_block(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_header_block(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_header_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        let dup = encode_header_block(&Headers::default().with("a", "1").with("A", "2"));
        assert!(decode_header_block(&dup).is_err());
        let mut extra = encode_header_block(&Headers::default().with("a", "1"));
        extra.push(0);
        assert!(decode_header_block(&extra).is_err());
        // A bomb: far more than MAX_HEADER_BLOCK once inflated.
        let mut c = HeaderCompressor::default();
        let bomb = c.deflate(&vec![0u8; 4 * MAX_HEADER_BLOCK]);
        assert!(bomb.len() < MAX_HEADER_BLOCK / 16);
        assert_eq!(
            HeaderDecompressor::default().inflate(&bomb),
            Err(SpdyError::HeaderBlockTooLarge)
        );
    }

    #[test]
    fn random_bytes_never_panic_the_decoder() {
        // A small deterministic generator (xorshift): many shapes of
        // garbage, plus mutations of valid frames.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut valid = Vec::new();
        let mut enc = Encoder::default();
        for f in [
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                fin: false,
                unidirectional: false,
                headers: pf_headers("error", "0"),
            },
            Frame::Data {
                stream: 1,
                fin: true,
                data: Bytes::from_static(b"abc"),
            },
            Frame::Settings {
                entries: vec![(0, 7, 10)],
            },
        ] {
            enc.encode(&f, &mut valid);
        }
        for round in 0..20_000u32 {
            let mut bytes: Vec<u8> = if round % 2 == 0 {
                let n = (next() % 64) as usize;
                (0..n).map(|_| next() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..1 + next() % 4 {
                    let i = (next() as usize) % v.len();
                    v[i] = next() as u8;
                }
                v
            };
            if round % 3 == 0 && !bytes.is_empty() {
                // Control frames of version 3 more often.
                bytes[0] = 0x80;
                if bytes.len() > 1 {
                    bytes[1] = 3;
                }
            }
            let mut dec = Decoder::default();
            let mut buf = BytesMut::from(&bytes[..]);
            for _ in 0..16 {
                match dec.decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }

    #[test]
    fn windows_account_as_spdy_31_does() {
        let mut w = Window::default();
        assert_eq!(w.available(), 65536);
        w.consume(60000).expect("fits");
        assert_eq!(w.available(), 5536);
        assert_eq!(
            w.consume(6000),
            Err(FlowError::Overrun {
                sent: 6000,
                window: 5536
            })
        );
        w.grant(10000).expect("grant");
        assert_eq!(w.available(), 15536);
        // A smaller initial window may push it below zero: nothing may be
        // sent until updates bring it back.
        w.rebase(65536, 1024);
        assert!(w.size() < 0);
        assert_eq!(w.available(), 0);
        w.rebase(1024, 65536);
        assert_eq!(w.available(), 15536);
        let mut big = Window::new(0x7fff_0000);
        assert_eq!(big.grant(0x10_0000), Err(FlowError::Overflow));
    }

    #[test]
    fn receivers_give_the_window_back_in_large_updates() {
        let mut r = Receiver::default();
        r.received(32 * 1024).expect("in window");
        assert_eq!(r.delivered(16 * 1024), None);
        assert_eq!(r.window().available(), 32 * 1024);
        r.received(32 * 1024).expect("in window");
        assert_eq!(r.window().available(), 0);
        assert_eq!(r.delivered(16 * 1024), Some(32 * 1024));
        assert_eq!(r.window().available(), 32 * 1024);
        assert_eq!(r.delivered(32 * 1024), Some(32 * 1024));
        assert_eq!(r.window().available(), 64 * 1024);
        // A sender that overruns (spdystream keeps no windows) is counted
        // all the same.
        let mut r = Receiver::new(1024);
        assert!(r.received(1000).is_ok());
        assert!(r.received(100).is_err(), "past the window");
        assert_eq!(r.window().size(), -76);
        assert_eq!(r.delivered(1100), Some(1100));
        assert_eq!(r.window().available(), 1024);
    }
}
