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

use futures_util::future::join_all;

use crate::conn::outgoing::{Encoded, Encoder};
use crate::conn::{Connection, Owner};
use crate::error::Error;
use crate::extensions::States;
use crate::message::{ConnId, MsgId, Payload};

/// Declares a name type: a `String` newtype made from a `&str`, a `String` or
/// a number, shown as the name itself.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub String);

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }

        impl From<u64> for $name {
            fn from(n: u64) -> Self {
                $name(n.to_string())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type! {
    /// An application's ID for a user (a player, a device), bound to a connection
    /// with [`ConnManager::bind_user`].
    UserId
}

name_type! {
    /// The name of a room (a group of connections: a chat channel, a game match,
    /// the players in one area), for [`ConnManager::join`]. Names, not local
    /// handles, so a room can later span servers.
    RoomId
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
    /// The connections' framing, to encode a message once for many receivers
    /// (none for a manager without a server: then each send encodes its own).
    encoder: Mutex<Option<Encoder>>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Connection>,
    users: HashMap<UserId, ConnId>,
    /// The users bound to each connection, so a disconnect unbinds them in
    /// time proportional to their number.
    users_of: HashMap<ConnId, Vec<UserId>>,
    /// The members of each room, in the order they joined.
    rooms: HashMap<RoomId, Vec<ConnId>>,
    /// The rooms each connection is in, so a disconnect leaves them in time
    /// proportional to their number.
    rooms_of: HashMap<ConnId, Vec<RoomId>>,
}

impl Registry {
    /// Takes `conn` out of `room`; false if it was not in it.
    fn leave(&mut self, room: &RoomId, conn: ConnId) -> bool {
        let Some(members) = self.rooms.get_mut(room) else {
            return false;
        };
        let before = members.len();
        members.retain(|&m| m != conn);
        let left = members.len() < before;
        if members.is_empty() {
            self.rooms.remove(room);
        }
        if let Some(list) = self.rooms_of.get_mut(&conn) {
            list.retain(|r| r != room);
            if list.is_empty() {
                self.rooms_of.remove(&conn);
            }
        }
        left
    }

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

    /// Pushes to a set of connections without waiting; the message is encoded
    /// once for all of them.
    pub fn try_send_to_many(
        &self,
        conns: impl IntoIterator<Item = ConnId>,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Delivery {
        let (targets, missing) = self.resolve(conns);
        let mut delivery = Delivery {
            missing,
            ..Delivery::default()
        };
        self.try_send_all(&targets, id.into(), data, &mut delivery);
        delivery
    }

    /// Pushes to a set of connections, waiting for room in each queue; the
    /// connections are served concurrently, so one slow peer delays only itself.
    pub async fn send_to_many(
        &self,
        conns: impl IntoIterator<Item = ConnId>,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Delivery {
        let (targets, missing) = self.resolve(conns);
        let mut delivery = Delivery {
            missing,
            ..Delivery::default()
        };
        self.send_all(&targets, id.into(), data, &mut delivery)
            .await;
        delivery
    }

    /// Pushes to every live connection without waiting: a connection whose send
    /// queue is full or that is closing is counted as failed and the others are
    /// not held up. The message is encoded once for all of them.
    pub fn broadcast(&self, id: impl Into<MsgId>, data: impl Payload) -> Delivery {
        let mut delivery = Delivery::default();
        self.try_send_all(&self.connections(), id.into(), data, &mut delivery);
        delivery
    }

    /// Pushes to every live connection, waiting for room in each queue
    /// (concurrently).
    pub async fn broadcast_wait(&self, id: impl Into<MsgId>, data: impl Payload) -> Delivery {
        let mut delivery = Delivery::default();
        let targets = self.connections();
        self.send_all(&targets, id.into(), data, &mut delivery)
            .await;
        delivery
    }

    /// Puts connection `conn` in `room` (made by its first member). A
    /// connection may be in any number of rooms; it leaves them all when it
    /// closes. Joining twice is harmless.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] if `conn` is not live.
    pub fn join(&self, room: impl Into<RoomId>, conn: ConnId) -> Result<(), Error> {
        let room = room.into();
        let mut reg = self.registry();
        if !reg.conns.contains_key(&conn) {
            return Err(Error::NotConnected);
        }
        let members = reg.rooms.entry(room.clone()).or_default();
        if !members.contains(&conn) {
            members.push(conn);
            reg.rooms_of.entry(conn).or_default().push(room);
        }
        Ok(())
    }

    /// Takes `conn` out of `room`; false if it was not in it. An emptied room
    /// is gone.
    pub fn leave(&self, room: &RoomId, conn: ConnId) -> bool {
        self.registry().leave(room, conn)
    }

    /// The members of `room`, in the order they joined (empty if there is no
    /// such room).
    #[must_use]
    pub fn members(&self, room: &RoomId) -> Vec<ConnId> {
        self.registry().rooms.get(room).cloned().unwrap_or_default()
    }

    /// The rooms `conn` is in.
    #[must_use]
    pub fn rooms_of(&self, conn: ConnId) -> Vec<RoomId> {
        self.registry()
            .rooms_of
            .get(&conn)
            .cloned()
            .unwrap_or_default()
    }

    /// Pushes to every member of `room` but `except` (the sender, say)
    /// without waiting, as [`broadcast`](Self::broadcast) does: the message is
    /// encoded once, and a member whose queue is full is counted as failed.
    pub fn try_send_to_room(
        &self,
        room: &RoomId,
        except: Option<ConnId>,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Delivery {
        let targets = self.room_targets(room, except);
        let mut delivery = Delivery::default();
        self.try_send_all(&targets, id.into(), data, &mut delivery);
        delivery
    }

    /// Pushes to every member of `room` but `except`, waiting for room in each
    /// queue (concurrently).
    pub async fn send_to_room(
        &self,
        room: &RoomId,
        except: Option<ConnId>,
        id: impl Into<MsgId>,
        data: impl Payload,
    ) -> Delivery {
        let targets = self.room_targets(room, except);
        let mut delivery = Delivery::default();
        self.send_all(&targets, id.into(), data, &mut delivery)
            .await;
        delivery
    }

    /// The live members of `room` but `except`.
    fn room_targets(&self, room: &RoomId, except: Option<ConnId>) -> Vec<Connection> {
        let reg = self.registry();
        let Some(members) = reg.rooms.get(room) else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|&&id| Some(id) != except)
            .filter_map(|id| reg.conns.get(id).cloned())
            .collect()
    }

    /// Sets the framing the connections encode with, so a message for many is
    /// encoded once.
    pub(crate) fn set_encoder(&self, encoder: Encoder) {
        *crate::util::lock(&self.shared.encoder) = Some(encoder);
    }

    /// `data` encoded once, for many receivers; `None` without a framing (a
    /// manager of detached connections) or with no target.
    fn encode(
        &self,
        targets: &[Connection],
        id: MsgId,
        data: &impl Payload,
    ) -> Option<Result<Encoded, Error>> {
        if targets.is_empty() {
            return None;
        }
        let mut encoder = crate::util::lock(&self.shared.encoder);
        let encoder = encoder.as_mut()?;
        Some(match data.to_copy() {
            Some(bytes) => encoder.encode(id, bytes),
            // Long data already in a `Bytes`: each queue takes its own header
            // and shares the data (see `Payload`), no copy to save.
            None => return None,
        })
    }

    fn try_send_all(
        &self,
        targets: &[Connection],
        id: MsgId,
        data: impl Payload,
        delivery: &mut Delivery,
    ) {
        match self.encode(targets, id, &data) {
            Some(Ok(encoded)) => {
                for conn in targets {
                    delivery.count(&conn.try_send_encoded(&encoded));
                }
            }
            Some(Err(_)) => delivery.failed += targets.len(),
            None => {
                let data = data.into_bytes();
                for conn in targets {
                    delivery.count(&conn.try_send(id, &data));
                }
            }
        }
    }

    async fn send_all(
        &self,
        targets: &[Connection],
        id: MsgId,
        data: impl Payload,
        delivery: &mut Delivery,
    ) {
        let results = match self.encode(targets, id, &data) {
            Some(Ok(encoded)) => join_all(targets.iter().map(|c| c.send_encoded(&encoded))).await,
            Some(Err(_)) => {
                delivery.failed += targets.len();
                return;
            }
            None => {
                let data = data.into_bytes();
                join_all(targets.iter().map(|c| c.send(id, &data))).await
            }
        };
        for result in &results {
            delivery.count(result);
        }
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

/// Removes its connection (and the users bound to it, and its rooms) from the manager when
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
        if let Some(rooms) = reg.rooms_of.get(&self.id).cloned() {
            for room in rooms {
                reg.leave(&room, self.id);
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

    /// Zinx TLV framing that counts the messages it encodes.
    #[derive(Clone, Default)]
    struct Counting(Arc<std::sync::atomic::AtomicUsize>);

    impl tokio_util::codec::Decoder for Counting {
        type Item = crate::Message;
        type Error = Error;
        fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<crate::Message>, Error> {
            crate::Codec::default().decode(src)
        }
    }

    impl tokio_util::codec::Encoder<crate::Message> for Counting {
        type Error = Error;
        fn encode(&mut self, msg: crate::Message, dst: &mut bytes::BytesMut) -> Result<(), Error> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            crate::Codec::default().encode(msg, dst)
        }
    }

    impl crate::Framing for Counting {}

    #[tokio::test]
    async fn a_message_for_many_is_encoded_once() {
        let m = ConnManager::new();
        let counting = Counting::default();
        m.set_encoder(Encoder::new(&counting));
        let (a, mut ra) = conn(&m, 1, 4);
        let (b, mut rb) = conn(&m, 2, 4);
        let (c, mut rc) = conn(&m, 3, 4);
        let _g = (m.register(a), m.register(b), m.register(c));
        assert!(m.broadcast(5, "once").is_complete());
        m.join("r", ConnId(1)).unwrap();
        m.join("r", ConnId(2)).unwrap();
        let delivery = m
            .send_to_room(&RoomId::from("r"), Some(ConnId(1)), 6, "room")
            .await;
        assert_eq!(delivery.delivered, 1);
        assert_eq!(
            counting.0.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "one encode each"
        );
        for rx in [&mut ra, &mut rb, &mut rc] {
            assert_eq!(&rx.recv().await.unwrap().data[..], b"once");
        }
        assert_eq!(&rb.recv().await.unwrap().data[..], b"room");
        assert!(ra.try_recv().is_err() && rc.try_recv().is_err());
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
