//! The connection manager: every live connection of a server, by ID, and the
//! notify API (Zinx's `znotify`) for pushing to them.
//!
//! A connection is registered when it opens and removed by a drop guard when it
//! ends, so an early return or a panic cannot leave an entry behind; user IDs bound
//! to it go with it. The lock is a short `std::sync::Mutex` held only to insert,
//! remove or copy out handles; sending happens after it is released, so user code
//! never runs under it and a hook or handler that uses the manager cannot deadlock
//! it (one of Go Zinx's long-standing bugs).
//!
//! Every push comes in two flavours: `try_*` fails fast on a full send queue (a
//! slow peer never holds up the others), the plain one waits for room. Pushes to
//! many connections report how many deliveries failed.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::future::join_all;

use crate::conn::{Connection, Owner};
use crate::error::Error;
use crate::extensions::States;
use crate::message::{ConnId, MsgId, Payload};

/// An application's ID for a user (a player, a device), bound to a connection
/// with [`ConnManager::bind_user`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(pub String);

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId(s.to_owned())
    }
}

impl From<String> for UserId {
    fn from(s: String) -> Self {
        UserId(s)
    }
}

impl From<u64> for UserId {
    fn from(n: u64) -> Self {
        UserId(n.to_string())
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The live connections of one server. Cloning is cheap; clones share the registry.
#[derive(Clone, Default)]
pub struct ConnManager {
    shared: Arc<ManagerShared>,
}

#[derive(Default)]
pub(crate) struct ManagerShared {
    registry: Mutex<Registry>,
    /// The last connection ID handed out.
    last_id: std::sync::atomic::AtomicU64,
    /// The application state handlers read (`Router::with_state`), set once
    /// before the first connection.
    states: std::sync::OnceLock<States>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Connection>,
    users: HashMap<UserId, ConnId>,
    /// The users bound to each connection, so a disconnect unbinds them in
    /// time proportional to their number.
    users_of: HashMap<ConnId, Vec<UserId>>,
}

impl Registry {
    fn unbind(&mut self, user: &UserId) -> Option<ConnId> {
        let conn = self.users.remove(user)?;
        if let Some(list) = self.users_of.get_mut(&conn) {
            list.retain(|u| u != user);
            if list.is_empty() {
                self.users_of.remove(&conn);
            }
        }
        Some(conn)
    }
}

impl Connection {
    /// The connection manager of the server this connection belongs to
    /// (`None` once the server is gone).
    #[must_use]
    pub fn manager(&self) -> Option<ConnManager> {
        let owner = self.owner().upgrade()?;
        owner
            .downcast::<ManagerShared>()
            .ok()
            .map(ConnManager::from_shared)
    }

    /// The application state of type `T` of the server (or client) this
    /// connection belongs to (see [`Router::with_state`](crate::Router::with_state)).
    #[must_use]
    pub fn state<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.manager()?.state::<T>()
    }
}

/// The outcome of a push to many connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Delivery {
    /// Connections the message was queued for.
    pub delivered: usize,
    /// Connections whose queue was full or that were closing.
    pub failed: usize,
    /// Targets with no live connection.
    pub missing: usize,
}

impl Delivery {
    /// True when every target got the message.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.failed == 0 && self.missing == 0
    }

    fn count(&mut self, result: &Result<(), Error>) {
        match result {
            Ok(()) => self.delivered += 1,
            Err(_) => self.failed += 1,
        }
    }
}

impl fmt::Debug for ConnManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

    /// What a connection registered here belongs to.
    pub(crate) fn downgrade(&self) -> Owner {
        let weak: std::sync::Weak<ManagerShared> = Arc::downgrade(&self.shared);
        weak
    }

    /// The application state of type `T` (see
    /// [`Router::with_state`](crate::Router::with_state)).
    #[must_use]
    pub fn state<T: std::any::Any + Send + Sync>(&self) -> Option<Arc<T>> {
        self.shared.states.get()?.get::<T>()
    }

    /// Sets the application state; the first call wins.
    pub(crate) fn set_states(&self, states: States) {
        let _ = self.shared.states.set(states);
    }

    /// A new connection ID, unique within this manager (1, 2, ...).
    pub(crate) fn next_id(&self) -> ConnId {
        ConnId(
            self.shared
                .last_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                + 1,
        )
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        // Every critical section leaves the maps consistent before it can panic.
        crate::util::lock(&self.shared.registry)
    }

    /// Number of live connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.registry().conns.len()
    }

    /// True when no connection is live.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.registry().conns.is_empty()
    }

    /// The connection with this ID, if it is live.
    #[must_use]
    pub fn get(&self, id: ConnId) -> Option<Connection> {
        self.registry().conns.get(&id).cloned()
    }

    /// A snapshot of the live connections, to iterate without holding any lock.
    #[must_use]
    pub fn connections(&self) -> Vec<Connection> {
        self.registry().conns.values().cloned().collect()
    }

    /// Binds `user` to the live connection `conn` (a later bind of the same user
    /// moves it). The binding ends when the connection closes.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] if `conn` is not live.
    pub fn bind_user(&self, user: impl Into<UserId>, conn: ConnId) -> Result<(), Error> {
        let user = user.into();
        let mut reg = self.registry();
        if !reg.conns.contains_key(&conn) {
            return Err(Error::NotConnected);
        }
        reg.unbind(&user);
        reg.users.insert(user.clone(), conn);
        reg.users_of.entry(conn).or_default().push(user);
        Ok(())
    }

    /// Removes a user's binding, returning the connection it was bound to.
    pub fn unbind_user(&self, user: &UserId) -> Option<ConnId> {
        self.registry().unbind(user)
    }

    /// The live connection bound to `user`.
    #[must_use]
    pub fn user_conn(&self, user: &UserId) -> Option<Connection> {
        let reg = self.registry();
        reg.users
            .get(user)
            .and_then(|id| reg.conns.get(id))
            .cloned()
    }

    /// The users bound to a connection.
    #[must_use]
    pub fn users_of(&self, conn: ConnId) -> Vec<UserId> {
        self.registry()
            .users_of
            .get(&conn)
            .cloned()
            .unwrap_or_default()
    }

    /// Pushes to one connection, waiting for room in its send queue.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] if it is not live, else as [`Connection::send`].
    pub async fn send_to(
        &self,
        conn: ConnId,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Result<(), Error> {
        let target = self.get(conn).ok_or(Error::NotConnected)?;
        target.send(id, data).await
    }

    /// Pushes to one connection without waiting.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] if it is not live, else as [`Connection::try_send`].
    pub fn try_send_to(
        &self,
        conn: ConnId,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Result<(), Error> {
        self.get(conn)
            .ok_or(Error::NotConnected)?
            .try_send(id, data)
    }

    /// Pushes to the connection bound to `user`, waiting for room.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] if the user is not bound to a live connection,
    /// else as [`Connection::send`].
    pub async fn send_to_user(
        &self,
        user: &UserId,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Result<(), Error> {
        let target = self.user_conn(user).ok_or(Error::NotConnected)?;
        target.send(id, data).await
    }

    /// Pushes to the connection bound to `user` without waiting.
    ///
    /// # Errors
    ///
    /// As [`send_to_user`](Self::send_to_user), with [`Error::QueueFull`] instead
    /// of waiting.
    pub fn try_send_to_user(
        &self,
        user: &UserId,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Result<(), Error> {
        self.user_conn(user)
            .ok_or(Error::NotConnected)?
            .try_send(id, data)
    }

    /// Pushes to a set of connections without waiting.
    pub fn try_send_to_many(
        &self,
        conns: impl IntoIterator<Item = ConnId>,
        id: impl Into<MsgId>,
        data: impl Into<Bytes>,
    ) -> Delivery {
        let (targets, missing) = self.resolve(conns);
        let mut delivery = Delivery {
            missing,
            ..Delivery::default()
        };
        try_send_all(&targets, id.into(), &data.into(), &mut delivery);
        delivery
    }

    /// Pushes to a set of connections, waiting for room in each queue; the
    /// connections are served concurrently, so one slow peer delays only itself.
    pub async fn send_to_many(
        &self,
        conns: impl IntoIterator<Item = ConnId>,
        id: impl Into<MsgId>,
        data: impl Into<Bytes>,
    ) -> Delivery {
        let (targets, missing) = self.resolve(conns);
        let mut delivery = Delivery {
            missing,
            ..Delivery::default()
        };
        send_all(&targets, id.into(), &data.into(), &mut delivery).await;
        delivery
    }

    /// Pushes to every live connection without waiting: a connection whose send
    /// queue is full or that is closing is counted as failed and the others are
    /// not held up.
    pub fn broadcast(&self, id: impl Into<MsgId>, data: impl Into<Bytes>) -> Delivery {
        let mut delivery = Delivery::default();
        try_send_all(&self.connections(), id.into(), &data.into(), &mut delivery);
        delivery
    }

    /// Pushes to every live connection, waiting for room in each queue
    /// (concurrently).
    pub async fn broadcast_wait(&self, id: impl Into<MsgId>, data: impl Into<Bytes>) -> Delivery {
        let mut delivery = Delivery::default();
        send_all(&self.connections(), id.into(), &data.into(), &mut delivery).await;
        delivery
    }

    /// The live connections among `ids`, and how many were not live.
    fn resolve(&self, ids: impl IntoIterator<Item = ConnId>) -> (Vec<Connection>, usize) {
        let reg = self.registry();
        let mut missing = 0;
        let targets = ids
            .into_iter()
            .filter_map(|id| {
                let conn = reg.conns.get(&id).cloned();
                missing += usize::from(conn.is_none());
                conn
            })
            .collect();
        (targets, missing)
    }

    /// Adds a connection; the returned guard removes it when dropped.
    pub(crate) fn register(&self, conn: Connection) -> Registration {
        let id = conn.id();
        self.registry().conns.insert(id, conn);
        Registration {
            manager: self.clone(),
            id,
        }
    }
}

fn try_send_all(targets: &[Connection], id: MsgId, data: &Bytes, delivery: &mut Delivery) {
    for conn in targets {
        delivery.count(&conn.try_send(id, data));
    }
}

async fn send_all(targets: &[Connection], id: MsgId, data: &Bytes, delivery: &mut Delivery) {
    let results = join_all(targets.iter().map(|c| c.send(id, data))).await;
    for result in &results {
        delivery.count(result);
    }
}

/// Removes its connection (and the users bound to it) from the manager when
/// dropped.
pub(crate) struct Registration {
    manager: ConnManager,
    id: ConnId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut reg = self.manager.registry();
        reg.conns.remove(&self.id);
        if let Some(users) = reg.users_of.remove(&self.id) {
            for user in users {
                reg.users.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::conn::Detached;

    fn conn(manager: &ConnManager, id: u64, queue: usize) -> (Connection, crate::conn::Outbox) {
        Connection::detached_with(Detached {
            id: ConnId(id),
            queue,
            queue_bytes: usize::MAX,
            send_queue_full: crate::SendQueueFull::Wait,
            max_data_len: None,
            manager: manager.downgrade(),
        })
    }

    #[tokio::test]
    async fn push_by_id_set_and_all_with_reports() {
        let m = ConnManager::new();
        let (a, mut ra) = conn(&m, 1, 1);
        let (b, mut rb) = conn(&m, 2, 4);
        let _ga = m.register(a.clone());
        let _gb = m.register(b.clone());

        m.try_send_to(ConnId(1), 5, "x").unwrap();
        assert!(
            m.try_send_to(ConnId(1), 5, "y")
                .unwrap_err()
                .is_queue_full()
        );
        assert!(matches!(
            m.try_send_to(ConnId(9), 5, "z"),
            Err(Error::NotConnected)
        ));
        assert_eq!(ra.recv().await.unwrap().data, "x");

        // a has room for one: the set push reaches a and b, misses 9.
        let d = m.try_send_to_many([ConnId(1), ConnId(2), ConnId(9)], 6, "set");
        assert_eq!((d.delivered, d.failed, d.missing), (2, 0, 1));
        assert!(!d.is_complete());
        // a is full now: fail-fast broadcast counts it as failed.
        let d = m.broadcast(7, "all");
        assert_eq!((d.delivered, d.failed, d.missing), (1, 1, 0));
        // The waiting broadcast waits for a's room while b is served.
        let waiting = {
            let m = m.clone();
            tokio::spawn(async move { m.broadcast_wait(8, "wait").await })
        };
        assert_eq!(ra.recv().await.unwrap().id, MsgId(6));
        let d = waiting.await.unwrap();
        assert_eq!((d.delivered, d.failed), (2, 0));
        let ids: Vec<u32> = std::iter::from_fn(|| rb.try_recv().ok())
            .map(|m| m.id.0)
            .collect();
        assert_eq!(ids, [6, 7, 8]);
        assert_eq!(ra.recv().await.unwrap().id, MsgId(8));

        m.send_to(ConnId(2), 9, "one").await.unwrap();
        let d = m.send_to_many([ConnId(1), ConnId(2)], 10, "many").await;
        assert_eq!(d.delivered, 2);
        a.close();
        let d = m.send_to_many([ConnId(1), ConnId(2)], 11, "many").await;
        assert_eq!((d.delivered, d.failed), (1, 1), "a closed connection fails");
    }

    #[tokio::test]
    async fn users_bind_move_and_leave_with_their_connection() {
        let m = ConnManager::new();
        let (a, mut ra) = conn(&m, 1, 8);
        let (b, mut rb) = conn(&m, 2, 8);
        let ga = m.register(a);
        let _gb = m.register(b);
        let alice = UserId::from("alice");
        assert!(matches!(
            m.bind_user("alice", ConnId(9)),
            Err(Error::NotConnected)
        ));
        m.bind_user("alice", ConnId(1)).unwrap();
        m.bind_user(42u64, ConnId(1)).unwrap();
        m.send_to_user(&alice, 1, "hi").await.unwrap();
        assert_eq!(ra.recv().await.unwrap().data, "hi");
        assert_eq!(m.users_of(ConnId(1)).len(), 2);

        // Re-binding moves the user.
        m.bind_user("alice", ConnId(2)).unwrap();
        m.try_send_to_user(&alice, 1, "moved").unwrap();
        assert_eq!(rb.recv().await.unwrap().data, "moved");
        assert_eq!(m.users_of(ConnId(1)), [UserId::from(42u64)]);

        // Closing connection 1 unbinds user 42 only.
        drop(ga);
        assert!(m.user_conn(&UserId::from(42u64)).is_none());
        assert!(matches!(
            m.try_send_to_user(&UserId::from(42u64), 1, "gone"),
            Err(Error::NotConnected)
        ));
        assert_eq!(m.user_conn(&alice).map(|c| c.id()), Some(ConnId(2)));
        assert_eq!(m.unbind_user(&alice), Some(ConnId(2)));
        assert!(m.users_of(ConnId(2)).is_empty());
    }
}
