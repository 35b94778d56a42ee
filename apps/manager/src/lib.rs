//! fragnet-manager: fragnet's REST manager (registry) and its HTTP client (work in progress).
