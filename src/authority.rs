//! Lets gRPC clients other than Go's talk to berth over its unix socket.
//!
//! grpc-core (Python, C++, Ruby), grpc-java and grpc-swift send the socket path,
//! percent-encoded, as the `:authority` of every request (`tmp%2Fx%2Fcsi.sock`). That is
//! not an authority HTTP/2 allows, and the HTTP/2 layer under tonic answers such a request
//! with RST_STREAM PROTOCOL_ERROR before berth sees it. [`Rewrite`] sits between the
//! socket and that layer: it reads the client's first header block and, if its
//! `:authority` is one HTTP/2 would refuse, re-encodes every header block of the
//! connection with `:authority: localhost` (what Go clients send over unix sockets).
//! Connections whose first block is acceptable, Kubernetes' Go clients among them, are
//! passed through untouched from then on.
//!
//! Re-encoding keeps the two HPACK contexts apart: the client's blocks are decoded with a
//! decoder that follows the client's dynamic table, and re-encoded as literals that never
//! enter a table, so the server's decoder state stays empty and consistent.

use std::fmt;

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this is refused (the server's own limit is smaller).
const MAX_BLOCK: usize = 1 << 20;
/// What replaces an authority HTTP/2 refuses.
const LOCALHOST: &[u8] = b"localhost";

/// A client's bytes that cannot be HTTP/2: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed HTTP/2 from client: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Reading the connection preface.
    Preface,
    /// Frames pass through until the first header block shows the client's authority.
    Inspecting,
    /// Every header block is re-encoded.
    Rewriting,
    /// Bytes pass through untouched.
    PassThrough,
}

/// A header block being collected from a HEADERS frame and its CONTINUATIONs.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as the client sent them, for when the block passes through.
    original: Vec<u8>,
}

/// The client-to-server half of one connection (see the module documentation).
pub struct Rewrite {
    mode: Mode,
    /// Received bytes not yet handled (an incomplete frame).
    pending: Vec<u8>,
    block: Option<Block>,
    decoder: loona_hpack::Decoder<'static>,
    /// The authority replaced, for one log line per connection.
    replaced: Option<String>,
}

impl Default for Rewrite {
    fn default() -> Self {
        Rewrite::new()
    }
}

impl Rewrite {
    #[must_use]
    pub fn new() -> Rewrite {
        Rewrite {
            mode: Mode::Preface,
            pending: Vec::new(),
            block: None,
            decoder: loona_hpack::Decoder::new(),
            replaced: None,
        }
    }

    /// True once the connection's bytes pass through untouched.
    #[must_use]
    pub fn passes_through(&self) -> bool {
        self.mode == Mode::PassThrough
    }

    /// The first `:authority` this connection's client sent that HTTP/2 does not allow,
    /// once, so the caller can log it.
    pub fn take_replaced(&mut self) -> Option<String> {
        self.replaced.take()
    }

    /// Handles `input`, the next bytes the client sent, appending to `out` what the
    /// HTTP/2 server should read in their place.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        if self.mode == Mode::PassThrough {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        if self.mode == Mode::Preface {
            let seen = self.pending.len().min(PREFACE.len());
            if self.pending.get(..seen) != PREFACE.get(..seen) {
                // Not HTTP/2 with prior knowledge: the server answers that itself.
                self.pass_through(out);
                return Ok(());
            }
            if seen < PREFACE.len() {
                return Ok(());
            }
            out.extend(self.pending.drain(..PREFACE.len()));
            self.mode = Mode::Inspecting;
        }
        while let Some(len) = self.next_frame_len() {
            if len > MAX_FRAME {
                // Larger than the server allows: it refuses the frame itself, and nothing
                // here buffers it.
                self.pass_through(out);
                break;
            }
            let frame: Vec<u8> = self.pending.drain(..FRAME_HEADER + len).collect();
            self.frame(&frame, out)?;
            if self.mode == Mode::PassThrough {
                self.pass_through(out);
                break;
            }
        }
        Ok(())
    }

    fn pass_through(&mut self, out: &mut Vec<u8>) {
        self.mode = Mode::PassThrough;
        out.append(&mut self.pending);
    }

    /// The payload length of the frame at the start of `pending` once the whole frame is
    /// there, or at once when it is larger than any frame the server accepts.
    fn next_frame_len(&self) -> Option<usize> {
        let header = self.pending.get(..FRAME_HEADER)?;
        let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        (len > MAX_FRAME || self.pending.len() >= FRAME_HEADER + len).then_some(len)
    }

    /// Handles one whole frame (header and payload).
    fn frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        let (header, payload) = frame.split_at(FRAME_HEADER);
        let (kind, flags) = (header[3], header[4]);
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let (priority, fragment) = headers_payload(flags, payload)?;
                self.block = Some(Block {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    fragment: fragment.to_vec(),
                    original: frame.to_vec(),
                });
            }
            (CONTINUATION, Some(block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
                block.original.extend_from_slice(frame);
                if block.original.len() > MAX_BLOCK {
                    return Err(Malformed(format!("a header block over {MAX_BLOCK} bytes")));
                }
            }
            // Anything else inside a header block is a connection error the server reports.
            (_, Some(_)) => {
                let block = self.block.take().map(|b| b.original).unwrap_or_default();
                out.extend_from_slice(&block);
                out.extend_from_slice(frame);
                self.mode = Mode::PassThrough;
                return Ok(());
            }
            (_, None) => {
                out.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & END_HEADERS != 0
            && let Some(block) = self.block.take()
        {
            self.finish(block, out)?;
        }
        Ok(())
    }

    /// Decodes a whole header block and writes it out, as it came or re-encoded.
    fn finish(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), Malformed> {
        let mut headers = match self.decoder.decode(&block.fragment) {
            Ok(headers) => headers,
            Err(e) => {
                // The server's own decoder refuses it as well, with the right error.
                tracing::debug!(error = ?e, "cannot decode a client's header block; passing the connection through");
                out.extend_from_slice(&block.original);
                self.mode = Mode::PassThrough;
                return Ok(());
            }
        };
        let refused = headers.iter().position(|(name, value)| {
            name == b":authority" && http::uri::Authority::try_from(value.as_slice()).is_err()
        });
        if self.mode == Mode::Inspecting {
            if refused.is_none() {
                out.extend_from_slice(&block.original);
                self.mode = Mode::PassThrough;
                return Ok(());
            }
            self.mode = Mode::Rewriting;
        }
        if let Some(at) = refused {
            let value = std::mem::replace(&mut headers[at].1, LOCALHOST.to_vec());
            if self.replaced.is_none() {
                self.replaced = Some(String::from_utf8_lossy(&value).into_owned());
            }
        }
        write_block(&block, &encode(&headers), out);
        Ok(())
    }
}

/// Splits a HEADERS payload into its priority fields (if flagged) and its block
/// fragment, without the padding.
fn headers_payload(flags: u8, payload: &[u8]) -> Result<(Option<[u8; 5]>, &[u8]), Malformed> {
    let short = || Malformed("a HEADERS frame shorter than its padding and priority".into());
    let mut rest = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&len, after) = rest.split_first().ok_or_else(short)?;
        pad = usize::from(len);
        rest = after;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let fields = rest.get(..5).ok_or_else(short)?;
        priority = Some([fields[0], fields[1], fields[2], fields[3], fields[4]]);
        rest = &rest[5..];
    }
    let end = rest.len().checked_sub(pad).ok_or_else(short)?;
    Ok((priority, &rest[..end]))
}

/// HPACK: every field as a literal without indexing with a literal name (RFC 7541,
/// section 6.2.2), strings not Huffman-coded. Nothing enters the server's dynamic table.
fn encode(headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in headers {
        block.push(0x00);
        for s in [name, value] {
            integer(s.len(), 7, &mut block);
            block.extend_from_slice(s);
        }
    }
    block
}

/// An HPACK integer with an `n`-bit prefix, the byte's other bits zero (RFC 7541, 5.1).
fn integer(mut value: usize, n: u8, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value % 0x80 + 0x80) as u8);
        value /= 0x80;
    }
    out.push(value as u8);
}

/// Writes `fragment` as the header block of `block`'s stream: a HEADERS frame with the
/// original END_STREAM and priority, then CONTINUATION frames as the frame size needs.
fn write_block(block: &Block, fragment: &[u8], out: &mut Vec<u8>) {
    let room = MAX_FRAME - block.priority.map_or(0, |_| 5);
    let (first, mut rest) = fragment.split_at(fragment.len().min(room));
    let mut flags = if block.end_stream { END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    let mut payload = block.priority.map(Vec::from).unwrap_or_default();
    payload.extend_from_slice(first);
    write_frame(HEADERS, flags, block.stream, &payload, out);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        write_frame(CONTINUATION, if after.is_empty() { END_HEADERS } else { 0 }, block.stream, chunk, out);
        rest = after;
    }
}

fn write_frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: &[u8] = &[0, 0, 0, 0x4, 0, 0, 0, 0, 0];

    fn request(encoder: &mut loona_hpack::Encoder<'_>, authority: &str, path: &str) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            // Not in the static table: the encoder indexes it, later blocks refer to it.
            (b"grpc-accept-encoding", b"identity,deflate,gzip"),
        ])
    }

    /// Feeds `input` in pieces of `step` bytes and returns what the server reads.
    fn run(rewrite: &mut Rewrite, input: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            rewrite.feed(piece, &mut out).expect("feed");
        }
        out
    }

    /// The header blocks of the frames in `bytes` (after the preface), decoded with a
    /// fresh decoder, as the server's would; also the frame types seen.
    type Fields = Vec<(Vec<u8>, Vec<u8>)>;

    fn server_view(bytes: &[u8]) -> (Vec<Fields>, Vec<u8>) {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        let mut rest = &bytes[PREFACE.len()..];
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut kinds, mut fragment) = (Vec::new(), Vec::new(), Vec::new());
        while !rest.is_empty() {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            assert!(len <= MAX_FRAME, "frame of {len} bytes");
            kinds.push(kind);
            let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                let (_, f) =
                    if kind == HEADERS { headers_payload(flags, payload).expect("payload") } else { (None, payload) };
                fragment.extend_from_slice(f);
                if flags & END_HEADERS != 0 {
                    blocks.push(decoder.decode(&fragment).expect("the server decodes it"));
                    fragment.clear();
                }
            }
            rest = &rest[FRAME_HEADER + len..];
        }
        (blocks, kinds)
    }

    fn authority(block: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &block.iter().find(|(n, _)| n == b":authority").expect(":authority").1
    }

    fn connection(blocks: &[Vec<u8>], flags: u8) -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(SETTINGS);
        for (i, block) in blocks.iter().enumerate() {
            write_frame(HEADERS, flags | END_HEADERS, 2 * i as u32 + 1, block, &mut input);
            write_frame(0x0, END_STREAM, 2 * i as u32 + 1, b"\0\0\0\0\0", &mut input);
        }
        input
    }

    #[test]
    fn a_valid_authority_passes_the_connection_through_byte_for_byte() {
        let mut encoder = loona_hpack::Encoder::new();
        let blocks =
            [request(&mut encoder, "localhost", "/csi.v1.Identity/Probe"), request(&mut encoder, "x%2Fy", "/a")];
        let input = connection(&blocks, 0);
        for step in [1, 7, input.len()] {
            let mut rewrite = Rewrite::new();
            assert_eq!(run(&mut rewrite, &input, step), input, "step {step}");
            assert_eq!(rewrite.take_replaced(), None);
        }
    }

    #[test]
    fn a_socket_path_authority_becomes_localhost_in_every_block() {
        let mut encoder = loona_hpack::Encoder::new();
        let blocks: Vec<Vec<u8>> =
            (0..3).map(|i| request(&mut encoder, "tmp%2Fx%2Fcsi.sock", &format!("/csi.v1.Identity/{i}"))).collect();
        assert!(blocks[2].len() < blocks[0].len(), "later blocks use the dynamic table");
        let input = connection(&blocks, 0);
        for step in [1, 3, 1000] {
            let mut rewrite = Rewrite::new();
            let (decoded, kinds) = server_view(&run(&mut rewrite, &input, step));
            assert_eq!(decoded.len(), 3);
            for (i, block) in decoded.iter().enumerate() {
                assert_eq!(authority(block), b"localhost");
                let path = &block.iter().find(|(n, _)| n == b":path").expect("path").1;
                assert_eq!(path, format!("/csi.v1.Identity/{i}").as_bytes());
                assert_eq!(block.len(), 6, "no field lost or added");
                assert_eq!(block[5], (b"grpc-accept-encoding".to_vec(), b"identity,deflate,gzip".to_vec()));
            }
            assert_eq!(kinds, [0x4, HEADERS, 0x0, HEADERS, 0x0, HEADERS, 0x0]);
            assert_eq!(rewrite.take_replaced().as_deref(), Some("tmp%2Fx%2Fcsi.sock"));
            assert_eq!(rewrite.take_replaced(), None, "reported once");
        }
    }

    #[test]
    fn padding_priority_continuations_and_end_stream_survive_a_rewrite() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = request(&mut encoder, "%2Frun%2Fberth%2Fcsi.sock", "/csi.v1.Node/NodeGetInfo");
        let (a, b) = block.split_at(block.len() / 2);
        let mut input = PREFACE.to_vec();
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0x80, 0, 0, 0, 15]); // exclusive dependency on 0, weight 15
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        write_frame(HEADERS, PADDED | PRIORITY | END_STREAM, 5, &payload, &mut input);
        write_frame(CONTINUATION, END_HEADERS, 5, b, &mut input);
        let out = run(&mut Rewrite::new(), &input, 2);
        let (decoded, kinds) = server_view(&out);
        assert_eq!(kinds, [HEADERS]);
        assert_eq!(authority(&decoded[0]), b"localhost");
        let at = PREFACE.len();
        assert_eq!(out[at + 4], END_STREAM | PRIORITY | END_HEADERS, "flags kept, padding gone");
        assert_eq!(&out[at + 9..at + 14], &[0x80, 0, 0, 0, 15], "priority kept");
    }

    #[test]
    fn a_large_rewritten_block_is_split_into_frames_the_server_accepts() {
        let mut encoder = loona_hpack::Encoder::new();
        let big = "v".repeat(40_000);
        let block = encoder.encode([(&b":authority"[..], &b"a%2Fb"[..]), (b"x-big", big.as_bytes())]);
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let last = (i + 1) * MAX_FRAME >= block.len();
            write_frame(
                if i == 0 { HEADERS } else { CONTINUATION },
                if last { END_HEADERS } else { 0 },
                1,
                chunk,
                &mut input,
            );
        }
        let (decoded, kinds) = server_view(&run(&mut Rewrite::new(), &input, 4096));
        assert_eq!(kinds, [HEADERS, CONTINUATION, CONTINUATION]);
        assert_eq!(authority(&decoded[0]), b"localhost");
        assert_eq!(decoded[0][1].1, big.as_bytes());
    }

    #[test]
    fn hpack_integers_match_the_rfc_examples() {
        // RFC 7541, C.1.1-C.1.3.
        for (value, prefix, want) in [(10, 5, vec![10u8]), (1337, 5, vec![31, 154, 10]), (42, 8, vec![42])] {
            let mut out = Vec::new();
            integer(value, prefix, &mut out);
            assert_eq!(out, want, "{value}");
        }
    }

    #[test]
    fn what_is_not_http2_or_breaks_a_header_block_reaches_the_server_unchanged() {
        let junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(run(&mut Rewrite::new(), junk, 5), junk);
        // A DATA frame in the middle of a header block: the server must see it to refuse it.
        let mut encoder = loona_hpack::Encoder::new();
        let block = request(&mut encoder, "a%2Fb", "/p");
        let mut input = PREFACE.to_vec();
        write_frame(HEADERS, 0, 1, &block, &mut input);
        write_frame(0x0, 0, 1, b"x", &mut input);
        write_frame(CONTINUATION, END_HEADERS, 1, b"", &mut input);
        assert_eq!(run(&mut Rewrite::new(), &input, 1), input);
        // A header block that does not decode goes through for the server to refuse.
        let mut input = PREFACE.to_vec();
        write_frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &mut input);
        write_frame(HEADERS, END_HEADERS, 3, &block, &mut input);
        assert_eq!(run(&mut Rewrite::new(), &input, 1), input);
    }

    #[test]
    fn a_frame_larger_than_the_server_accepts_is_not_buffered() {
        let mut input = PREFACE.to_vec();
        input.extend_from_slice(&[0x10, 0, 0, 0x0, 0, 0, 0, 0, 1]); // a 1 MiB DATA frame announced
        let mut rewrite = Rewrite::new();
        assert_eq!(run(&mut rewrite, &input, 3), input, "handed on at once for the server to refuse");
        assert!(rewrite.passes_through());
    }

    #[test]
    fn an_endless_header_block_is_refused() {
        let mut input = PREFACE.to_vec();
        write_frame(HEADERS, 0, 1, b"", &mut input);
        let mut rewrite = Rewrite::new();
        let mut out = Vec::new();
        rewrite.feed(&input, &mut out).expect("feed");
        let continuation = {
            let mut f = Vec::new();
            write_frame(CONTINUATION, 0, 1, &[0u8; MAX_FRAME], &mut f);
            f
        };
        let err = (0..100).find_map(|_| rewrite.feed(&continuation, &mut out).err()).expect("refused");
        assert!(err.to_string().contains("header block over"), "{err}");
    }
}
