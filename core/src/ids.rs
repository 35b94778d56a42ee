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
}
