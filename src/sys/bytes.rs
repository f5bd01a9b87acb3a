//! Sizes in bytes as people write them in a configuration file: `12GiB`, `512 MiB`, `1.5GB`,
//! `4000000000` (plain bytes).

use std::fmt;

use serde::Deserialize;

/// A number of bytes, read from an integer or a text with a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

/// Units and their factors; binary (KiB) and decimal (KB) both, case-insensitive.
const UNITS: [(&str, u64); 9] = [
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

impl ByteSize {
    /// Parses `12GiB`, `1.5 GB`, `800MiB`, `4096` (bytes); the error says what is accepted.
    pub fn parse(text: &str) -> Result<ByteSize, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = (&t[..split], t[split..].trim().to_ascii_lowercase());
        let bad = || {
            format!(
                "`{text}` is not a size: write a number with a unit, e.g. 12GiB, 800MiB, 1.5GB (or plain bytes)"
            )
        };
        let value: f64 = number.parse().map_err(|_| bad())?;
        let factor = if unit.is_empty() {
            1
        } else {
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, f)| *f)
                .ok_or_else(bad)?
        };
        let bytes = value * factor as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(bad());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    /// Binary units with one decimal: `1.5 GiB`, `800.0 MiB`, `512 B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        for (unit, factor) in [
            ("TiB", 1u64 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ] {
            if self.0 >= factor {
                return write!(f, "{:.1} {unit}", b / factor as f64);
            }
        }
        write!(f, "{} B", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(ByteSize(b)),
            Raw::Text(t) => ByteSize::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ByteSize;

    #[test]
    fn sizes_with_binary_and_decimal_units_and_plain_bytes() {
        assert_eq!(ByteSize::parse("12GiB").unwrap().0, 12 << 30);
        assert_eq!(ByteSize::parse(" 800 mib ").unwrap().0, 800 << 20);
        assert_eq!(ByteSize::parse("1.5GB").unwrap().0, 1_500_000_000);
        assert_eq!(ByteSize::parse("4096").unwrap().0, 4096);
        for bad in ["", "GiB", "12 parsecs", "-1GiB", "1e30TiB"] {
            let e = ByteSize::parse(bad).unwrap_err();
            assert!(e.contains("is not a size"), "{bad}: {e}");
        }
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(ByteSize(100).to_string(), "100 B");
    }

    #[test]
    fn read_from_yaml_as_text_or_integer() {
        #[derive(serde::Deserialize)]
        struct S {
            a: ByteSize,
            b: ByteSize,
        }
        let s: S = crate::sys::yaml::parse("a: 2GiB\nb: 1000\n").unwrap();
        assert_eq!((s.a.0, s.b.0), (2 << 30, 1000));
        let e = crate::sys::yaml::parse::<S>("a: lots\nb: 1\n")
            .err()
            .unwrap();
        assert!(e.to_string().contains("is not a size"), "{e}");
    }
}
