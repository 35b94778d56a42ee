//! The seed's protocol over plain TCP: a client writes a bare name such as
//! `fragment_5.bin` and reads the fragment's raw bytes, the way the original Python
//! peer asked. Names are never paths.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use fragnet_core::Transports;
use fragnet_core::conformance::{NodeOptions, TestNode, TestVideo, within};
use fragnet_core::identity::Identity;
use fragnet_tcp::TcpTransport;

fn tcp(_: &Identity) -> Transports {
    Transports::new().with(Arc::new(TcpTransport::default()))
}

async fn seeded() -> (TestVideo, TestNode) {
    let v = TestVideo::sample();
    let node = TestNode::start(
        tcp,
        "tcp://127.0.0.1:0",
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    (v, node)
}

/// Sends `request` on a plain socket (optionally closing the write side) and reads
/// everything until the server closes.
async fn ask(node: &TestNode, request: Vec<u8>, close_write: bool) -> Vec<u8> {
    let addr = node.addr.host_port();
    within(
        20,
        "bare request",
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            // A peer may close before reading a huge request: ignore write errors.
            let _ = s.write_all(&request);
            if close_write {
                let _ = s.shutdown(Shutdown::Write);
            }
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            out
        }),
    )
    .await
    .unwrap()
}

fn fragment(v: &TestVideo, i: u32) -> Vec<u8> {
    std::fs::read(v.split_dir.join(format!("fragment_{i}.bin"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_name_with_newline() {
    let (v, node) = seeded().await;
    assert!(ask(&node, b"fragment_5.bin\n".to_vec(), false).await == fragment(&v, 5));
    assert!(ask(&node, b"fragment_0.bin\r\n".to_vec(), false).await == fragment(&v, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_name_without_newline_ended_by_close_or_pause() {
    let (v, node) = seeded().await;
    assert!(
        ask(&node, b"fragment_9.bin".to_vec(), true).await == fragment(&v, 9),
        "ended by closing the write side"
    );
    assert!(
        ask(&node, b"fragment_4.bin".to_vec(), false).await == fragment(&v, 4),
        "ended by a pause"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_never_paths() {
    let (_v, node) = seeded().await;
    let mut huge = vec![b'a'; 10 << 20];
    huge.push(b'\n');
    let bad: Vec<Vec<u8>> = vec![
        b"../../etc/passwd\n".to_vec(),
        b"/etc/passwd\n".to_vec(),
        b"fragment_5.bin/../../x\n".to_vec(),
        b"fragment_99.bin\n".to_vec(),
        b"fragment_-1.bin\n".to_vec(),
        b"fragment_5\0.bin\n".to_vec(),
        b"fragment_5.bin\0\n".to_vec(),
        b"manifest.json\n".to_vec(),
        b"node.key\n".to_vec(),
        huge,
    ];
    for req in bad {
        let shown = String::from_utf8_lossy(&req[..req.len().min(40)]).into_owned();
        let out = ask(&node, req, false).await;
        assert!(
            out.starts_with(b"ERR"),
            "{shown:?} got {} bytes that are not an error",
            out.len()
        );
        assert!(
            out.len() < 300 && out.ends_with(b"\n") && !out[..out.len() - 1].contains(&b'\n'),
            "{shown:?}: one error line, nothing else"
        );
    }
    // The node still serves after all of that.
    let mut c = node.client(&node.addr).await.unwrap();
    assert_eq!(c.videos().await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_videos_need_a_default() {
    let (_v, node) = seeded().await;
    let other = TestVideo::from_bytes(
        "o.bin",
        &fragnet_core::conformance::generated_bytes(5000, 1),
        10,
        1024,
    );
    node.store.import_dir(&other.split_dir, None).unwrap();
    let out = ask(&node, b"fragment_1.bin\n".to_vec(), false).await;
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.starts_with("ERR") && text.contains("default_video"),
        "{text}"
    );
}
