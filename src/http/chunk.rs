//! HTTP/1.1 chunked transfer coding (RFC 9112 §7.1): framing out, decoding in.

/// The terminating chunk with an empty trailer section: a clean end of a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Bytes a chunk adds around its payload at most: 16 hex digits, CRLF, and the closing CRLF.
pub const MAX_CHUNK_OVERHEAD: usize = 16 + 2 + 2;

/// Appends `payload` to `out` as one chunk: size in hex, CRLF, payload, CRLF. Empty payloads are
/// skipped, since an empty chunk would end the body.
pub fn encode_chunk(payload: &[u8], out: &mut Vec<u8>) {
    if payload.is_empty() {
        return;
    }
    push_chunk_header(payload.len(), out);
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes.
pub fn push_chunk_header(len: usize, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let _ = write!(out, "{len:x}\r\n");
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// A size line that is not hex, too long, or not ended by CRLF; or chunk data not ended by CRLF.
    Malformed,
    /// The decoded body would pass the cap.
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a size line (and any chunk extension) up to CRLF.
    Size,
    /// Reading `remaining` payload bytes.
    Data { remaining: usize },
    /// Expecting the CRLF that closes a chunk's payload.
    DataEnd,
    /// After the last chunk: reading trailer lines until an empty one. `line_len` counts the bytes
    /// of the current line before its LF; `lone_cr` says they are exactly one CR.
    Trailer { line_len: usize, lone_cr: bool },
    /// The body is complete.
    Done,
}

/// Longest size line (with extensions) or trailer line accepted.
const MAX_LINE: usize = 4096;

/// A push decoder for a chunked request body: feed it bytes, it appends the payload to a buffer.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    line: Vec<u8>,
    limit: usize,
}

impl ChunkedDecoder {
    /// A decoder that refuses bodies whose decoded size passes `limit`.
    pub fn new(limit: usize) -> Self {
        ChunkedDecoder { state: State::Size, line: Vec::new(), limit }
    }

    /// Whether the terminating chunk and trailers have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decodes as much of `input` as belongs to the body, appending payload to `body`.
    ///
    /// Returns how many input bytes were consumed; bytes after the end of the body (a pipelined
    /// request) are left for the caller.
    pub fn decode(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                State::Size => {
                    let byte = input[at];
                    at += 1;
                    if byte == b'\n' {
                        let line = std::mem::take(&mut self.line);
                        let line = line.strip_suffix(b"\r").ok_or(ChunkError::Malformed)?;
                        let size_text = line.split(|&b| b == b';').next().unwrap_or(&[]);
                        let size_text = std::str::from_utf8(size_text).map_err(|_| ChunkError::Malformed)?;
                        let size_text = size_text.trim_end_matches([' ', '\t']);
                        // `from_str_radix` would also take a leading `+`: chunk-size is 1*HEXDIG.
                        if size_text.is_empty()
                            || size_text.len() > 16
                            || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
                        {
                            return Err(ChunkError::Malformed);
                        }
                        let size = usize::from_str_radix(size_text, 16).map_err(|_| ChunkError::Malformed)?;
                        if size == 0 {
                            self.state = State::Trailer { line_len: 0, lone_cr: false };
                        } else {
                            if body.len().saturating_add(size) > self.limit {
                                return Err(ChunkError::TooLarge);
                            }
                            self.state = State::Data { remaining: size };
                        }
                    } else {
                        if self.line.len() >= MAX_LINE {
                            return Err(ChunkError::Malformed);
                        }
                        self.line.push(byte);
                    }
                }
                State::Data { remaining } => {
                    let take = remaining.min(input.len() - at);
                    body.extend_from_slice(&input[at..at + take]);
                    at += take;
                    self.state = if take == remaining {
                        State::DataEnd
                    } else {
                        State::Data { remaining: remaining - take }
                    };
                }
                State::DataEnd => {
                    self.line.push(input[at]);
                    at += 1;
                    if self.line.len() == 2 {
                        if self.line != b"\r\n" {
                            return Err(ChunkError::Malformed);
                        }
                        self.line.clear();
                        self.state = State::Size;
                    }
                }
                State::Trailer { line_len, lone_cr } => {
                    let byte = input[at];
                    at += 1;
                    if byte == b'\n' {
                        // Only an empty line (CRLF, or a bare LF) ends the trailer section; any other
                        // line, one byte long or not, is a field to skip.
                        if line_len == 0 || lone_cr {
                            self.state = State::Done;
                            return Ok(at);
                        }
                        self.state = State::Trailer { line_len: 0, lone_cr: false };
                    } else {
                        if line_len >= MAX_LINE {
                            return Err(ChunkError::Malformed);
                        }
                        let lone_cr = line_len == 0 && byte == b'\r';
                        self.state = State::Trailer { line_len: line_len + 1, lone_cr };
                    }
                }
                State::Done => return Ok(at),
            }
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8], limit: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut body = Vec::new();
        let used = decoder.decode(input, &mut body)?;
        assert!(decoder.is_done(), "body incomplete");
        Ok((body, used))
    }

    /// The same input fed one byte at a time must give the same result.
    fn decode_bytewise(input: &[u8], limit: usize) -> Result<Vec<u8>, ChunkError> {
        let mut decoder = ChunkedDecoder::new(limit);
        let mut body = Vec::new();
        for b in input {
            if decoder.is_done() {
                break;
            }
            decoder.decode(std::slice::from_ref(b), &mut body)?;
        }
        assert!(decoder.is_done());
        Ok(body)
    }

    #[test]
    fn decodes_chunks_and_stops_at_the_end() {
        let input = b"5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\nPOST /next";
        let (body, used) = decode_all(input, 100).unwrap();
        assert_eq!(body, b"hello world");
        assert_eq!(&input[used..], b"POST /next");
        assert_eq!(decode_bytewise(input, 100).unwrap(), b"hello world");
    }

    #[test]
    fn enforces_the_decoded_cap() {
        assert_eq!(decode_all(b"5\r\nhello\r\n0\r\n\r\n", 5).unwrap().0, b"hello");
        assert_eq!(decode_all(b"5\r\nhello\r\n1\r\n!\r\n0\r\n\r\n", 5), Err(ChunkError::TooLarge));
        assert_eq!(decode_all(b"ffffffffffffffff\r\n", 5), Err(ChunkError::TooLarge));
    }

    #[test]
    fn only_an_empty_line_ends_the_trailers() {
        // A one-byte trailer line with a bare LF is a field, not the end (it once was).
        let input = b"5\r\nhello\r\n0\r\nX\nGET /metrics HTTP/1.1\r\n\r\nNEXT";
        let (body, used) = decode_all(input, 100).unwrap();
        assert_eq!((body.as_slice(), &input[used..]), (&b"hello"[..], &b"NEXT"[..]));
        assert_eq!(decode_bytewise(input, 100).unwrap(), b"hello");
        assert_eq!(decode_all(b"0\r\n\nNEXT", 100).unwrap().1, 4, "a bare LF is an empty line too");
    }

    /// Feeds `input` in three pieces split at `i` and `j`, as reads would deliver it; returns the
    /// decoded body and how many bytes each piece consumed.
    fn decode_in_three(input: &[u8], i: usize, j: usize) -> (Vec<u8>, [usize; 3], bool) {
        let mut decoder = ChunkedDecoder::new(100);
        let mut body = Vec::new();
        let mut used = [0; 3];
        for (n, piece) in [&input[..i], &input[i..j], &input[j..]].into_iter().enumerate() {
            if decoder.is_done() {
                break;
            }
            used[n] = decoder.decode(piece, &mut body).expect("well-formed");
            if !decoder.is_done() {
                assert_eq!(used[n], piece.len(), "an unfinished decoder takes every byte it is given");
            }
        }
        (body, used, decoder.is_done())
    }

    #[test]
    fn a_chunk_split_anywhere_decodes_the_same() {
        // Reads end anywhere: a size line and part of its data in one, the rest in the next (the data
        // state must count what this read holds after the size line, not the whole read).
        let input = b"5\r\nhello\r\nb;x=1\r\n world, and\r\n0\r\nT: 1\r\n\r\nNEXT";
        let end = input.len() - b"NEXT".len();
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let (body, used, done) = decode_in_three(input, i, j);
                assert!(done, "split at {i}, {j}");
                assert_eq!(body, b"hello world, and", "split at {i}, {j}");
                assert_eq!(used.iter().sum::<usize>(), end, "split at {i}, {j}: consumed {used:?}");
                let expected = [i.min(end), j.min(end) - i.min(end), end - j.min(end)];
                assert_eq!(used, expected, "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn a_size_line_with_part_of_its_data_stops_at_the_read() {
        let mut decoder = ChunkedDecoder::new(100);
        let mut body = Vec::new();
        assert_eq!(decoder.decode(b"a\r\n0123", &mut body), Ok(7));
        assert_eq!(body, b"0123");
        assert_eq!(decoder.state, State::Data { remaining: 6 });
        assert_eq!(decoder.decode(b"45", &mut body), Ok(2));
        assert_eq!(decoder.state, State::Data { remaining: 4 });
        assert_eq!(decoder.decode(b"6789\r\n0\r\n\r\nGET", &mut body), Ok(11));
        assert_eq!(body, b"0123456789");
        assert!(decoder.is_done());
    }

    #[test]
    fn refuses_malformed_framing() {
        for input in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"x\r\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\nhello\r\n",
            b"\r\n",
            b"10000000000000000\r\n",
        ] {
            let mut decoder = ChunkedDecoder::new(1 << 20);
            assert_eq!(decoder.decode(input, &mut Vec::new()), Err(ChunkError::Malformed), "{input:?}");
        }
    }

    #[test]
    fn frames_chunks() {
        let mut out = Vec::new();
        encode_chunk(b"hello", &mut out);
        encode_chunk(b"", &mut out);
        encode_chunk(&[b'x'; 26], &mut out);
        let mut expected = b"5\r\nhello\r\n1a\r\n".to_vec();
        expected.extend_from_slice(&[b'x'; 26]);
        expected.extend_from_slice(b"\r\n");
        assert_eq!(out, expected);
    }
}
