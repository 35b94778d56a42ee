//! The processes of the QUIC benchmark (`bench/quic.py` runs them; not a test).
//!
//! ```text
//! bench_peer split  INPUT OUT_DIR                 split into 10 fragments of 1 MiB chunks
//! bench_peer seed   DATA_DIR SPLIT_DIR            import a split video into DATA_DIR's store
//! bench_peer serve  tcp|quic DATA_DIR LISTEN      serve DATA_DIR until stdin closes
//! bench_peer fetch  tcp|quic DATA_DIR PEER VIDEO  fetch VIDEO into DATA_DIR; prints JSON
//! bench_peer bare-server LISTEN tuned|default     bare quinn: send what each client asks for
//! bench_peer bare-client ADDR BYTES tuned|default bare quinn: receive BYTES into memory
//! ```
//!
//! `serve` prints `LISTENING <addr>` once bound. `fetch` and `bare-client` print one JSON
//! line with the bytes moved and the seconds taken. The bare quinn pair uses the same quinn
//! as fragnet-quic, with either quinn's defaults or the settings of
//! [`fragnet_quic::Config::default`] (windows, MTU, socket buffers), but no fragnet
//! protocol, no disk, no hashing: QUIC's ceiling on this machine.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use fragnet_core::fetch::{FetchOptions, FetchRequest, Fetcher, PeerPool, Quiet};
use fragnet_core::identity::Identity;
use fragnet_core::node::{ServeLimits, serve};
use fragnet_core::protocol::Timeouts;
use fragnet_core::serve::{ServeContext, ServeStats};
use fragnet_core::split::{SplitOptions, split};
use fragnet_core::{FragmentStore, PeerAddr, Transports, VideoId};
use quinn::rustls;
use tokio_util::sync::CancellationToken;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.as_slice() {
        ["split", input, out] => {
            let m = split(
                Path::new(input),
                Path::new(out),
                &SplitOptions {
                    fragments: 10,
                    chunk_size: 1 << 20,
                    force: true,
                },
                &mut |_| {},
            )?;
            println!("{}", m.video_id());
            Ok(())
        }
        ["seed", data, split_dir] => {
            let (store, _) = FragmentStore::open(Path::new(data).join("store"))?;
            store.import_dir(Path::new(split_dir), None)?;
            Ok(())
        }
        ["serve", scheme, data, listen] => {
            rt.block_on(serve_until_stdin_closes(scheme, Path::new(data), listen))
        }
        ["fetch", scheme, data, peer, video] => {
            rt.block_on(fetch(scheme, Path::new(data), peer, video))
        }
        ["bare-server", listen, profile] => {
            rt.block_on(bare_server(listen.parse()?, profile == &"tuned"))
        }
        ["bare-client", addr, bytes, profile] => rt.block_on(bare_client(
            addr.parse()?,
            bytes.parse()?,
            profile == &"tuned",
        )),
        _ => bail!("usage: see the header of transports/quic/examples/bench_peer.rs"),
    }
}

fn transports(scheme: &str, identity: &Identity) -> anyhow::Result<Transports> {
    Ok(match scheme {
        "tcp" => Transports::new().with(Arc::new(fragnet_tcp::TcpTransport::default())),
        "quic" => Transports::new().with(Arc::new(fragnet_quic::QuicTransport::new(
            identity,
            fragnet_quic::Config::default(),
        )?)),
        other => bail!("unknown transport {other}"),
    })
}

async fn serve_until_stdin_closes(scheme: &str, data: &Path, listen: &str) -> anyhow::Result<()> {
    let identity = Identity::load_or_create(data)?;
    let (store, _) = FragmentStore::open(data.join("store"))?;
    let ctx = Arc::new(ServeContext {
        store: Arc::new(store),
        node_id: identity.node_id(),
        name: "bench-seeder".into(),
        default_video: None,
        upload: None,
        timeouts: Timeouts::default(),
        exchange: None,
        upload_slots: None,
        super_seed: None,
        stats: ServeStats::default(),
    });
    let t = transports(scheme, &identity)?;
    let handle = serve(
        &t,
        &[PeerAddr::parse(listen, scheme)?],
        ctx,
        ServeLimits::default(),
        CancellationToken::new(),
    )
    .await?;
    let mut bound = handle.local_addrs()[0].clone();
    bound.node_id = (scheme == "quic").then(|| identity.node_id());
    println!("LISTENING {bound}");
    // Run until the benchmark closes our stdin, then exit cleanly (so rusage is complete).
    tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {}).await?;
    handle.shutdown().await;
    Ok(())
}

async fn fetch(scheme: &str, data: &Path, peer: &str, video: &str) -> anyhow::Result<()> {
    let identity = Identity::load_or_create(data)?;
    let (store, _) = FragmentStore::open(data.join("store"))?;
    let store = Arc::new(store);
    let video: VideoId = video.parse().context("video id")?;
    let pool = Arc::new(PeerPool::new(
        transports(scheme, &identity)?,
        Timeouts::default(),
    ));
    let fetcher = Fetcher::new(store.clone(), pool, FetchOptions::default());
    let req = FetchRequest {
        video: Some(video),
        fragments: None,
        peers: vec![PeerAddr::parse(peer, scheme)?],
    };
    let report = fetcher
        .fetch(req, Arc::new(Quiet), CancellationToken::new())
        .await?;
    let complete = store.have(video).len();
    if complete != report.manifest.fragment_count as usize {
        bail!("only {complete} fragments complete");
    }
    println!(
        r#"{{"bytes": {}, "secs": {}}}"#,
        report.bytes,
        report.elapsed.as_secs_f64()
    );
    Ok(())
}

// ---- bare quinn ------------------------------------------------------------------

const BARE_ALPN: &[u8] = b"bench";

/// quinn's transport settings: its defaults, or fragnet-quic's (mirrored field by field
/// from `fragnet_quic::Config::default()`).
fn bare_transport(tuned: bool) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    if tuned {
        let c = fragnet_quic::Config::default();
        t.stream_receive_window(quinn::VarInt::from_u64(c.stream_receive_window).unwrap());
        t.receive_window(quinn::VarInt::from_u64(c.receive_window).unwrap());
        t.send_window(c.send_window);
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(c.mtu_upper_bound);
        t.mtu_discovery_config(Some(mtu));
        t.send_fairness(c.send_fairness);
    }
    t
}

fn bare_endpoint(
    bind: SocketAddr,
    server: Option<quinn::ServerConfig>,
    tuned: bool,
) -> anyhow::Result<quinn::Endpoint> {
    let c = fragnet_quic::Config::default();
    let mut ec = quinn::EndpointConfig::default();
    let socket = std::net::UdpSocket::bind(bind)?;
    if tuned {
        ec.max_udp_payload_size(c.mtu_upper_bound.max(1472))?;
        let s = socket2::SockRef::from(&socket);
        if let Some(b) = c.socket_buffer {
            s.set_recv_buffer_size(b)?;
            s.set_send_buffer_size(b)?;
        }
    }
    Ok(quinn::Endpoint::new(
        ec,
        server,
        socket,
        Arc::new(quinn::TokioRuntime),
    )?)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn bare_server(listen: SocketAddr, tuned: bool) -> anyhow::Result<()> {
    let ck = rcgen::generate_simple_self_signed(vec!["bench".into()])?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)?;
    tls.alpn_protocols = vec![BARE_ALPN.to_vec()];
    let mut sc = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)?,
    ));
    sc.transport_config(Arc::new(bare_transport(tuned)));
    let endpoint = bare_endpoint(listen, Some(sc), tuned)?;
    println!("LISTENING {}", endpoint.local_addr()?);
    let stop = tokio::task::spawn_blocking(|| for _ in std::io::stdin().lock().lines() {});
    let accept = async {
        // A 1 MiB block sent again and again: no disk, no copy (Bytes are shared).
        let block = bytes::Bytes::from(fragnet_core::conformance::generated_bytes(1 << 20, 1));
        while let Some(incoming) = endpoint.accept().await {
            let block = block.clone();
            tokio::spawn(async move {
                let conn = incoming.await?;
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let mut ask = [0u8; 8];
                    recv.read_exact(&mut ask).await?;
                    let mut left = u64::from_be_bytes(ask);
                    while left > 0 {
                        let n = left.min(block.len() as u64) as usize;
                        send.write_chunk(block.slice(..n)).await?;
                        left -= n as u64;
                    }
                    send.finish()?;
                    let _ = send.stopped().await;
                }
                anyhow::Ok(())
            });
        }
    };
    tokio::select! { _ = stop => {}, _ = accept => {} }
    endpoint.close(0u32.into(), b"done");
    Ok(())
}

/// Accepts the bench server's certificate unchecked: this measures throughput, not trust.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn bare_client(server: SocketAddr, bytes: u64, tuned: bool) -> anyhow::Result<()> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    tls.alpn_protocols = vec![BARE_ALPN.to_vec()];
    let mut cc = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    cc.transport_config(Arc::new(bare_transport(tuned)));
    let endpoint = bare_endpoint("127.0.0.1:0".parse()?, None, tuned)?;
    let start = Instant::now();
    let conn = endpoint.connect_with(cc, server, "bench")?.await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&bytes.to_be_bytes()).await?;
    send.finish()?;
    // Into memory: one reused 1 MiB buffer, like a receiver that hashes and moves on.
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while let Some(n) = recv.read(&mut buf).await? {
        got += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    if got != bytes {
        bail!("received {got} of {bytes} bytes");
    }
    let st = conn.stats();
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    println!(
        r#"{{"bytes": {got}, "secs": {secs}, "mtu": {}, "lost_packets": {}, "congestion_events": {}, "cwnd": {}, "rtt_us": {}, "udp_rx_datagrams": {}}}"#,
        st.path.current_mtu,
        st.path.lost_packets,
        st.path.congestion_events,
        st.path.cwnd,
        st.path.rtt.as_micros(),
        st.udp_rx.datagrams
    );
    Ok(())
}
