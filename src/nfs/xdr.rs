//! XDR (RFC 4506): big-endian 4-byte units, variable-length data prefixed by its length
//! and padded to a multiple of four. The decoder never trusts a length from the wire
//! beyond the bytes actually received and the limit the caller gives.

/// Why a reply could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XdrError {
    #[error("reply ended early: {need} more bytes needed at offset {at}")]
    Short { need: usize, at: usize },
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLong { what: &'static str, len: usize, max: usize },
    #[error("invalid {0} in reply")]
    Invalid(&'static str),
}

/// Builds an XDR message.
#[derive(Debug, Default)]
pub struct Enc {
    buf: Vec<u8>,
}

fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

impl Enc {
    #[must_use]
    pub fn new() -> Enc {
        Enc { buf: Vec::with_capacity(256) }
    }

    pub fn u32(&mut self, v: u32) -> &mut Enc {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Enc {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Enc {
        self.u32(u32::from(v))
    }

    /// Fixed-length opaque data (padded).
    pub fn fixed(&mut self, bytes: &[u8]) -> &mut Enc {
        self.buf.extend_from_slice(bytes);
        self.buf.extend(std::iter::repeat_n(0u8, pad(bytes.len())));
        self
    }

    /// Variable-length opaque data or a string: length, bytes, padding. Lengths above
    /// u32::MAX cannot be expressed; callers bound them far below that.
    pub fn opaque(&mut self, bytes: &[u8]) -> &mut Enc {
        self.u32(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
        self.fixed(bytes)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[must_use]
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    #[must_use]
    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads an XDR message.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    #[must_use]
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let out = &self.buf[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(XdrError::Short { need: n - (self.buf.len() - self.pos).min(n), at: self.pos }),
        }
    }

    pub fn u32(&mut self) -> Result<u32, XdrError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self) -> Result<u64, XdrError> {
        let hi = u64::from(self.u32()?);
        let lo = u64::from(self.u32()?);
        Ok(hi << 32 | lo)
    }

    pub fn bool(&mut self) -> Result<bool, XdrError> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(XdrError::Invalid("boolean")),
        }
    }

    /// Fixed-length opaque data of `n` bytes (and its padding).
    pub fn fixed(&mut self, n: usize) -> Result<&'a [u8], XdrError> {
        let out = self.take(n)?;
        self.take(pad(n))?;
        Ok(out)
    }

    /// Variable-length opaque data of at most `max` bytes.
    pub fn opaque(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], XdrError> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if len > max {
            return Err(XdrError::TooLong { what, len, max });
        }
        self.fixed(len)
    }

    /// The undecoded rest.
    #[must_use]
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let mut e = Enc::new();
        e.u32(7).u64(1 << 40).bool(true).opaque(b"abcde").fixed(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let bytes = e.into_bytes();
        assert_eq!(bytes.len(), 4 + 8 + 4 + (4 + 8) + 8);
        let mut d = Dec::new(&bytes);
        assert_eq!(d.u32(), Ok(7));
        assert_eq!(d.u64(), Ok(1 << 40));
        assert_eq!(d.bool(), Ok(true));
        assert_eq!(d.opaque("name", 255), Ok(&b"abcde"[..]));
        assert_eq!(d.fixed(8), Ok(&[1, 2, 3, 4, 5, 6, 7, 8][..]));
        assert!(d.rest().is_empty());
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut e = Enc::new();
        e.u32(u32::MAX);
        let bytes = e.into_bytes();
        assert!(matches!(Dec::new(&bytes).opaque("data", 1 << 20), Err(XdrError::TooLong { .. })));
        let mut e = Enc::new();
        e.u32(100).u32(1);
        let bytes = e.into_bytes();
        assert!(matches!(Dec::new(&bytes).opaque("data", 1 << 20), Err(XdrError::Short { .. })));
        assert_eq!(Dec::new(&[0, 0, 0, 2]).bool(), Err(XdrError::Invalid("boolean")));
        assert!(Dec::new(&[0, 0]).u32().is_err());
    }
}
