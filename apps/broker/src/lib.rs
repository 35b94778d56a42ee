//! fragnet-broker: fragnet's pub/sub broker server and pub/sub clients (work in progress).
