//! Network lifecycle events: the manager publishes one per change that libvirt's network
//! driver reports (defined, undefined, started, stopped), and every subscriber gets its
//! own copy.
//!
//! Publishing never waits for anyone: a [`tokio::sync::broadcast`] channel keeps the last
//! [`CAPACITY`] events, and a subscriber that falls further behind learns how many it
//! missed ([`Received::Missed`]) instead of slowing the daemon down. With no subscriber,
//! an event costs nothing but its construction.

use std::time::SystemTime;

use tokio::sync::broadcast;

/// How many events a subscriber may fall behind before it misses the oldest, on top of
/// what its socket holds (~180 events): a client reading as they come never gets near.
pub const CAPACITY: usize = 256;

/// What happened to a network, as libvirt's `virNetworkEventLifecycleType` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// A persistent definition was written (a new network, or a redefinition).
    Defined,
    /// The persistent definition was removed.
    Undefined,
    /// The network started (`net-start`, or `net-create` of a transient network).
    Started,
    /// The network stopped (`net-destroy`; a transient network is gone with it).
    Stopped,
}

/// One event about one network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// The network's name.
    pub network: String,
    /// The network's UUID (subscribers filter on it, as libvirt does).
    pub uuid: uuid::Uuid,
    /// What happened.
    pub lifecycle: Lifecycle,
    /// When.
    pub time: SystemTime,
}

/// The sending side, owned by the manager.
#[derive(Debug)]
pub struct Events {
    sender: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Events {
        Events::new()
    }
}

impl Events {
    /// A channel holding up to [`CAPACITY`] events per subscriber.
    pub fn new() -> Events {
        Events::with_capacity(CAPACITY)
    }

    /// A channel holding up to `capacity` events per subscriber.
    pub fn with_capacity(capacity: usize) -> Events {
        let (sender, _) = broadcast::channel(capacity);
        Events { sender }
    }

    /// Sends `lifecycle` of `network` to every current subscriber. Never blocks.
    pub fn publish(&self, network: &str, uuid: uuid::Uuid, lifecycle: Lifecycle) {
        let event = Event {
            network: network.to_owned(),
            uuid,
            lifecycle,
            time: SystemTime::now(),
        };
        // An error means nobody listens: nothing to do.
        let _ = self.sender.send(event);
    }

    /// A new subscription: it receives every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription {
            receiver: self.sender.subscribe(),
        }
    }

    /// How many subscriptions exist.
    pub fn subscribers(&self) -> usize {
        self.sender.receiver_count()
    }
}

/// The receiving side of one subscriber. Dropping it ends the subscription.
#[derive(Debug)]
pub struct Subscription {
    receiver: broadcast::Receiver<Event>,
}

/// What a subscription yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// The next event.
    Event(Event),
    /// The subscriber fell more than [`CAPACITY`] events behind and this many of the
    /// oldest were dropped; the next call yields the oldest one still kept.
    Missed(u64),
    /// The publisher is gone (the manager was dropped).
    Closed,
}

impl Subscription {
    /// Waits for the next event.
    pub async fn recv(&mut self) -> Received {
        match self.receiver.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Received::Missed(missed),
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uuid(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    async fn next_event(subscription: &mut Subscription) -> (String, Lifecycle) {
        match subscription.recv().await {
            Received::Event(event) => (event.network, event.lifecycle),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn every_subscriber_gets_every_event_from_its_subscription_on() {
        let events = Events::new();
        events.publish("before", uuid(1), Lifecycle::Defined);
        let mut first = events.subscribe();
        events.publish("a", uuid(2), Lifecycle::Defined);
        let mut second = events.subscribe();
        events.publish("a", uuid(2), Lifecycle::Started);
        assert_eq!(
            next_event(&mut first).await,
            ("a".into(), Lifecycle::Defined)
        );
        assert_eq!(
            next_event(&mut first).await,
            ("a".into(), Lifecycle::Started)
        );
        assert_eq!(
            next_event(&mut second).await,
            ("a".into(), Lifecycle::Started)
        );
        assert_eq!(events.subscribers(), 2);
        drop(first);
        assert_eq!(events.subscribers(), 1);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_misses_the_oldest_and_never_blocks_the_publisher() {
        let events = Events::with_capacity(4);
        let mut slow = events.subscribe();
        // Far more than it holds: each publish returns at once.
        for n in 0..10 {
            events.publish(&format!("n{n}"), uuid(n), Lifecycle::Started);
        }
        assert_eq!(slow.recv().await, Received::Missed(6));
        for n in 6..10 {
            assert_eq!(
                next_event(&mut slow).await,
                (format!("n{n}"), Lifecycle::Started)
            );
        }
    }

    #[tokio::test]
    async fn publishing_without_subscribers_is_fine_and_closing_ends_subscriptions() {
        let events = Events::new();
        events.publish("nobody", uuid(1), Lifecycle::Stopped);
        let mut subscription = events.subscribe();
        drop(events);
        assert_eq!(subscription.recv().await, Received::Closed);
    }
}
