//! The connection manager: every live connection of a server, by ID.
//!
//! A connection is registered when it opens and removed by a drop guard when it
//! ends, so an early return or a panic cannot leave an entry behind. The lock is a
//! short `std::sync::Mutex` held only to insert, remove or copy out handles; user
//! code never runs under it, so a hook or handler that uses the manager cannot
//! deadlock it (one of Go Zinx's long-standing bugs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

use crate::conn::Connection;
use crate::message::{ConnId, MsgId};

/// The live connections of one server. Cloning is cheap; clones share the registry.
#[derive(Clone, Default)]
pub struct ConnManager {
    shared: Arc<ManagerShared>,
}

#[derive(Default)]
pub(crate) struct ManagerShared {
    conns: Mutex<HashMap<ConnId, Connection>>,
}

/// The outcome of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delivery {
    /// Connections the message was queued for.
    pub delivered: usize,
    /// Connections whose queue was full or that were closing.
    pub failed: usize,
}

impl std::fmt::Debug for ConnManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnManager")
            .field("len", &self.len())
            .finish()
    }
}

impl ConnManager {
    /// An empty manager.
    #[must_use]
    pub fn new() -> Self {
        ConnManager::default()
    }

    pub(crate) fn from_shared(shared: Arc<ManagerShared>) -> Self {
        ConnManager { shared }
    }

    pub(crate) fn downgrade(&self) -> std::sync::Weak<ManagerShared> {
        Arc::downgrade(&self.shared)
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<ConnId, Connection>> {
        // Every critical section is a single map call, so a poisoned map is intact.
        self.shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of live connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.conns().len()
    }

    /// True when no connection is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns().is_empty()
    }

    /// The connection with this ID, if it is live.
    #[must_use]
    pub fn get(&self, id: ConnId) -> Option<Connection> {
        self.conns().get(&id).cloned()
    }

    /// A snapshot of the live connections, to iterate without holding any lock.
    #[must_use]
    pub fn connections(&self) -> Vec<Connection> {
        self.conns().values().cloned().collect()
    }

    /// Queues a message for every live connection without waiting: a connection
    /// whose send queue is full or that is closing is counted as failed and the
    /// others are not held up.
    pub fn broadcast(&self, id: impl Into<MsgId>, data: impl Into<Bytes>) -> Delivery {
        let id = id.into();
        let data = data.into();
        let mut delivery = Delivery::default();
        for conn in self.connections() {
            match conn.try_send(id, data.clone()) {
                Ok(()) => delivery.delivered += 1,
                Err(_) => delivery.failed += 1,
            }
        }
        delivery
    }

    /// Adds a connection; the returned guard removes it when dropped.
    pub(crate) fn register(&self, conn: Connection) -> Registration {
        let id = conn.id();
        self.conns().insert(id, conn);
        Registration {
            manager: self.clone(),
            id,
        }
    }
}

/// Removes its connection from the manager when dropped.
pub(crate) struct Registration {
    manager: ConnManager,
    id: ConnId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.manager.conns().remove(&self.id);
    }
}
