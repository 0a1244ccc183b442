//! The streaming frame decoder: bytes in, frames out.

use crate::Error;

/// The default upper bound of one telegram (16 KiB). `0-0:96.13.0` alone may
/// hold 2048 characters, so real telegrams reach a few KiB.
pub const DEFAULT_MAX_TELEGRAM_BYTES: usize = 16 * 1024;

/// A complete frame: the bytes from the line-initial `/` through the `!` line
/// (CRC and line end included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's bytes.
    pub bytes: &'a [u8],
    /// Stream offset of the `/`.
    pub offset: u64,
    /// `false` for a frame that [`Decoder::finish`] accepted at the end of the
    /// input without a `!` line (it had a header and whole data lines).
    pub terminated: bool,
}

/// A line that ends or breaks the frame being collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    /// The `!` line ends at this index of `buf`.
    End(usize),
    /// A `/` line starts at the first index and ends at the second.
    Restart(usize, usize),
}

impl Event {
    /// The event of a complete line `buf[start..end]` whose first byte is `first`.
    fn of_line(first: u8, start: usize, end: usize) -> Option<Event> {
        match first {
            b'!' => Some(Event::End(end)),
            b'/' => Some(Event::Restart(start, end)),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames: skipping bytes until a `/` at the start of a line.
    Hunt,
    /// Inside a frame: collecting lines until the `!` line.
    Frame,
    /// After an oversize frame: skipping like `Hunt`, but the bytes count as
    /// part of the rejected frame, not as garbage.
    Discard,
}

/// Counters of what the decoder has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Bytes consumed in all.
    pub bytes: u64,
    /// Bytes skipped between frames (garbage, noise, a gateway's extra lines).
    pub skipped: u64,
    /// Frames yielded.
    pub frames: u64,
}

/// A streaming decoder of P1 telegram frames.
///
/// Feed it byte chunks of any size (one byte at a time works) and it yields
/// complete frames; the result does not depend on how the input is chunked.
/// A frame starts at a `/` that begins a line (a `/` inside a value, as in
/// `m3/h`, does not) and ends with the line that starts with `!`. Bytes between
/// frames are skipped. A line-initial `/` inside a frame abandons that frame
/// as [`Error::Truncated`] and starts a new one. A frame that grows past the
/// size limit is dropped as [`Error::Oversize`] as soon as it does, so memory
/// stays bounded by the limit whatever the input.
///
/// ```
/// let mut decoder = p1_telegram::Decoder::new(16 * 1024);
/// let mut input: &[u8] = b"noise\r\n/ISk5\\2MIE5E-200\r\n\r\n1-0:1.8.0(000002.331*kWh)\r\n!\r\n";
/// let frame = decoder.next_frame(&mut input).unwrap().unwrap();
/// assert_eq!(frame.offset, 7);
/// assert!(frame.bytes.ends_with(b"!\r\n"));
/// ```
#[derive(Debug, Clone)]
pub struct Decoder {
    buf: Vec<u8>,
    max: usize,
    state: State,
    /// Whether the next byte in `Hunt`/`Discard` begins a line.
    line_start: bool,
    /// `buf[line..]` is the current, incomplete line.
    line: usize,
    /// Stream offset of `buf[0]`.
    frame_offset: u64,
    /// Stream offset of the next byte; back to 0 after [`Decoder::finish`].
    pos: u64,
    /// A frame was returned and its bytes are still borrowed out; drop them
    /// on the next call.
    clear_pending: bool,
    stats: DecoderStats,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_MAX_TELEGRAM_BYTES)
    }
}

impl Decoder {
    /// A decoder that rejects frames longer than `max_telegram_bytes`
    /// (at least 64 bytes are always allowed).
    pub fn new(max_telegram_bytes: usize) -> Decoder {
        let max = max_telegram_bytes.max(64);
        Decoder {
            buf: Vec::with_capacity(max.min(4096)),
            max,
            state: State::Hunt,
            line_start: true,
            line: 0,
            frame_offset: 0,
            pos: 0,
            clear_pending: false,
            stats: DecoderStats::default(),
        }
    }

    /// The size limit in force.
    pub fn max_telegram_bytes(&self) -> usize {
        self.max
    }

    /// What the decoder has seen so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Consumes bytes from the front of `input` until a frame completes or
    /// breaks, or `input` is empty. Call it again with the rest of the input
    /// until it returns `None`, then feed the next chunk.
    ///
    /// ```
    /// # fn handle(_: &[u8]) {}
    /// let mut decoder = p1_telegram::Decoder::default();
    /// let mut rest: &[u8] = b"/X5\r\n\r\n!\r\n";
    /// while let Some(result) = decoder.next_frame(&mut rest) {
    ///     match result {
    ///         Ok(frame) => handle(frame.bytes),
    ///         Err(error) => eprintln!("{error}"),
    ///     }
    /// }
    /// ```
    pub fn next_frame<'s>(&'s mut self, input: &mut &[u8]) -> Option<Result<Frame<'s>, Error>> {
        if self.clear_pending {
            self.buf.clear();
            self.line = 0;
            self.clear_pending = false;
        }
        while !input.is_empty() {
            match self.state {
                State::Hunt | State::Discard => self.hunt(input),
                State::Frame => {
                    if let Some(done) = self.collect(input) {
                        return Some(done.map(|terminated| Frame {
                            bytes: &self.buf,
                            offset: self.frame_offset,
                            terminated,
                        }));
                    }
                }
            }
        }
        None
    }

    /// Ends the input: returns the frame still being collected, if any. A
    /// frame whose `!` line lacks only its line end is complete; one that
    /// ended after whole data lines without a `!` line is accepted with
    /// `terminated: false` (recordings cut after the last line; Veitur sends
    /// no CRC, so nothing is lost); one cut inside a line is
    /// [`Error::Truncated`]. The decoder is then ready for a new stream.
    pub fn finish(&mut self) -> Option<Result<Frame<'_>, Error>> {
        if self.clear_pending {
            self.buf.clear();
            self.line = 0;
            self.clear_pending = false;
        }
        let state = std::mem::replace(&mut self.state, State::Hunt);
        self.line_start = true;
        self.pos = 0;
        if state != State::Frame {
            return None;
        }
        self.clear_pending = true;
        let partial = &self.buf[self.line..];
        if partial.first() == Some(&b'!') {
            self.stats.frames += 1;
            return Some(Ok(self.frame(true)));
        }
        let lines = memchr::memchr_iter(b'\n', &self.buf[..self.line]).count();
        if partial.is_empty() && lines >= 2 {
            self.stats.frames += 1;
            return Some(Ok(self.frame(false)));
        }
        Some(Err(Error::Truncated {
            offset: self.frame_offset,
            len: self.buf.len(),
        }))
    }

    fn frame(&self, terminated: bool) -> Frame<'_> {
        Frame {
            bytes: &self.buf,
            offset: self.frame_offset,
            terminated,
        }
    }

    /// Skips to the next line-initial `/`; starts a frame there.
    fn hunt(&mut self, input: &mut &[u8]) {
        let skip = if self.line_start && input.first() == Some(&b'/') {
            0
        } else if let Some(i) = memchr::memmem::find(input, b"\n/") {
            i + 1
        } else {
            // No frame start in this chunk; remember whether it ended a line.
            let n = input.len();
            self.line_start = input.last() == Some(&b'\n');
            self.consume_skipped(input, n);
            return;
        };
        self.consume_skipped(input, skip);
        self.state = State::Frame;
        self.buf.clear();
        self.line = 0;
        self.frame_offset = self.pos;
    }

    fn consume_skipped(&mut self, input: &mut &[u8], n: usize) {
        if self.state == State::Hunt {
            self.stats.skipped += n as u64;
        }
        self.stats.bytes += n as u64;
        self.pos += n as u64;
        *input = &input[n..];
    }

    /// The first line completed by the bytes `buf[old_len..]` that starts
    /// with `!` or `/` (the frame's own first line aside), as an event; and
    /// `self.line` moved to the start of the first line not completed.
    fn first_event(&mut self, old_len: usize) -> Option<Event> {
        let new = &self.buf[old_len..];
        // The line in progress (it may have begun in an earlier chunk).
        let first_end = old_len + memchr::memchr(b'\n', new)? + 1;
        let line_start = std::mem::replace(&mut self.line, first_end);
        if line_start != 0
            && let Some(event) = Event::of_line(self.buf[line_start], line_start, first_end)
        {
            return Some(event);
        }
        // Lines starting after it: only those whose first byte is '!' or '/'
        // matter, and both bytes are rare inside a frame.
        let rest = &self.buf[first_end..];
        for at in memchr::memchr2_iter(b'!', b'/', rest) {
            if at > 0 && rest[at - 1] != b'\n' {
                continue; // inside a line (`m3/h`)
            }
            let start = first_end + at;
            let Some(len) = memchr::memchr(b'\n', &rest[at..]) else {
                // The line is not complete yet: no event, and no line after it is.
                self.line = start;
                return None;
            };
            let end = start + len + 1;
            self.line = end;
            return Event::of_line(self.buf[start], start, end);
        }
        // No event line: the next line starts after the chunk's last line end.
        self.line = old_len + memchr::memrchr(b'\n', new).map_or(0, |i| i + 1);
        None
    }

    /// Appends as much of `input` as the limit allows, then looks at each
    /// line completed by it. Returns `Some(Ok(true))` when a `!` line
    /// completed the frame, `Some(Err)` when the frame broke; bytes after
    /// the event stay in `input`.
    fn collect(&mut self, input: &mut &[u8]) -> Option<Result<bool, Error>> {
        let old_len = self.buf.len();
        let room = self.max - old_len;
        let avail = input.len().min(room);
        // One copy for the whole chunk; then, instead of a search per line,
        // one search for the first line end and one for the bytes that can
        // start an event line ('!', '/'), checking that a line end precedes
        // them. Same result as looking at the first byte of every line the
        // chunk completes, in order.
        self.buf.extend_from_slice(&input[..avail]);
        let event = self.first_event(old_len);
        let consumed = match event {
            Some(Event::End(end) | Event::Restart(_, end)) => end - old_len,
            None => avail,
        };
        self.stats.bytes += consumed as u64;
        self.pos += consumed as u64;
        let overflow = input.len() > consumed && event.is_none();
        *input = &input[consumed..];
        match event {
            Some(Event::End(end)) => {
                self.buf.truncate(end);
                self.state = State::Hunt;
                self.line_start = true;
                self.clear_pending = true;
                self.stats.frames += 1;
                Some(Ok(true))
            }
            Some(Event::Restart(start, end)) => {
                // A new frame starts inside this one: the old one broke off.
                self.buf.truncate(end);
                let error = Error::Truncated {
                    offset: self.frame_offset,
                    len: start,
                };
                self.frame_offset += start as u64;
                self.buf.drain(..start);
                self.line = self.buf.len();
                Some(Err(error))
            }
            None if overflow => {
                // More input than the limit leaves room for, and no end in
                // sight: drop the frame now, never buffer past the limit.
                let error = Error::Oversize {
                    offset: self.frame_offset,
                    limit: self.max,
                };
                self.line_start = self.buf.last() == Some(&b'\n');
                self.buf.clear();
                self.line = 0;
                self.state = State::Discard;
                Some(Err(error))
            }
            None => None,
        }
    }
}
