//! The stop signal: SIGINT or SIGTERM, or a trigger held by the demo and the
//! tests. Every waiting phase of the daemon (connecting, serving, waiting to
//! reconnect) races its work against `Stop::requested`.

use tokio::sync::watch;

/// Resolves once a stop was asked for. Clones share the signal.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

/// Asks every [`Stop`] made with it to stop.
#[derive(Debug)]
pub struct StopTrigger(watch::Sender<bool>);

/// A trigger and the signal it controls.
#[must_use]
pub fn channel() -> (StopTrigger, Stop) {
    let (tx, rx) = watch::channel(false);
    (StopTrigger(tx), Stop(rx))
}

impl StopTrigger {
    /// Asks for the stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Stop {
    /// Resolves once a stop was asked for; never, if the trigger is dropped
    /// without asking.
    pub(crate) async fn requested(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `Self::requested` as a future that owns its signal.
    pub async fn requested_owned(mut self) {
        self.requested().await;
    }

    /// A signal raised by SIGINT or SIGTERM. Call it early, inside the
    /// runtime, so that no signal is lost during start-up.
    ///
    /// # Errors
    ///
    /// When the signal handlers cannot be installed.
    #[cfg(unix)]
    pub fn on_signals() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (trigger, stop) = channel();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = interrupt.recv() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            };
            tracing::info!(signal = name, "stopping");
            trigger.trigger();
        });
        Ok(stop)
    }

    /// A signal raised by Ctrl-C, where there are no Unix signals.
    ///
    /// # Errors
    ///
    /// Never; the signature matches the Unix one.
    #[cfg(not(unix))]
    pub fn on_signals() -> std::io::Result<Self> {
        let (trigger, stop) = channel();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!(signal = "Ctrl-C", "stopping");
                trigger.trigger();
            }
        });
        Ok(stop)
    }
}
