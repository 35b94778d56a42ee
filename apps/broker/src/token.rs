//! The broker's optional shared token: where it comes from and how it is compared.

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::BrokerError;

/// Longest token accepted (it must fit an `AUTH:` line).
pub const MAX_TOKEN_LEN: usize = 512;

/// A shared secret. Never printed: `Debug` and `Serialize` show `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// A token: 1 to [`MAX_TOKEN_LEN`] printable ASCII characters, no spaces.
    pub fn new(token: &str) -> Result<Self, BrokerError> {
        let bad = |why: &str| BrokerError::Token(format!("the token {why}"));
        if token.is_empty() {
            return Err(bad("is empty"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(bad(&format!("is longer than {MAX_TOKEN_LEN} bytes")));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("must be printable ASCII without spaces"));
        }
        Ok(AuthToken(token.to_string()))
    }

    /// Reads a token from a file (the first line; surrounding whitespace is ignored).
    pub fn from_file(path: &Path) -> Result<Self, BrokerError> {
        let text = fragnet_core::secret::resolve("token", None, Some(path))
            .map_err(|e| BrokerError::Token(e.to_string()))?
            .unwrap_or_default();
        Self::new(&text).map_err(|e| BrokerError::Token(format!("{} (in {})", e, path.display())))
    }

    /// The token from `token`, else from `token_file`, else from the environment
    /// variable `env` (when set and not empty); setting both `token` and `token_file` is
    /// a mistake.
    pub fn resolve(
        token: Option<&AuthToken>,
        token_file: Option<&Path>,
    ) -> Result<Option<AuthToken>, BrokerError> {
        match (token, token_file) {
            (Some(_), Some(f)) => Err(BrokerError::Token(format!(
                "both a token and a token file ({}) are set; set one",
                f.display()
            ))),
            (Some(t), None) => Ok(Some(t.clone())),
            (None, Some(f)) => Self::from_file(f).map(Some),
            // The environment reaches this through the binary's one configuration
            // path (FRAGNET_BROKER__TOKEN, FRAGNET_NATS__TOKEN), not a second one here.
            (None, None) => Ok(None),
        }
    }

    /// The secret, for sending.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with what a client sent, in time independent of where they differ.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

impl Serialize for AuthToken {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for AuthToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AuthToken::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_rules_and_comparison() {
        let t = AuthToken::new("s3cret").unwrap();
        assert!(t.matches("s3cret"));
        for wrong in ["", "s3cre", "s3cret!", "S3cret", "s3cret\0"] {
            assert!(!t.matches(wrong), "{wrong:?}");
        }
        for bad in [
            "",
            "with space",
            "tab\there",
            "é",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(AuthToken::new(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format!("{t:?}"), "AuthToken(<redacted>)");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"<redacted>\"");
    }

    #[test]
    fn token_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  abc123  \n").unwrap();
        assert!(AuthToken::from_file(&f).unwrap().matches("abc123"));
        std::fs::write(&f, "\n").unwrap();
        assert!(AuthToken::from_file(&f).is_err());
        assert!(AuthToken::from_file(&dir.path().join("missing")).is_err());
        let t = AuthToken::new("x").unwrap();
        assert!(AuthToken::resolve(Some(&t), Some(&f)).is_err());
        assert_eq!(AuthToken::resolve(None, None).unwrap(), None);
        assert!(
            AuthToken::resolve(Some(&t), None)
                .unwrap()
                .unwrap()
                .matches("x")
        );
        assert!(
            AuthToken::resolve(None, Some(&f)).is_err(),
            "the file now holds an empty line"
        );
    }
}
