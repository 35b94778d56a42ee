//! Node identity over QUIC: expected ids, trust on first use, strict mode, and the
//! accepting side learning the dialer's id. Real endpoints on 127.0.0.1, raw streams.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{addr_named, echo_once, listen, quic, quic_with, rebind, serve_echo};
use fragnet_core::conformance::within;
use fragnet_core::identity::Identity;
use fragnet_core::transport::{Transport, TransportError};
use fragnet_quic::{Config, Trust};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_identity_is_refused_and_the_error_names_both_ids() {
    let server_id = Identity::generate();
    let server = serve_echo(
        listen(&quic(&server_id), "quic://127.0.0.1:0").await,
        Duration::ZERO,
    );
    let client = quic(&Identity::generate());
    let bogus = Identity::generate().node_id();
    let wrong = addr_named(&server.addr, bogus);

    // No connection yet: refused right after the handshake.
    let err = within(10, "dial with a wrong id", client.dial(&wrong))
        .await
        .err()
        .expect("a wrong node id must be refused");
    match &err {
        TransportError::WrongIdentity {
            expected, actual, ..
        } => {
            assert_eq!((*expected, *actual), (bogus, server_id.node_id()));
        }
        other => panic!("expected WrongIdentity, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&bogus.to_string()) && msg.contains(&server_id.node_id().to_string()),
        "{msg}"
    );
    assert_eq!(
        client.open_connections(),
        0,
        "the refused connection is not kept"
    );

    // The right id is accepted, and the handle reports it.
    let right = addr_named(&server.addr, server_id.node_id());
    let conn = within(10, "dial with the right id", client.dial(&right))
        .await
        .unwrap();
    assert_eq!(conn.remote_node_id(), Some(server_id.node_id()));
    assert_eq!(
        within(10, "echo", echo_once(&*conn, b"hello")).await,
        b"hello"
    );

    // With a live connection to the address, a wrong id is still refused, and the live
    // connection is not disturbed.
    let again = within(10, "dial with a wrong id again", client.dial(&wrong)).await;
    assert!(
        matches!(again, Err(TransportError::WrongIdentity { .. })),
        "{:?}",
        again.err()
    );
    assert_eq!(
        within(
            10,
            "echo after the refusal",
            echo_once(&*conn, b"still here")
        )
        .await,
        b"still here"
    );
    assert_eq!(client.open_connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_learn_each_others_node_id() {
    let server_id = Identity::generate();
    let client_id = Identity::generate();
    let server = serve_echo(
        listen(&quic(&server_id), "quic://127.0.0.1:0").await,
        Duration::ZERO,
    );
    let client = quic(&client_id);
    let conn = within(10, "dial", client.dial(&server.addr)).await.unwrap();
    assert_eq!(conn.remote_node_id(), Some(server_id.node_id()));
    assert_eq!(
        within(10, "echo", echo_once(&*conn, b"who am i")).await,
        b"who am i"
    );
    assert_eq!(
        *server.peers.lock().unwrap(),
        vec![Some(client_id.node_id())],
        "the accepting side learns the client's id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_on_first_use_pins_the_id_and_refuses_another_node_at_that_address() {
    let first = Identity::generate();
    let second = Identity::generate();
    let server = serve_echo(
        listen(&quic(&first), "quic://127.0.0.1:0").await,
        Duration::ZERO,
    );
    let bare = server.addr.clone();
    let remote: SocketAddr = bare.host_port().parse().unwrap();
    let client = quic(&Identity::generate());

    let conn = within(10, "first dial", client.dial(&bare)).await.unwrap();
    assert_eq!(conn.remote_node_id(), Some(first.node_id()));
    assert_eq!(within(10, "echo", echo_once(&*conn, b"one")).await, b"one");
    assert_eq!(
        client.pinned(remote),
        Some(first.node_id()),
        "the first id seen is pinned"
    );
    drop(conn);

    // Another node takes over the port.
    server.stop();
    within(10, "the client notices the close", async {
        while client.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let _impostor = serve_echo(rebind(&quic(&second), bare.port).await, Duration::ZERO);

    let refused = within(10, "dial the bare address again", client.dial(&bare)).await;
    match refused {
        Err(TransportError::WrongIdentity {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (first.node_id(), second.node_id())),
        Err(other) => panic!("expected WrongIdentity, got {other}"),
        Ok(_) => panic!("a different node at a pinned address must be refused"),
    }
    assert_eq!(
        client.pinned(remote),
        Some(first.node_id()),
        "a refusal keeps the pin"
    );

    // Naming the new node explicitly (as a registry would) is accepted and re-pins.
    let named = within(
        10,
        "dial naming the new id",
        client.dial(&addr_named(&bare, second.node_id())),
    )
    .await
    .unwrap();
    assert_eq!(within(10, "echo", echo_once(&*named, b"two")).await, b"two");
    assert_eq!(client.pinned(remote), Some(second.node_id()));
    let bare_again = within(10, "bare dial after re-pinning", client.dial(&bare))
        .await
        .unwrap();
    assert_eq!(bare_again.remote_node_id(), Some(second.node_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_trust_refuses_addresses_without_an_id() {
    let server_id = Identity::generate();
    let server = serve_echo(
        listen(&quic(&server_id), "quic://127.0.0.1:0").await,
        Duration::ZERO,
    );
    let client = quic_with(
        &Identity::generate(),
        Config::default().trust(Trust::Strict),
    );

    match within(10, "bare dial", client.dial(&server.addr)).await {
        Err(TransportError::Dial { reason, .. }) => assert!(
            reason.contains("strict") && reason.contains("quic://<node-id>@"),
            "{reason}"
        ),
        Err(other) => panic!("expected a Dial error, got {other}"),
        Ok(_) => panic!("strict trust must refuse an address without a node id"),
    }
    assert!(
        server.peers.lock().unwrap().is_empty(),
        "refused before any packet was sent"
    );

    let conn = within(
        10,
        "dial with the id",
        client.dial(&addr_named(&server.addr, server_id.node_id())),
    )
    .await
    .unwrap();
    assert_eq!(within(10, "echo", echo_once(&*conn, b"ok")).await, b"ok");
    let wrong = within(
        10,
        "dial with a wrong id",
        client.dial(&addr_named(&server.addr, Identity::generate().node_id())),
    )
    .await;
    assert!(matches!(wrong, Err(TransportError::WrongIdentity { .. })));
    // Even with a connection to the address open, a bare address stays refused.
    assert!(matches!(
        within(10, "bare dial again", client.dial(&server.addr)).await,
        Err(TransportError::Dial { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_of_other_schemes_and_foreign_listen_ids_are_refused() {
    let id = Identity::generate();
    let t = quic(&id);
    let tcp: fragnet_core::PeerAddr = "tcp://127.0.0.1:1".parse().unwrap();
    assert!(matches!(
        t.dial(&tcp).await,
        Err(TransportError::UnsupportedAddr {
            transport: "quic",
            ..
        })
    ));
    assert!(matches!(
        t.listen(&tcp).await,
        Err(TransportError::UnsupportedAddr { .. })
    ));
    let foreign = addr_named(
        &fragnet_core::PeerAddr::parse("quic://127.0.0.1:0", "quic").unwrap(),
        Identity::generate().node_id(),
    );
    match t.listen(&foreign).await {
        Err(TransportError::Listen { error, .. }) => assert!(
            error.to_string().contains(&id.node_id().to_string()),
            "{error}"
        ),
        Err(other) => panic!("expected a Listen error, got {other}"),
        Ok(_) => panic!("listening under another node's id must be refused"),
    }
    // Its own id in a listen address is fine.
    let own = addr_named(
        &fragnet_core::PeerAddr::parse("quic://127.0.0.1:0", "quic").unwrap(),
        id.node_id(),
    );
    assert!(t.listen(&own).await.is_ok());
}
