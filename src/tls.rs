//! Mutual TLS for QUIC: the agent's client configuration. Loading PEM files
//! is shared with the lab's Manager ([`roxyd_proto::tls`], re-exported here).
//!
//! roxyd trusts only the CA certificates it is given, checks the Manager's
//! certificate against the server name, presents its own chain (leaf first),
//! and speaks TLS 1.3 only, as QUIC requires. No ALPN is set.

use std::{sync::Arc, time::Duration};

use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The QUIC keep-alive interval of the reference client.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Unread bytes roxyd accepts per request stream.
pub(crate) const STREAM_RECEIVE_WINDOW: u32 = 64 * 1024;

/// Unread bytes roxyd accepts over all streams of the connection.
pub(crate) const CONNECTION_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Unacknowledged bytes roxyd keeps for sending.
pub(crate) const SEND_WINDOW: u64 = 256 * 1024;

use roxyd_proto::tls::provider;
pub use roxyd_proto::tls::{TlsError, load_certs, load_private_key, load_roots};

/// The longest the Manager is asked to hold back its acknowledgement of
/// roxyd's packets (QUIC ACK frequency extension). See [`client_config`].
pub(crate) const MANAGER_ACK_DELAY: Duration = Duration::from_millis(1);

/// The agent's QUIC client configuration: mutual TLS 1.3, the reference
/// keep-alive, and at most `max_concurrent_streams` request streams open at
/// once (the Manager opens none of the unidirectional kind).
///
/// # Errors
///
/// When rustls refuses the chain and key.
pub fn client_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    max_concurrent_streams: u32,
) -> Result<quinn::ClientConfig, TlsError> {
    let config = |e: &dyn std::fmt::Display| TlsError::Config(e.to_string());
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config(&e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| config(&e))?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| config(&e))?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_concurrent_bidi_streams(max_concurrent_streams.into())
        .max_concurrent_uni_streams(0u8.into())
        // What the Manager can make roxyd buffer: requests are a few bytes,
        // so small windows cost nothing and bound memory whatever it sends.
        .stream_receive_window(STREAM_RECEIVE_WINDOW.into())
        .receive_window(CONNECTION_RECEIVE_WINDOW.into())
        .send_window(SEND_WINDOW)
        .datagram_receive_buffer_size(None)
        .ack_frequency_config(Some(manager_ack_frequency()));
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// What roxyd asks of the Manager's acknowledgements. A request stream's
/// slot comes back to the Manager (`MAX_STREAMS`) only once the Manager has
/// acknowledged roxyd's end of the stream, and a Manager whose streams are
/// all in use has nothing else to send: left to QUIC's default it holds that
/// acknowledgement for up to 25 ms, and every request waits that long once
/// it keeps roxyd's stream limit busy. Asking for prompt
/// acknowledgements removes the stall; a Manager whose QUIC stack lacks the
/// extension ignores the request.
fn manager_ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(0u8.into())
        .max_ack_delay(Some(MANAGER_ACK_DELAY));
    ack
}
