//! roxyd, the node agent: carries out a Manager's power requests, received
//! over QUIC with mutual TLS in the review-protocol 0.18 wire format.
//!
//! The path of a request: [`connection`] holds one Manager connection and
//! accepts its request streams, [`wire`] reads and decodes each frame,
//! [`dispatch`] routes the request, [`power`] prepares or starts the
//! operation and orders "write the reply, then release", and [`platform`]
//! talks to the operating system. Around them: [`cli`] and [`config`] read
//! the settings, [`logging`] sets where lines go, [`daemon`] connects and
//! reconnects ([`reconnect`]) until [`stop`] is asked for, [`tls`] and
//! [`handshake`] open the session; [`power_log`] records every power request
//! in the state directory.

pub mod cli;
pub mod config;
pub mod connection;
pub mod daemon;
pub mod dispatch;
pub mod handshake;
pub mod logging;
pub mod platform;
pub mod power;
pub mod power_log;
pub mod reconnect;
pub mod reply;
pub mod stop;
pub mod tls;

/// The wire format, from the crate the agent shares with the lab's Manager.
pub use roxyd_proto::wire;
