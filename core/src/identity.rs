//! Node identity: a key pair made on first start and kept in the data directory
//! (`node.key`, mode 0600). The node id is the BLAKE3 of the public key's
//! SubjectPublicKeyInfo DER, so a QUIC peer can check it against a certificate.

use std::path::{Path, PathBuf};

use rcgen::{KeyPair, PublicKeyData};

use crate::ids::{Digest, NodeId};

/// File name of the key inside a data directory.
pub const KEY_FILE: &str = "node.key";

/// A node's key pair and the id derived from it.
pub struct Identity {
    key_pem: String,
    spki_der: Vec<u8>,
    node_id: NodeId,
}

/// Why an identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, writing or setting permissions failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The key file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The key file exists but is not a key this build can use.
    #[error("{path} is not a valid node key ({reason}); move it away to make a new identity")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rcgen said.
        reason: String,
    },
}

impl Identity {
    /// Derives the node id of a SubjectPublicKeyInfo DER.
    pub fn node_id_of_spki(spki_der: &[u8]) -> NodeId {
        NodeId(Digest::of(spki_der))
    }

    /// Makes a fresh, unsaved identity (tests, ephemeral tools).
    pub fn generate() -> Self {
        let kp = KeyPair::generate().expect("key generation with ring does not fail");
        Self::from_key_pair(&kp)
    }

    fn from_key_pair(kp: &KeyPair) -> Self {
        let spki_der = kp.subject_public_key_info();
        Identity {
            key_pem: kp.serialize_pem(),
            node_id: Self::node_id_of_spki(&spki_der),
            spki_der,
        }
    }

    /// Loads `<dir>/node.key`, or makes and saves one (0600, written atomically).
    pub fn load_or_create(dir: &Path) -> Result<Self, IdentityError> {
        let path = dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let kp = KeyPair::from_pem(&pem).map_err(|e| IdentityError::BadKey {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Ok(Self::from_key_pair(&kp))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A link whose target is gone (an unmounted volume, a moved file) reads as
                // "not found" too: making a new key would silently give the node another
                // identity, so refuse instead.
                if let Ok(meta) = std::fs::symlink_metadata(&path)
                    && meta.file_type().is_symlink()
                {
                    let target = std::fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    return Err(IdentityError::BadKey {
                        path,
                        reason: format!(
                            "a symbolic link to {target}, which does not exist; restore it, or remove the link to make a new identity"
                        ),
                    });
                }
                let id = Self::generate();
                let io = |action, path: &Path| {
                    let path = path.to_path_buf();
                    move |error| IdentityError::Io {
                        action,
                        path,
                        error,
                    }
                };
                std::fs::create_dir_all(dir).map_err(io("creating the directory of", &path))?;
                crate::fsutil::write_atomic_private(&path, id.key_pem.as_bytes())
                    .map_err(io("writing", &path))?;
                Ok(id)
            }
            Err(error) => Err(IdentityError::Io {
                action: "reading",
                path,
                error,
            }),
        }
    }

    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The private key in PKCS#8 PEM (for building TLS certificates).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The rcgen key pair (for signing a self-signed certificate).
    pub fn key_pair(&self) -> KeyPair {
        KeyPair::from_pem(&self.key_pem).expect("our own key parses")
    }

    /// SubjectPublicKeyInfo DER of the public key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_dangling_key_link_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join(KEY_FILE);
        std::os::unix::fs::symlink(dir.path().join("gone/node.key"), &link).unwrap();
        let e = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        // The link is left alone: no new key was written over it.
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        // Restoring the target brings the same identity back.
        let first = Identity::generate();
        std::fs::create_dir_all(dir.path().join("gone")).unwrap();
        std::fs::write(dir.path().join("gone/node.key"), first.key_pem()).unwrap();
        assert_eq!(
            Identity::load_or_create(dir.path()).unwrap().node_id(),
            first.node_id()
        );
    }

    #[test]
    fn stable_across_restarts_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(dir.path()).unwrap();
        let b = Identity::load_or_create(dir.path()).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(Identity::generate().node_id(), a.node_id());
        assert_eq!(a.node_id(), Identity::node_id_of_spki(a.spki_der()));
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let e = Identity::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a valid node key"), "{e}");
    }
}
