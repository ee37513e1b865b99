//! What roxyd and the Manager side share, below both: the review-protocol
//! 0.18 wire format ([`wire`]) and the TLS material both ends load
//! ([`tls`]). The agent (`roxyd`) and the lab (`roxyd-lab`) depend on it;
//! it depends on neither, as quinn-proto sits under quinn.

pub mod tls;
pub mod wire;
