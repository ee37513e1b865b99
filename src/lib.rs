//! roxyd, the node agent: carries out a Manager's power requests, received
//! over QUIC with mutual TLS in the review-protocol 0.18 wire format.
//!
//! The path of a request: [`agent`] accepts the Manager's stream, [`wire`]
//! reads and decodes the frame, [`dispatch`] serves the stream and orders
//! "write the reply, then release", [`power`] prepares or starts the
//! operation, and [`platform`] talks to the operating system.

pub mod agent;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatch;
pub mod handshake;
#[cfg(feature = "manager")]
pub mod lab;
#[cfg(feature = "manager")]
pub mod manager;
#[cfg(feature = "manager")]
pub mod pki;
pub mod platform;
pub mod power;
pub mod reconnect;
pub mod reply;
pub mod shutdown;
pub mod tls;
pub mod wire;
