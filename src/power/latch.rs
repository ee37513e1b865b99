//! The power latches: at most one immediate operation at a time, and one
//! graceful command at a time, each freed the moment what it guards ends.
//!
//! Rules a reader must not break: an immediate operation waits for no
//! graceful command (the immediate path is the way out of a hung shutdown);
//! a latch is a value whose drop frees it, so no path can forget to.

use std::sync::Arc;

use tokio::sync::watch;

/// What is under way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Busy {
    /// An immediate operation is pending or being performed.
    immediate: bool,
    /// A graceful command is running.
    graceful: bool,
}

impl Busy {
    pub(super) fn any(self) -> bool {
        self.immediate || self.graceful
    }

    fn bit(&mut self, kind: Kind) -> &mut bool {
        match kind {
            Kind::Immediate => &mut self.immediate,
            Kind::Graceful => &mut self.graceful,
        }
    }
}

/// Which latch a [`PowerLatch`] holds.
#[derive(Clone, Copy, Debug)]
pub(super) enum Kind {
    /// An immediate operation, pending or being performed.
    Immediate,
    /// A graceful command, running.
    Graceful,
}

/// One of the two latches (see the module docs); dropping it frees it.
#[derive(Debug)]
pub(super) struct PowerLatch {
    busy: Arc<watch::Sender<Busy>>,
    kind: Kind,
}

impl PowerLatch {
    /// Takes the `kind` latch if the rules allow: an immediate operation
    /// waits for no graceful command; a graceful one waits for both.
    pub(super) fn acquire(busy: &Arc<watch::Sender<Busy>>, kind: Kind) -> Option<Self> {
        let acquired = busy.send_if_modified(|state| {
            let free = match kind {
                Kind::Immediate => !state.immediate,
                Kind::Graceful => !state.any(),
            };
            if free {
                *state.bit(kind) = true;
            }
            free
        });
        acquired.then(|| Self {
            busy: Arc::clone(busy),
            kind,
        })
    }
}

impl Drop for PowerLatch {
    fn drop(&mut self) {
        let kind = self.kind;
        self.busy.send_modify(|state| *state.bit(kind) = false);
    }
}
