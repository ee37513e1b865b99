//! Serving one Manager connection: accept the Manager's request streams and
//! serve each on a task of its own, so that a stalled stream never delays a
//! power request on another.

use std::sync::Arc;

use crate::{dispatch::Dispatcher, platform::PowerBackend};

/// Serves every request stream the Manager opens on `connection` until the
/// connection ends, and returns why it ended.
pub async fn serve_connection<B: PowerBackend>(
    connection: quinn::Connection,
    dispatcher: Arc<Dispatcher<B>>,
) -> quinn::ConnectionError {
    loop {
        let (mut send, mut recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => return e,
        };
        let dispatcher = Arc::clone(&dispatcher);
        tokio::spawn(async move {
            let id = send.id();
            let end = dispatcher.serve_stream(&mut recv, &mut send).await;
            tracing::debug!(stream = %id, ?end, "request stream ended");
        });
    }
}
