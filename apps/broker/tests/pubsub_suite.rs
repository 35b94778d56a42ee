//! One behaviour suite, three backends: the in-process bus, fragnet's broker on
//! 127.0.0.1:0, and a real nats-server on a free loopback port.

mod common;

mod local {
    async fn start() -> fragnet_core::LocalPubSub {
        fragnet_core::LocalPubSub::default()
    }
    fragnet_core::pubsub_conformance!(start);
}

mod broker {
    use super::common::broker_fixture;
    fragnet_core::pubsub_conformance!(broker_fixture);
}

mod nats {
    async fn start() -> super::common::NatsServer {
        super::common::NatsServer::start(&[]).await
    }
    fragnet_core::pubsub_conformance!(start);
}
