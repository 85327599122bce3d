//! The byte layer of the encoded batch (`process-encoded`, see
//! sdk/README.md "The encoded batch"): little-endian integers and
//! length-prefixed byte strings. Shared by the runtime, which encodes
//! batches and decodes outcomes, and the SDK, which does the opposite, so
//! the two sides cannot disagree on the primitives.

/// Outcome tag: records follow.
pub const OK: u8 = 0;
/// Outcome tag: a failure follows.
pub const FAILED: u8 = 1;

/// Appends primitives to a buffer.
pub struct Writer<'a>(pub &'a mut Vec<u8>);

impl Writer<'_> {
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }

    /// A little-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A little-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// A count or length as u32 (batches and values are far below 4 GiB:
    /// guest memory is 32-bit).
    pub fn len(&mut self, n: usize) {
        self.u32(n as u32);
    }

    /// Length, then the bytes.
    pub fn bytes(&mut self, v: &[u8]) {
        self.len(v.len());
        self.0.extend_from_slice(v);
    }
}

/// The buffer ended early or held a value that cannot be (a length past
/// its end, text that is not UTF-8, an unknown tag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed encoded batch: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// Reads primitives from a buffer, checking every bound.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed("a length runs past the end"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    /// A little-endian u32.
    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    /// A little-endian u64.
    pub fn u64(&mut self) -> Result<u64, Malformed> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count; never more than the bytes left could hold at `min_size`
    /// bytes per item, so a corrupt count cannot make the reader reserve
    /// gigabytes.
    pub fn count(&mut self, min_size: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_size.max(1)) > self.buf.len() {
            return Err(Malformed("a count exceeds what the buffer holds"));
        }
        Ok(n)
    }

    /// Length-prefixed bytes, borrowed from the buffer.
    pub fn bytes(&mut self) -> Result<&'a [u8], Malformed> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    /// Length-prefixed UTF-8 text, borrowed from the buffer.
    pub fn str(&mut self) -> Result<&'a str, Malformed> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Malformed("text is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_bounds() {
        let mut buf = Vec::new();
        let mut w = Writer(&mut buf);
        w.u8(7);
        w.u32(1 << 20);
        w.u64(u64::MAX - 1);
        w.bytes(b"");
        w.bytes("héllo".as_bytes());
        let mut r = Reader::new(&buf);
        assert_eq!(r.u8(), Ok(7));
        assert_eq!(r.u32(), Ok(1 << 20));
        assert_eq!(r.u64(), Ok(u64::MAX - 1));
        assert_eq!(r.bytes(), Ok(&b""[..]));
        assert_eq!(r.str(), Ok("héllo"));
        assert!(r.is_empty());
        assert!(r.u8().is_err());

        // A length past the end, a count past what is left, broken UTF-8.
        assert!(Reader::new(&[5, 0, 0, 0, b'a']).bytes().is_err());
        assert!(Reader::new(&[0xff, 0xff, 0xff, 0xff]).count(1).is_err());
        assert!(Reader::new(&[1, 0, 0, 0, 0xff]).str().is_err());
    }
}
