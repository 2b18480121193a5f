//! The UDP queries a network's DNS server is forwarding, and who waits for each answer.
//!
//! A query asking what a forward in flight asks joins it instead of being forwarded
//! again: one upstream query per question, as dnsmasq does, gives a forger one ID and
//! port to guess instead of one per copy (CVE-2020-25686). Forwards and joined askers
//! are bounded per network and per client address, so that one guest cannot keep the
//! others' questions from being forwarded. No sockets and no tasks here: the server
//! spawns the forwards and reports their ends, and tests drive the bookkeeping alone.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};

use super::cache::Key;

/// Most clients at once waiting for the answer to a question already forwarded for
/// another; more are refused. Each holds its query (4 KiB at most).
pub(super) const MAX_JOINED: usize = 1024;
/// Most of them from one client address, so that one guest cannot keep the others from
/// joining.
pub(super) const MAX_JOINED_PER_CLIENT: usize = MAX_JOINED / 4;
/// Most UDP queries waiting for an upstream answer at once; more are refused. Each
/// holds a socket per server it has asked, so this bounds a network's file descriptors
/// (dnsmasq's `dns-forward-max` is 150).
pub(super) const MAX_PENDING: usize = 512;
/// Most of them for one client address, so that one guest asking for ever new names
/// cannot keep the others' queries from being forwarded.
pub(super) const MAX_PENDING_PER_CLIENT: usize = MAX_PENDING / 4;

/// A client waiting for the answer to a forwarded UDP query.
#[derive(Debug)]
pub(super) struct Asker {
    pub client: SocketAddr,
    /// Index of the listening socket the query came in on, and is answered from.
    pub socket: usize,
    /// The query as the client sent it: its ID, letter case and EDNS size.
    pub query: Box<[u8]>,
}

impl Asker {
    /// Its query's ID (the resolver forwards only queries with a whole header).
    pub fn id(&self) -> [u8; 2] {
        match *self.query {
            [first, second, ..] => [first, second],
            _ => [0, 0],
        }
    }
}

/// What becomes of a query to be forwarded ([`InFlight::admit`]).
#[derive(Debug)]
pub(super) enum Admission {
    /// Forward it: spawn its forward and report it with [`InFlight::started`].
    Forward(Asker),
    /// It waits for the answer of the forward of its question in flight.
    Joined,
    /// A retry of a query waiting already: it is answered once.
    Retry,
    /// Over a limit: answer REFUSED.
    Refused(Asker),
}

/// The clients asking the question of a forward in flight besides its first asker.
#[derive(Debug)]
struct Joined {
    /// The first asker's address and ID, to tell its retries.
    first: (SocketAddr, [u8; 2]),
    askers: Vec<Asker>,
}

/// The forwards in flight, known by their task's ID `T`.
#[derive(Debug)]
pub(super) struct InFlight<T> {
    /// Each forward's question, if others may join it, and first asker's address.
    forwards: HashMap<T, (Option<Key>, IpAddr)>,
    /// How many forwards each client address has in flight.
    forwards_by_client: HashMap<IpAddr, usize>,
    /// The askers that joined forwards, by question.
    joined: HashMap<Key, Joined>,
    /// How many askers `joined` holds in all, and by client address.
    joined_askers: usize,
    joined_by_client: HashMap<IpAddr, usize>,
}

impl<T> Default for InFlight<T> {
    fn default() -> Self {
        InFlight {
            forwards: HashMap::new(),
            forwards_by_client: HashMap::new(),
            joined: HashMap::new(),
            joined_askers: 0,
            joined_by_client: HashMap::new(),
        }
    }
}

impl<T: Copy + Eq + Hash> InFlight<T> {
    /// What becomes of `asker`'s query, whose question is `key` (`None`: one that
    /// shares no answer, which is never joined). A joined asker is kept here until its
    /// forward ends.
    pub fn admit(&mut self, asker: Asker, key: Option<&Key>) -> Admission {
        let client = asker.client;
        if let Some(joined) = key.and_then(|key| self.joined.get_mut(key)) {
            let retry = (client, asker.id());
            if joined.first == retry
                || joined
                    .askers
                    .iter()
                    .any(|other| (other.client, other.id()) == retry)
            {
                return Admission::Retry;
            }
            let by_client = self.joined_by_client.get(&client.ip()).copied();
            if self.joined_askers >= MAX_JOINED
                || by_client.is_some_and(|count| count >= MAX_JOINED_PER_CLIENT)
            {
                return Admission::Refused(asker);
            }
            joined.askers.push(asker);
            self.joined_askers += 1;
            *self.joined_by_client.entry(client.ip()).or_default() += 1;
            return Admission::Joined;
        }
        let by_client = self.forwards_by_client.get(&client.ip()).copied();
        if self.forwards.len() >= MAX_PENDING
            || by_client.is_some_and(|count| count >= MAX_PENDING_PER_CLIENT)
        {
            return Admission::Refused(asker);
        }
        Admission::Forward(asker)
    }

    /// Notes the forward `task` spawned for a query admitted with
    /// [`Admission::Forward`]: about `key`, asked by `first` (its address and
    /// [`Asker::id`]).
    pub fn started(&mut self, task: T, key: Option<Key>, first: (SocketAddr, [u8; 2])) {
        if let Some(key) = &key {
            self.joined.insert(
                key.clone(),
                Joined {
                    first,
                    askers: Vec::new(),
                },
            );
        }
        self.forwards.insert(task, (key, first.0.ip()));
        *self.forwards_by_client.entry(first.0.ip()).or_default() += 1;
    }

    /// Forgets the forward `task`, however it ended; returns the askers that joined it.
    pub fn finished(&mut self, task: T) -> Vec<Asker> {
        let Some((key, first)) = self.forwards.remove(&task) else {
            return Vec::new();
        };
        count_down(&mut self.forwards_by_client, first);
        let joined = key
            .and_then(|key| self.joined.remove(&key))
            .map(|joined| joined.askers)
            .unwrap_or_default();
        debug_assert!(
            self.joined_askers >= joined.len(),
            "joined askers miscounted"
        );
        self.joined_askers = self.joined_askers.saturating_sub(joined.len());
        for asker in &joined {
            count_down(&mut self.joined_by_client, asker.client.ip());
        }
        joined
    }
}

/// One less for `client` in `counts`, which keeps no zeros. A count that drifted is
/// a bug the tests catch; in the field it must not take the server down.
fn count_down(counts: &mut HashMap<IpAddr, usize>, client: IpAddr) {
    debug_assert!(counts.contains_key(&client), "no count for {client}");
    if let Some(count) = counts.get_mut(&client) {
        *count = count.saturating_sub(1);
        if *count == 0 {
            counts.remove(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::server::tests::a_query;

    fn asker(client: u8, port: u16, id: u16, name: &str) -> Asker {
        Asker {
            client: SocketAddr::from(([10, 0, 0, client], port)),
            socket: 0,
            query: a_query(id, name).into(),
        }
    }

    fn key(asker: &Asker) -> Option<Key> {
        Key::of(&asker.query).map(|(key, _)| key)
    }

    /// Admits `asker`; starts its forward as task `task` if it is to be forwarded.
    fn ask(flight: &mut InFlight<u32>, task: u32, asker: Asker) -> &'static str {
        let key = key(&asker);
        match flight.admit(asker, key.as_ref()) {
            Admission::Forward(first) => {
                flight.started(task, key, (first.client, first.id()));
                "forward"
            }
            Admission::Joined => "joined",
            Admission::Retry => "retry",
            Admission::Refused(_) => "refused",
        }
    }

    fn is_empty(flight: &InFlight<u32>) -> bool {
        flight.forwards.is_empty()
            && flight.forwards_by_client.is_empty()
            && flight.joined.is_empty()
            && flight.joined_askers == 0
            && flight.joined_by_client.is_empty()
    }

    #[test]
    fn askers_of_one_question_join_its_forward_and_retries_are_answered_once() {
        let mut flight = InFlight::default();
        for (task, (client, port, id, name), expected) in [
            (1, (1, 5000, 7, "a.example."), "forward"),
            (2, (1, 5000, 7, "a.example."), "retry"),
            (2, (2, 5000, 7, "A.example."), "joined"),
            (2, (2, 5000, 7, "a.example."), "retry"),
            (2, (2, 5001, 9, "a.example."), "joined"),
            (2, (1, 5000, 8, "b.example."), "forward"),
        ] {
            let asked = ask(&mut flight, task, asker(client, port, id, name));
            assert_eq!(asked, expected, "{client} {port} {id} {name}");
        }
        let joined = flight.finished(1);
        assert_eq!(joined.len(), 2);
        assert!(
            joined
                .iter()
                .all(|asker| asker.client.ip() == IpAddr::from([10, 0, 0, 2]))
        );
        // The question is free again: the next asker forwards it anew.
        assert_eq!(
            ask(&mut flight, 3, asker(2, 5000, 7, "a.example.")),
            "forward"
        );
        assert!(flight.finished(2).is_empty());
        assert!(flight.finished(3).is_empty());
        assert!(flight.finished(3).is_empty(), "a task ended twice");
        assert!(is_empty(&flight), "{flight:?}");
    }

    #[test]
    fn one_client_gets_a_quarter_of_the_forwards_and_of_the_joined_places() {
        let mut flight = InFlight::default();
        let mut task = 0;
        for n in 0..MAX_PENDING_PER_CLIENT {
            task += 1;
            let name = format!("n{n}.example.");
            assert_eq!(ask(&mut flight, task, asker(1, 5000, 1, &name)), "forward");
        }
        assert_eq!(
            ask(&mut flight, 0, asker(1, 5000, 1, "more.example.")),
            "refused"
        );
        task += 1;
        assert_eq!(
            ask(&mut flight, task, asker(2, 5000, 1, "more.example.")),
            "forward"
        );
        let shared = task;
        for port in 0..MAX_JOINED_PER_CLIENT {
            let port = u16::try_from(port).expect("port");
            assert_eq!(
                ask(&mut flight, 0, asker(3, port, 1, "more.example.")),
                "joined"
            );
        }
        assert_eq!(
            ask(&mut flight, 0, asker(3, 9999, 1, "more.example.")),
            "refused"
        );
        assert_eq!(
            ask(&mut flight, 0, asker(4, 9999, 1, "more.example.")),
            "joined"
        );
        assert_eq!(flight.finished(shared).len(), MAX_JOINED_PER_CLIENT + 1);
        for task in 1..shared {
            assert!(flight.finished(task).is_empty());
        }
        assert!(is_empty(&flight), "{flight:?}");
    }

    #[test]
    fn the_network_holds_at_most_its_forwards_and_joined_askers() {
        let mut flight = InFlight::default();
        let mut task = 0;
        for client in 0..=u8::MAX {
            for n in 0..2 {
                task += 1;
                let name = format!("c{client}n{n}.example.");
                let expected = if flight.forwards.len() < MAX_PENDING {
                    "forward"
                } else {
                    "refused"
                };
                assert_eq!(
                    ask(&mut flight, task, asker(client, 5000, 1, &name)),
                    expected
                );
            }
        }
        assert_eq!(flight.forwards.len(), MAX_PENDING);
        for port in 0..MAX_JOINED + 1 {
            let client = u8::try_from(port % 200).expect("client");
            let port = u16::try_from(port).expect("port");
            let joined = ask(&mut flight, 0, asker(client, port, 1, "c0n0.example."));
            let expected = if port < u16::try_from(MAX_JOINED).expect("max") {
                "joined"
            } else {
                "refused"
            };
            assert_eq!(joined, expected, "asker {port}");
        }
        for task in 1..=task {
            flight.finished(task);
        }
        assert!(is_empty(&flight), "{flight:?}");
    }
}
