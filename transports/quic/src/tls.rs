//! TLS for fragnet's QUIC connections: a self-signed certificate made from the node's
//! own key, and verifiers that accept any such certificate and learn the node id from it.
//!
//! There is no certificate authority: a node *is* its key. The certificate only carries
//! the public key into the TLS 1.3 handshake, where the peer proves it holds the private
//! key by signing the transcript; the verifiers below check that signature with the ring
//! provider and leave the decision "is this the node I wanted" to the transport, which
//! compares the node id (BLAKE3 of the SubjectPublicKeyInfo) after the handshake. Both
//! sides present certificates, so the accepting side learns the dialer's node id too.

use std::sync::Arc;

use fragnet_core::NodeId;
use fragnet_core::identity::Identity;
use quinn::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use quinn::rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use quinn::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime,
};
use quinn::rustls::server::ParsedCertificate;
use quinn::rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use quinn::rustls::{self, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::QuicError;

/// The ALPN protocol id of fragnet's peer protocol over QUIC. A peer that does not offer
/// it fails the handshake.
pub const ALPN: &[u8] = b"fragnet/1";

/// The TLS server name a dialer sends. Certificates are not checked against names (the
/// node id is what counts), so this is a constant.
pub(crate) const SERVER_NAME: &str = "fragnet";

/// The ring crypto provider: the only one this build has.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The node's certificate and key, as rustls wants them.
pub(crate) struct Certified {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// Makes a self-signed certificate for the node's key. The subject names the node id
/// (for people reading packet captures); nothing relies on it.
pub(crate) fn certificate(identity: &Identity) -> Result<Certified, QuicError> {
    let key_pair = identity.key_pair();
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("fragnet node {}", identity.node_id()),
    );
    let cert = params.self_signed(&key_pair)?;
    Ok(Certified {
        cert: cert.der().clone(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der())),
    })
}

/// The node id a certificate carries: BLAKE3 of its SubjectPublicKeyInfo DER.
pub(crate) fn node_id_of_cert(cert: &CertificateDer<'_>) -> Result<NodeId, rustls::Error> {
    let parsed = ParsedCertificate::try_from(cert)?;
    Ok(Identity::node_id_of_spki(
        parsed.subject_public_key_info().as_ref(),
    ))
}

/// The node id the remote end of an established connection proved.
pub(crate) fn peer_node_id(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    node_id_of_cert(certs.first()?).ok()
}

/// Accepts any well-formed self-signed node certificate, and checks the handshake
/// signatures against the key it carries (with ring). Used on both sides.
#[derive(Debug)]
struct NodeCertVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl NodeCertVerifier {
    fn new(provider: &CryptoProvider) -> Self {
        NodeCertVerifier {
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        // Parsing is the whole check: the identity is the key, proven by the handshake
        // signature, and compared to the expected node id by the transport afterwards.
        // Validity dates and the self-signature add nothing to that proof.
        node_id_of_cert(end_entity).map(|_| ())
    }
}

impl ServerCertVerifier for NodeCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for NodeCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn client_auth_mandatory(&self) -> bool {
        // Every fragnet node has a key; an anonymous client is not a fragnet node.
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The rustls server side: TLS 1.3 only (QUIC requires it), the node certificate, a
/// mandatory client certificate, ALPN `fragnet/1`, no session tickets (so every
/// connection proves its key afresh and the peer's certificate is always at hand).
pub(crate) fn server_crypto(
    certified: &Certified,
) -> Result<quinn::crypto::rustls::QuicServerConfig, QuicError> {
    let provider = provider();
    let mut tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(NodeCertVerifier::new(&provider)))
        .with_single_cert(vec![certified.cert.clone()], certified.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))
}

/// The rustls client side: TLS 1.3, the node certificate as client certificate, the
/// node verifier, ALPN `fragnet/1`, no resumption.
pub(crate) fn client_crypto(
    certified: &Certified,
) -> Result<quinn::crypto::rustls::QuicClientConfig, QuicError> {
    let provider = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeCertVerifier::new(&provider)))
        .with_client_auth_cert(vec![certified.cert.clone()], certified.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.resumption = rustls::client::Resumption::disabled();
    quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicError::Config(e.to_string()))
}

/// A stateless-reset key derived from the node's private key, so that a node restarted
/// with the same identity can reset connections its previous run left open (its peers
/// then notice at once instead of after the idle timeout). One-way: the key reveals
/// nothing about the private key.
pub(crate) fn reset_key(identity: &Identity) -> ring::hmac::Key {
    let secret = blake3::derive_key(
        "fragnet quic stateless reset key v1",
        identity.key_pem().as_bytes(),
    );
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)
}

/// The key of the connection-id generator, derived like [`reset_key`]: a restarted
/// node must recognise its previous run's connection ids as its own, or it drops their
/// packets instead of answering them with a stateless reset.
pub(crate) fn connection_id_key(identity: &Identity) -> u64 {
    let k = blake3::derive_key(
        "fragnet quic connection id key v1",
        identity.key_pem().as_bytes(),
    );
    u64::from_le_bytes(k[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_node_id() {
        let id = Identity::generate();
        let c = certificate(&id).unwrap();
        assert_eq!(node_id_of_cert(&c.cert).unwrap(), id.node_id());
        // A new certificate from the same key names the same node.
        assert_eq!(
            node_id_of_cert(&certificate(&id).unwrap().cert).unwrap(),
            id.node_id()
        );
        assert_ne!(
            node_id_of_cert(&certificate(&Identity::generate()).unwrap().cert).unwrap(),
            id.node_id()
        );
    }

    #[test]
    fn garbage_certificates_are_refused() {
        let v = NodeCertVerifier::new(&provider());
        for bytes in [&b""[..], b"\x30\x03\x02\x01\x00", &[0xFF; 300]] {
            assert!(v.check(&CertificateDer::from(bytes.to_vec())).is_err());
        }
    }

    #[test]
    fn crypto_configs_build() {
        let c = certificate(&Identity::generate()).unwrap();
        server_crypto(&c).unwrap();
        client_crypto(&c).unwrap();
    }
}
