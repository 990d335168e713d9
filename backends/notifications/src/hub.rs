//! The sockets of this replica, by user.
//!
//! An event is handed only to the sockets registered under its user's id;
//! there is no other way into a socket. Each socket has a small queue: one
//! that stops reading (a stalled client) is dropped from the hub when its
//! queue is full, rather than holding events for everyone else, and its
//! client reconnects and is sent what it missed.

use crate::event::Event;
use crate::lock;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Why the service closes a socket, with the close code the client sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// The user's sessions were revoked (logout, disabled, deleted, role
    /// changed): 4003. Reconnecting needs a new sign-in.
    Revoked,
    /// The token the socket was opened with has expired: 4001. The client
    /// refreshes it and reconnects.
    Expired,
    /// Events cannot be delivered for now (Redis lost), or the socket fell
    /// behind: 1013, try again later.
    Unavailable,
    /// The service is shutting down: 1001.
    GoingAway,
}

impl Close {
    pub fn code(self) -> u16 {
        match self {
            Close::Revoked => 4003,
            Close::Expired => 4001,
            Close::Unavailable => 1013,
            Close::GoingAway => 1001,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Close::Revoked => "revoked",
            Close::Expired => "token expired",
            Close::Unavailable => "live events unavailable; reconnect",
            Close::GoingAway => "shutting down",
        }
    }
}

/// What a socket's queue carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Event(Event),
    Close(Close),
}

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Signal>,
}

#[derive(Default)]
struct Sockets {
    users: HashMap<i64, Vec<Subscriber>>,
    count: usize,
}

impl Sockets {
    /// Keeps the sockets of `user` for which `keep` holds.
    fn retain(&mut self, user: i64, keep: impl FnMut(&Subscriber) -> bool) {
        if let Some(sockets) = self.users.get_mut(&user) {
            let before = sockets.len();
            sockets.retain(keep);
            self.count -= before - sockets.len();
            if sockets.is_empty() {
                self.users.remove(&user);
            }
        }
    }
}

pub struct Hub {
    sockets: Mutex<Sockets>,
    next: AtomicU64,
    queue: usize,
}

/// A socket's place in the hub; leaving it (drop) unregisters the socket.
pub struct Subscription {
    hub: Arc<Hub>,
    user: i64,
    id: u64,
    pub signals: mpsc::Receiver<Signal>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.user, self.id);
    }
}

impl Hub {
    /// `queue`: events a socket may have waiting before it is dropped.
    pub fn new(queue: usize) -> Self {
        Hub {
            sockets: Mutex::new(Sockets::default()),
            next: AtomicU64::new(0),
            queue: queue.max(1),
        }
    }

    /// Registers a socket of `user`'s, unless the user already has
    /// `per_user` sockets or the replica has `total`.
    pub fn subscribe(
        self: &Arc<Self>,
        user: i64,
        per_user: usize,
        total: usize,
    ) -> Result<Subscription, Full> {
        let mut all = lock(&self.sockets);
        if all.count >= total {
            return Err(Full::Replica);
        }
        let sockets = all.users.entry(user).or_default();
        if sockets.len() >= per_user {
            return Err(Full::User);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (queue, signals) = mpsc::channel(self.queue);
        sockets.push(Subscriber { id, queue });
        all.count += 1;
        Ok(Subscription {
            hub: Arc::clone(self),
            user,
            id,
            signals,
        })
    }

    /// Hands `event` to each of `user`'s sockets here.
    pub fn deliver(&self, user: i64, event: Event) {
        self.signal(user, Signal::Event(event));
    }

    /// Closes each of `user`'s sockets here.
    pub fn close_user(&self, user: i64, close: Close) {
        self.signal(user, Signal::Close(close));
    }

    /// Closes every socket here.
    pub fn close_all(&self, close: Close) {
        let mut all = lock(&self.sockets);
        let users: Vec<i64> = all.users.keys().copied().collect();
        for user in users {
            // A socket whose queue is full is dropped instead; it closes
            // (1013) when it has drained what it holds.
            all.retain(user, |s| s.queue.try_send(Signal::Close(close)).is_ok());
        }
    }

    /// Sockets open on this replica.
    pub fn sockets(&self) -> usize {
        lock(&self.sockets).count
    }

    fn signal(&self, user: i64, signal: Signal) {
        lock(&self.sockets).retain(user, |s| match s.queue.try_send(signal.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(
                    user_id = user,
                    "a socket fell behind its events; dropping it"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    }

    fn remove(&self, user: i64, id: u64) {
        lock(&self.sockets).retain(user, |s| s.id != id);
    }
}

/// Why a socket was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    User,
    Replica,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventId;

    fn event(n: u64) -> Event {
        Event {
            id: EventId { millis: n, seq: 0 },
            text: format!("{{\"n\":{n}}}").into(),
        }
    }

    #[test]
    fn events_reach_only_their_users_sockets() {
        let hub = Arc::new(Hub::new(8));
        let mut a1 = hub.subscribe(1, 4, 100).unwrap();
        let mut a2 = hub.subscribe(1, 4, 100).unwrap();
        let mut b = hub.subscribe(2, 4, 100).unwrap();
        hub.deliver(1, event(1));
        hub.deliver(3, event(3));
        assert_eq!(a1.signals.try_recv(), Ok(Signal::Event(event(1))));
        assert_eq!(a2.signals.try_recv(), Ok(Signal::Event(event(1))));
        assert!(b.signals.try_recv().is_err(), "user 2 got user 1's event");
        hub.close_user(2, Close::Revoked);
        assert_eq!(b.signals.try_recv(), Ok(Signal::Close(Close::Revoked)));
        assert!(a1.signals.try_recv().is_err());
    }

    #[test]
    fn leaving_unregisters_and_limits_hold() {
        let hub = Arc::new(Hub::new(8));
        let a = hub.subscribe(1, 2, 3).unwrap();
        let _b = hub.subscribe(1, 2, 3).unwrap();
        assert_eq!(hub.subscribe(1, 2, 3).err(), Some(Full::User));
        let _c = hub.subscribe(2, 2, 3).unwrap();
        assert_eq!(hub.subscribe(3, 2, 3).err(), Some(Full::Replica));
        assert_eq!(hub.sockets(), 3);
        drop(a);
        assert_eq!(hub.sockets(), 2);
        assert!(hub.subscribe(1, 2, 3).is_ok());
    }

    #[test]
    fn a_stalled_socket_is_dropped_and_the_others_keep_receiving() {
        let hub = Arc::new(Hub::new(2));
        let mut stalled = hub.subscribe(1, 4, 100).unwrap();
        let mut reading = hub.subscribe(1, 4, 100).unwrap();
        for n in 0..5 {
            hub.deliver(1, event(n));
            assert_eq!(reading.signals.try_recv(), Ok(Signal::Event(event(n))));
        }
        assert_eq!(hub.sockets(), 1);
        // The stalled socket drains what it holds, then learns it was dropped.
        assert!(stalled.signals.try_recv().is_ok());
        assert!(stalled.signals.try_recv().is_ok());
        assert_eq!(
            stalled.signals.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        );
    }

    #[test]
    fn close_all_reaches_every_socket() {
        let hub = Arc::new(Hub::new(4));
        let mut a = hub.subscribe(1, 4, 100).unwrap();
        let mut b = hub.subscribe(2, 4, 100).unwrap();
        hub.close_all(Close::Unavailable);
        assert_eq!(a.signals.try_recv(), Ok(Signal::Close(Close::Unavailable)));
        assert_eq!(b.signals.try_recv(), Ok(Signal::Close(Close::Unavailable)));
    }
}
