//! fragnet-quic: QUIC transport plugin for fragnet (work in progress).
