//! Byte quantities as people write them in configs: `512Mi`, `10Gi`, `1G`, `4096`.

use std::fmt;

/// A byte count parsed from a Kubernetes-style quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

/// A quantity that is not a non-negative whole number of bytes with a known suffix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a byte quantity (examples: 4096, 512Mi, 10Gi, 1T)")]
pub struct ParseBytesError(pub String);

impl std::str::FromStr for Bytes {
    type Err = ParseBytesError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseBytesError(text.to_string());
        let trimmed = text.trim();
        let split = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (digits, suffix) = trimmed.split_at(split);
        if digits.is_empty() {
            return Err(err());
        }
        let number: u64 = digits.parse().map_err(|_| err())?;
        let multiplier: u64 = match suffix {
            "" => 1,
            "k" | "K" => 1000,
            "M" => 1000u64.pow(2),
            "G" => 1000u64.pow(3),
            "T" => 1000u64.pow(4),
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            "Pi" => 1 << 50,
            _ => return Err(err()),
        };
        number.checked_mul(multiplier).map(Bytes).ok_or_else(err)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [("Ti", 1 << 40), ("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)];
        for (suffix, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{suffix}", self.0 / size);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Bytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Bytes(n)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_quantities() {
        let cases = [("4096", 4096), ("1Ki", 1024), ("512Mi", 512 << 20), ("10Gi", 10 << 30), ("1G", 1_000_000_000)];
        for (text, want) in cases {
            assert_eq!(text.parse::<Bytes>(), Ok(Bytes(want)), "{text}");
        }
        for bad in ["", "Gi", "-1Gi", "1.5Gi", "1Xi", "99999999999999999999Pi"] {
            assert!(bad.parse::<Bytes>().is_err(), "{bad}");
        }
        assert_eq!(Bytes(10 << 30).to_string(), "10Gi");
        assert_eq!(Bytes(1000).to_string(), "1000");
    }
}
