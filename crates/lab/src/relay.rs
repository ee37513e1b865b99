//! A UDP relay between an agent and a Manager on loopback that can lose
//! packets, at random or all of them in one direction, so tests can see what
//! roxyd does on a bad path.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{net::UdpSocket, task::JoinHandle};

/// Which way a packet travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the agent to the Manager.
    ToManager,
    /// From the Manager to the agent.
    ToAgent,
}

#[derive(Debug)]
struct Path {
    blocked: AtomicBool,
    /// Share of packets lost, in thousandths.
    loss_permille: AtomicU32,
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Path {
    fn new() -> Self {
        Self {
            blocked: AtomicBool::new(false),
            loss_permille: AtomicU32::new(0),
            forwarded: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
struct Controls {
    to_manager: Path,
    to_agent: Path,
    rng: Mutex<StdRng>,
}

impl Controls {
    fn path(&self, direction: Direction) -> &Path {
        match direction {
            Direction::ToManager => &self.to_manager,
            Direction::ToAgent => &self.to_agent,
        }
    }

    /// Whether the next packet in `direction` gets through, and counts it.
    fn pass(&self, direction: Direction) -> bool {
        let path = self.path(direction);
        let permille = path.loss_permille.load(Ordering::Relaxed);
        let lost = path.blocked.load(Ordering::Relaxed)
            || (permille > 0
                && self
                    .rng
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .random_range(0..1000)
                    < permille);
        let counter = if lost { &path.dropped } else { &path.forwarded };
        counter.fetch_add(1, Ordering::Relaxed);
        !lost
    }
}

/// A running relay; dropping it stops it.
#[derive(Debug)]
pub struct UdpRelay {
    addr: SocketAddr,
    controls: Arc<Controls>,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// Relays between agents that send to [`Self::addr`] and the Manager at
    /// `manager`. Random loss draws from a generator seeded with `seed`.
    ///
    /// # Errors
    ///
    /// When a socket cannot be bound.
    pub async fn start(manager: SocketAddr, seed: u64) -> std::io::Result<Self> {
        let agent_side = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let manager_side = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        manager_side.connect(manager).await?;
        let addr = agent_side.local_addr()?;
        let controls = Arc::new(Controls {
            to_manager: Path::new(),
            to_agent: Path::new(),
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
        });
        let task = tokio::spawn(relay(agent_side, manager_side, Arc::clone(&controls)));
        Ok(Self {
            addr,
            controls,
            task,
        })
    }

    /// Where agents send.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every packet in `direction` (`true`) or none (`false`).
    pub fn block(&self, direction: Direction, blocked: bool) {
        self.controls
            .path(direction)
            .blocked
            .store(blocked, Ordering::Relaxed);
    }

    /// Drops a share of packets in `direction`, in thousandths.
    pub fn set_loss(&self, direction: Direction, permille: u32) {
        self.controls
            .path(direction)
            .loss_permille
            .store(permille.min(1000), Ordering::Relaxed);
    }

    /// Packets forwarded and dropped so far in `direction`.
    #[must_use]
    pub fn counts(&self, direction: Direction) -> (u64, u64) {
        let path = self.controls.path(direction);
        (
            path.forwarded.load(Ordering::Relaxed),
            path.dropped.load(Ordering::Relaxed),
        )
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(agent_side: UdpSocket, manager_side: UdpSocket, controls: Arc<Controls>) {
    let mut agent: Option<SocketAddr> = None;
    let mut from_agent = vec![0_u8; 65_536];
    let mut from_manager = vec![0_u8; 65_536];
    loop {
        tokio::select! {
            received = agent_side.recv_from(&mut from_agent) => {
                let Ok((len, from)) = received else { continue };
                agent = Some(from);
                if controls.pass(Direction::ToManager) {
                    let _ = manager_side.send(&from_agent[..len]).await;
                }
            }
            received = manager_side.recv(&mut from_manager) => {
                let Ok(len) = received else { continue };
                if let Some(agent) = agent
                    && controls.pass(Direction::ToAgent)
                {
                    let _ = agent_side.send_to(&from_manager[..len], agent).await;
                }
            }
        }
    }
}
