//! Byte quantities as Kubernetes writes them: `512Mi`, `10Gi`, `1.5Gi`, `1G`, `1e9`, `4096`.
//!
//! The grammar is Kubernetes' resource.Quantity: a non-negative decimal number (`1`,
//! `1.5`, `.5`, `1.`), then a binary suffix (`Ki` .. `Ei`), a decimal one (`n`, `u`, `m`,
//! none, `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`). A fraction of a
//! byte rounds up, as Kubernetes rounds a quantity to a whole value.

use std::fmt;

/// A byte count parsed from a Kubernetes-style quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

/// A quantity that is not a non-negative byte count Kubernetes would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a byte quantity (examples: 4096, 512Mi, 1.5Gi, 10G, 1e9)")]
pub struct ParseBytesError(pub String);

/// What a suffix multiplies by: `base^exp`.
fn suffix(text: &str) -> Option<(u128, i32)> {
    Some(match text {
        "" => (10, 0),
        "Ki" => (2, 10),
        "Mi" => (2, 20),
        "Gi" => (2, 30),
        "Ti" => (2, 40),
        "Pi" => (2, 50),
        "Ei" => (2, 60),
        "n" => (10, -9),
        "u" => (10, -6),
        "m" => (10, -3),
        "k" => (10, 3),
        "M" => (10, 6),
        "G" => (10, 9),
        "T" => (10, 12),
        "P" => (10, 15),
        "E" => (10, 18),
        _ => {
            let exp = text.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (10, exp.parse().ok()?)
        }
    })
}

impl std::str::FromStr for Bytes {
    type Err = ParseBytesError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || ParseBytesError(text.to_string());
        let unsigned = text.strip_prefix('+').unwrap_or(text);
        let end = unsigned.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(unsigned.len());
        let (number, rest) = unsigned.split_at(end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
            return Err(err());
        }
        let (base, exp) = suffix(rest).ok_or_else(err)?;
        // The value is digits / 10^fraction.len() * base^exp, exactly, in u128.
        let digits: u128 = format!("{whole}{fraction}").parse().map_err(|_| err())?;
        let pow = |b: u128, e: u32| b.checked_pow(e).ok_or_else(err);
        let mut numerator = digits;
        let mut denominator = pow(10, u32::try_from(fraction.len()).map_err(|_| err())?)?;
        if exp >= 0 {
            numerator = numerator.checked_mul(pow(base, exp.unsigned_abs())?).ok_or_else(err)?;
        } else {
            denominator = denominator.checked_mul(pow(base, exp.unsigned_abs())?).ok_or_else(err)?;
        }
        u64::try_from(numerator.div_ceil(denominator)).map(Bytes).map_err(|_| err())
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
        let cases = [
            ("4096", 4096),
            ("1Ki", 1024),
            ("512Mi", 512 << 20),
            ("10Gi", 10 << 30),
            ("1G", 1_000_000_000),
            ("1.5Gi", 3 << 29),
            (".5Ki", 512),
            ("1.", 1),
            ("+2k", 2000),
            ("1Ei", 1 << 60),
            ("2E", 2_000_000_000_000_000_000),
            ("1e9", 1_000_000_000),
            ("5E-1", 1),
            ("1500m", 2),
            ("0.1", 1),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<Bytes>(), Ok(Bytes(want)), "{text}");
        }
        for bad in
            ["", "Gi", ".", "-1Gi", "1.2.3", "1Xi", "1K", "1 Gi", "e3", "1e", "1e+", "99999999999999999999Pi", "16Ei"]
        {
            assert!(bad.parse::<Bytes>().is_err(), "{bad}");
        }
        assert_eq!(Bytes(10 << 30).to_string(), "10Gi");
        assert_eq!(Bytes(1000).to_string(), "1000");
    }
}
