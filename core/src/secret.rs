//! Secrets (tokens) given inline or in a file: one way to read them for every
//! service and client, so a token file means the same thing to the manager, the
//! broker, the NATS client and the `fragnet` binary.

use std::path::Path;

/// Largest token file read.
pub const MAX_TOKEN_FILE: u64 = 8192;

/// Why a secret could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

/// The secret `key` (say `manager.token`): `inline`, else the first line of `file`
/// (at most [`MAX_TOKEN_FILE`] bytes), trimmed; `None` when neither is set. Both set,
/// an unreadable or oversized file, or an empty secret is an error naming `key`.
pub fn resolve(
    key: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, SecretError> {
    let token = match (inline, file) {
        (Some(_), Some(f)) => {
            return Err(SecretError(format!(
                "{key} and {key}_file ({}) are both set; set one",
                f.display()
            )));
        }
        (Some(t), None) => t.trim().to_string(),
        (None, Some(f)) => {
            let read = |e: std::io::Error| {
                SecretError(format!("{key}_file: reading {}: {e}", f.display()))
            };
            if std::fs::metadata(f).map_err(read)?.len() > MAX_TOKEN_FILE {
                return Err(SecretError(format!(
                    "{key}_file: {} is larger than {MAX_TOKEN_FILE} bytes",
                    f.display()
                )));
            }
            let text = std::fs::read_to_string(f).map_err(read)?;
            let first = text.lines().next().unwrap_or("").trim().to_string();
            if first.is_empty() {
                return Err(SecretError(format!(
                    "{key}_file: the first line of {} is empty",
                    f.display()
                )));
            }
            first
        }
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(SecretError(format!("{key} is empty")));
    }
    Ok(Some(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_or_first_line_of_a_file_never_both_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("t");
        std::fs::write(&f, "  s3cret \nsecond line\n").unwrap();
        assert_eq!(resolve("k", None, None).unwrap(), None);
        assert_eq!(
            resolve("k", Some(" a "), None).unwrap().as_deref(),
            Some("a")
        );
        assert_eq!(
            resolve("k", None, Some(&f)).unwrap().as_deref(),
            Some("s3cret")
        );
        assert!(
            resolve("k", Some("a"), Some(&f))
                .unwrap_err()
                .0
                .contains("both")
        );
        std::fs::write(&f, "\n").unwrap();
        let e = resolve("k", None, Some(&f)).unwrap_err().0;
        assert!(e.contains("k_file: the first line"), "{e}");
        let e = resolve("k", Some(" "), None).unwrap_err().0;
        assert!(e.contains("k is empty"), "{e}");
        std::fs::write(&f, vec![b'a'; 9000]).unwrap();
        assert!(
            resolve("k", None, Some(&f))
                .unwrap_err()
                .0
                .contains("larger")
        );
        let missing = dir.path().join("missing");
        assert!(
            resolve("k", None, Some(&missing))
                .unwrap_err()
                .0
                .contains("k_file")
        );
    }
}
