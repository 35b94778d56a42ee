//! Content and node identifiers: 32-byte BLAKE3 digests shown as 64 lowercase hex.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Index of a fragment inside a video (`fragment_<i>.bin`).
pub type FragmentIndex = u32;

/// A 32-byte BLAKE3 digest, written as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

/// Why a string is not a valid 64-hex id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected 64 lowercase hex characters, got {0:?}")]
pub struct BadId(pub String);

impl Digest {
    /// BLAKE3 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        self.with_hex(str::to_string)
    }

    /// Calls `f` with the lowercase hex, formatted on the stack: ids are written in every
    /// registry answer, so this avoids an allocation per id.
    pub fn with_hex<T>(&self, f: impl FnOnce(&str) -> T) -> T {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = HEX[(b >> 4) as usize];
            buf[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        f(std::str::from_utf8(&buf).expect("hex digits are ASCII"))
    }

    /// The first 8 hex characters, for logs and summaries.
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_string()
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

impl FromStr for Digest {
    type Err = BadId;
    fn from_str(s: &str) -> Result<Self, BadId> {
        let bad = || BadId(s.chars().take(80).collect());
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let nib = |c: u8| match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'a'..=b'f' => Some(c - b'a' + 10),
                _ => None,
            };
            out[i] = (nib(pair[0]).ok_or_else(bad)? << 4) | nib(pair[1]).ok_or_else(bad)?;
        }
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.with_hex(|h| f.write_str(h))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.with_hex(|h| s.serialize_str(h))
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Digest);

        impl $name {
            /// The first 8 hex characters, for logs and summaries.
            pub fn short(&self) -> String {
                self.0.short()
            }
        }
        impl From<$name> for Digest {
            fn from(id: $name) -> Digest {
                id.0
            }
        }
        impl From<Digest> for $name {
            fn from(d: Digest) -> $name {
                $name(d)
            }
        }
        impl FromStr for $name {
            type Err = BadId;
            fn from_str(s: &str) -> Result<Self, BadId> {
                s.parse().map($name)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }
    };
}

id_type!(
    /// A video's id: the BLAKE3 of its manifest's canonical bytes.
    VideoId
);
id_type!(
    /// A node's id: the BLAKE3 of its public key (SubjectPublicKeyInfo DER).
    NodeId
);

/// The fewest hex digits a short id may have: fragnet prints 8 (`73cdffcc…`).
pub const MIN_PREFIX: usize = 8;

/// A video or node id as people type it: the full 64 hex, or a unique prefix of at
/// least [`MIN_PREFIX`] hex digits, optionally ending in `…` or `...` as fragnet prints
/// short ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPrefix(String);

/// Why a short id names no one id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    /// Characters other than lowercase hex, or more than 64 of them.
    #[error("{0:?} is not an id: expected {MIN_PREFIX} to 64 lowercase hex characters")]
    NotHex(String),
    /// Fewer than [`MIN_PREFIX`] hex digits.
    #[error("{0:?} is too short: give at least {MIN_PREFIX} hex characters of the id")]
    TooShort(String),
    /// No known id starts with it.
    #[error("no known id starts with {0}")]
    NoMatch(String),
    /// Several known ids start with it.
    #[error("{prefix} is ambiguous; it matches {}", matches.join(", "))]
    Ambiguous {
        /// What was given.
        prefix: String,
        /// Every id it matches (full hex).
        matches: Vec<String>,
    },
}

impl IdPrefix {
    /// Checks the form only (hex, length); [`IdPrefix::resolve`] finds the id.
    pub fn parse(input: &str) -> Result<Self, PrefixError> {
        let s = input.trim();
        let s = s
            .strip_suffix('…')
            .or_else(|| s.strip_suffix("..."))
            .unwrap_or(s);
        let shown = || s.chars().take(80).collect::<String>();
        if s.len() > 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(PrefixError::NotHex(shown()));
        }
        if s.len() < MIN_PREFIX {
            return Err(PrefixError::TooShort(shown()));
        }
        Ok(IdPrefix(s.to_string()))
    }

    /// The hex digits given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The whole id, when all 64 digits were given.
    pub fn full(&self) -> Option<Digest> {
        self.0.parse().ok()
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &Digest) -> bool {
        id.with_hex(|h| h.starts_with(&self.0))
    }

    /// The one id among `known` that starts with this prefix. A full id resolves to
    /// itself even when it is not known (the caller may still find it elsewhere).
    pub fn resolve<I>(&self, known: impl IntoIterator<Item = I>) -> Result<I, PrefixError>
    where
        I: Copy + Ord + Into<Digest> + From<Digest>,
    {
        if let Some(d) = self.full() {
            return Ok(I::from(d));
        }
        let mut found: Vec<I> = known
            .into_iter()
            .filter(|i| self.matches(&(*i).into()))
            .collect();
        found.sort();
        found.dedup();
        match found.len() {
            0 => Err(PrefixError::NoMatch(self.0.clone())),
            1 => Ok(found[0]),
            _ => Err(PrefixError::Ambiguous {
                prefix: self.0.clone(),
                matches: found.into_iter().map(|i| i.into().to_hex()).collect(),
            }),
        }
    }
}

/// OpenAPI schemas: ids are 64 lowercase hex characters.
#[cfg(feature = "openapi")]
mod openapi_schema {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    fn hex64(description: &str) -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[0-9a-f]{64}$"))
            .min_length(Some(64))
            .max_length(Some(64))
            .description(Some(description))
            .examples(["9f2c1b3a5d7e9f2c1b3a5d7e9f2c1b3a5d7e9f2c1b3a5d7e9f2c1b3a5d7e9f2c"])
            .into()
    }

    macro_rules! schema {
        ($ty:ty, $desc:expr) => {
            impl utoipa::PartialSchema for $ty {
                fn schema() -> RefOr<Schema> {
                    hex64($desc)
                }
            }
            impl utoipa::ToSchema for $ty {}
        };
    }
    schema!(
        super::Digest,
        "A BLAKE3 digest, 64 lowercase hex characters."
    );
    schema!(
        super::VideoId,
        "A video id: the BLAKE3 of the manifest's canonical bytes, 64 lowercase hex characters."
    );
    schema!(
        super::NodeId,
        "A node id: the BLAKE3 of the node's public key, 64 lowercase hex characters."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let d = Digest::of(b"fragnet");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
        assert_eq!(d.to_hex(), blake3::hash(b"fragnet").to_hex().as_str());
    }

    #[test]
    fn rejects_bad_hex() {
        assert!("abc".parse::<Digest>().is_err());
        assert!(
            "A".repeat(64).parse::<Digest>().is_err(),
            "uppercase is not canonical"
        );
        assert!("g".repeat(64).parse::<Digest>().is_err());
        assert!("é".repeat(32).parse::<Digest>().is_err());
    }

    #[test]
    fn prefixes_resolve_when_unique() {
        let a = VideoId(Digest::of(b"a"));
        let b = VideoId(Digest::of(b"b"));
        let known = [a, b];
        let ah = a.to_string();
        let p = IdPrefix::parse(&ah[..8]).unwrap();
        assert_eq!(p.resolve(known).unwrap(), a);
        let p = IdPrefix::parse(&format!("{}…", &ah[..8])).unwrap();
        assert_eq!(p.resolve(known).unwrap(), a, "the printed short form works");
        let p = IdPrefix::parse(&format!("{}...", &ah[..12])).unwrap();
        assert_eq!(p.resolve(known).unwrap(), a);
        assert_eq!(IdPrefix::parse(&ah).unwrap().resolve(known).unwrap(), a);
        assert_eq!(
            IdPrefix::parse(&ah[..7]),
            Err(PrefixError::TooShort(ah[..7].to_string()))
        );
        assert!(matches!(
            IdPrefix::parse("ABCDEF0123"),
            Err(PrefixError::NotHex(_))
        ));
        assert!(matches!(
            IdPrefix::parse(&format!("{ah}0")),
            Err(PrefixError::NotHex(_))
        ));
        // No match among the known ones.
        let other = if ah.starts_with('0') {
            "11111111"
        } else {
            "00000000"
        };
        assert_eq!(
            IdPrefix::parse(other).unwrap().resolve(known),
            Err(PrefixError::NoMatch(other.to_string()))
        );
    }

    #[test]
    fn ambiguous_prefixes_list_every_match() {
        // Two ids sharing their first 8 hex digits.
        let mut x = [0u8; 32];
        x[..4].copy_from_slice(&[0x73, 0xcd, 0xff, 0xcc]);
        let mut y = x;
        y[31] = 1;
        let (x, y) = (VideoId(Digest(x)), VideoId(Digest(y)));
        let e = IdPrefix::parse("73cdffcc")
            .unwrap()
            .resolve([x, y, x])
            .unwrap_err();
        assert_eq!(
            e,
            PrefixError::Ambiguous {
                prefix: "73cdffcc".into(),
                matches: vec![x.to_string(), y.to_string()]
            }
        );
        assert!(e.to_string().contains(&y.to_string()));
        // One more digit tells them apart.
        let longer = &y.to_string()[..64];
        assert_eq!(IdPrefix::parse(longer).unwrap().resolve([x, y]).unwrap(), y);
    }
}
