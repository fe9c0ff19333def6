//! Who the region's nodes are: the peer addresses (a fixed list, or the ready
//! endpoints of a headless Service), each asked who it is (`GET /peer/v1/hello`: its
//! node name, boot id and disk tier), looked up again every few seconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::client::PeerClient;
use super::departures::Departures;
use super::placement::{self, Node};
use super::protocol::Hello;

/// One node of the region, and where to reach it (`None`: this node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub address: Option<SocketAddr>,
    pub hello: Hello,
}

/// The region as this node sees it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub members: Vec<Member>,
    /// Placement's view of the same members, index for index.
    pub nodes: Vec<Node>,
    /// Of the member list: two nodes with the same fingerprint place keys alike.
    pub fingerprint: u64,
}

impl Members {
    pub fn new(mut members: Vec<Member>) -> Self {
        members.sort_by(|a, b| a.hello.node.cmp(&b.hello.node));
        members.dedup_by(|a, b| a.hello.node == b.hello.node);
        // Weight: the disk tier; a node without one still owns a small share, and
        // none claims more than a petabyte's.
        let nodes: Vec<Node> = members
            .iter()
            .map(|m| Node::new(m.hello.node.clone(), m.hello.disk_capacity.clamp(1 << 30, 1 << 50)))
            .collect();
        let fingerprint = placement::fingerprint(&nodes);
        Self {
            members,
            nodes,
            fingerprint,
        }
    }

    /// This node's share of the keys (its weight over the ring's): its share of the
    /// region's origin budget. Before it is a member, an even share.
    pub fn share(&self) -> f64 {
        let total: u64 = self.nodes.iter().map(|n| n.weight).sum();
        let own = self.members.iter().zip(&self.nodes).find(|(m, _)| m.address.is_none());
        match own {
            Some((_, node)) if total > 0 => node.weight as f64 / total as f64,
            _ => 1.0 / (self.members.len() + 1) as f64,
        }
    }

    /// The members in the order to ask them for a key: the owner first.
    pub fn ranked(&self, key_hash: u64) -> Vec<&Member> {
        placement::ranked(&self.nodes, key_hash)
            .into_iter()
            .filter_map(|node| self.members.iter().find(|m| m.hello.node == node.name))
            .collect()
    }
}

/// Where the peer addresses come from: one small trait, so that an EndpointSlice
/// watcher can be added beside DNS and the fixed list.
pub trait Discover: Send + Sync {
    fn addresses(&self) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>>;
}

/// A fixed list of peers.
pub struct Fixed(pub Vec<SocketAddr>);

impl Discover for Fixed {
    fn addresses(&self) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>> {
        let addresses = self.0.clone();
        Box::pin(async move { Ok(addresses) })
    }
}

/// The ready endpoints of a headless Service: its A records, looked up afresh each
/// time (the resolver keeps no cache; a truncated answer is asked again over TCP).
pub struct ServiceRecords {
    resolver: hickory_resolver::TokioResolver,
    name: String,
    port: u16,
}

impl ServiceRecords {
    pub fn new(name: &str, port: u16) -> std::io::Result<Self> {
        let mut builder = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| std::io::Error::other(format!("reading the system DNS configuration: {e}")))?;
        builder.options_mut().cache_size = 0;
        let resolver = builder
            .build()
            .map_err(|e| std::io::Error::other(format!("starting the DNS resolver: {e}")))?;
        Ok(Self {
            resolver,
            name: name.to_owned(),
            port,
        })
    }
}

impl Discover for ServiceRecords {
    fn addresses(&self) -> BoxFuture<'_, std::io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            let found = match self.resolver.lookup_ip(self.name.as_str()).await {
                Ok(found) => found,
                // No ready pod: the region is empty, not unknown.
                Err(e) if e.is_no_records_found() => return Ok(Vec::new()),
                Err(e) => return Err(std::io::Error::other(format!("looking up {}: {e}", self.name))),
            };
            let mut addresses: Vec<SocketAddr> = found
                .iter()
                .filter(|ip| ip.is_ipv4())
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect();
            addresses.sort_unstable();
            addresses.dedup();
            Ok(addresses)
        })
    }
}

/// How many refreshes in a row a new node must answer before it joins the ring: a
/// node whose records flap never owns anything. The first round after this node
/// starts takes everyone who answers (the region is formed, not joined).
const JOIN_ROUNDS: u32 = 2;
/// How soon a failed discovery is tried again.
const DISCOVERY_RETRY: Duration = Duration::from_secs(1);
/// How long a node whose discovery keeps failing stays out of rotation after it
/// starts: then it serves alone (correct, at the origin's cost) rather than not at
/// all (a DNS outage must not take a whole region out).
const DISCOVERY_PATIENCE: Duration = Duration::from_secs(10);

/// The members with hysteresis: a newcomer joins after [`JOIN_ROUNDS`] answered
/// refreshes in a row, a member leaves after `leave_after` unheard. Chunks move only
/// when membership really changes, never back and forth with a flapping record.
pub struct Roster {
    me: Hello,
    leave_after: Duration,
    tracked: HashMap<String, Tracked>,
    rounds: u64,
    /// Members that said they are stopping: one waited for stays a member.
    departures: Arc<Departures>,
}

struct Tracked {
    member: Member,
    /// Refreshes in a row it answered.
    streak: u32,
    heard: Instant,
    joined: bool,
}

impl Roster {
    pub fn new(me: Hello, leave_after: Duration, departures: Arc<Departures>) -> Self {
        Self {
            me,
            leave_after,
            tracked: HashMap::new(),
            rounds: 0,
            departures,
        }
    }

    /// Where the members that said they are stopping (or just came back) were last
    /// heard: asked again each refresh, listed or not (without `publishNotReadyAddresses`, a draining
    /// pod leaves the Service's records while it still serves its peers). Any other
    /// node the records drop is unheard, and leaves after `leave_after`.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let now = Instant::now();
        self.tracked
            .iter()
            .filter(|(node, _)| {
                self.departures.leaving(node, now) || self.departures.returned_within(node, now, self.leave_after)
            })
            .filter_map(|(_, t)| t.member.address)
            .collect()
    }

    /// One refresh: the nodes that answered, at their addresses. Returns the members.
    pub fn round(&mut self, answered: Vec<(SocketAddr, Hello)>, now: Instant) -> Members {
        let first = self.rounds == 0;
        self.rounds += 1;
        let mut heard = std::collections::HashSet::new();
        let mut addresses = std::collections::HashSet::new();
        for (address, hello) in answered {
            addresses.insert(address);
            // This node, under one of its own addresses; or a node heard twice.
            if hello.node == self.me.node || !heard.insert(hello.node.clone()) {
                continue;
            }
            self.departures.heard(&hello.node, &hello.boot_id);
            let member = Member {
                address: Some(address),
                hello,
            };
            let tracked = self.tracked.entry(member.hello.node.clone()).or_insert(Tracked {
                member: member.clone(),
                streak: 0,
                heard: now,
                joined: false,
            });
            tracked.member = member;
            tracked.streak = tracked.streak.saturating_add(1);
            tracked.heard = now;
            if !tracked.joined && (first || tracked.streak >= JOIN_ROUNDS) {
                tracked.joined = true;
                tracing::info!(node = tracked.member.hello.node, "peer joins the region");
            }
        }
        let (leave_after, departures) = (self.leave_after, &self.departures);
        self.tracked.retain(|node, tracked| {
            if heard.contains(node) {
                return true;
            }
            tracked.streak = 0;
            // Said it stops and was asked (see `addresses`), but did not answer: it is
            // down, and waited for as when a reader finds it so. Otherwise, with no
            // reader needing its chunks while it restarts, it would leave after
            // leave_after and its share would be filled from the origin elsewhere.
            departures.found_down(node, now);
            // Its address answers as another node now: it is not there (unless readers
            // wait for it to come back, maybe elsewhere).
            let replaced = tracked.member.address.is_some_and(|a| addresses.contains(&a))
                && !departures.waited_for(node, now);
            let stays = tracked.joined
                && !replaced
                && (now.saturating_duration_since(tracked.heard) < leave_after
                    || departures.waited_for(node, now)
                    || departures.returned_within(node, now, leave_after));
            if tracked.joined && !stays {
                tracing::info!(node, unheard = ?now.saturating_duration_since(tracked.heard), replaced, "peer leaves the region");
            }
            stays
        });
        let mut members = vec![Member {
            address: None,
            hello: self.me.clone(),
        }];
        members.extend(self.tracked.values().filter(|t| t.joined).map(|t| t.member.clone()));
        Members::new(members)
    }
}

/// Keeps `members` current: every `refresh`, the addresses are discovered and each
/// is asked who it is; the [`Roster`] decides who is a member. `discovered` is set
/// once the first round has run (found anyone or not).
pub async fn watch_members(
    discover: Arc<dyn Discover>,
    client: PeerClient,
    mut roster: Roster,
    refresh: Duration,
    members: watch::Sender<Arc<Members>>,
    discovered: Arc<AtomicBool>,
) {
    let started = Instant::now();
    loop {
        let mut addresses = match discover.addresses().await {
            Ok(addresses) => addresses,
            Err(error) => {
                // Not ready on a failed lookup at first: alone, this node would fill
                // what the region's owners hold (a Service with no ready pod is no
                // error). Ready alone after DISCOVERY_PATIENCE.
                tracing::warn!(%error, "peer discovery failed; keeping the last members");
                if started.elapsed() >= DISCOVERY_PATIENCE {
                    discovered.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(refresh.min(DISCOVERY_RETRY)).await;
                continue;
            }
        };
        addresses.extend(roster.addresses());
        addresses.sort_unstable();
        addresses.dedup();
        let hellos = futures_util::future::join_all(addresses.iter().map(|address| client.hello(*address))).await;
        let mut answered = Vec::new();
        for (address, hello) in addresses.iter().zip(hellos) {
            match hello {
                Ok(hello) => answered.push((*address, hello)),
                Err(error) => tracing::debug!(%address, error = %error, "a peer did not say hello"),
            }
        }
        let current = roster.round(answered, Instant::now());
        crate::telemetry::peer_members(current.members.len(), current.fingerprint);
        members.send_if_modified(|old| {
            let changed = **old != current;
            if changed {
                tracing::info!(
                    members = current.members.len(),
                    fingerprint = format!("{:016x}", current.fingerprint),
                    "region members"
                );
                *old = Arc::new(current);
            }
            changed
        });
        discovered.store(true, Ordering::SeqCst);
        tokio::time::sleep(refresh).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellos_round_trip() {
        let hello = Hello {
            node: "gpu-node-01".into(),
            boot_id: "b-1".into(),
            disk_capacity: 7 << 40,
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        assert_eq!(Hello::decode("node\t\nboot_id\tx\ndisk_capacity\t1\n"), None);
        assert_eq!(Hello::decode("node\ta\nboot_id\tx\n"), None);
    }

    #[tokio::test]
    async fn a_service_name_resolves_to_its_a_records() {
        let records = ServiceRecords::new("localhost", 9091).unwrap();
        let found = records.addresses().await.unwrap();
        assert!(found.contains(&"127.0.0.1:9091".parse().unwrap()), "{found:?}");
        assert!(found.iter().all(|a| a.is_ipv4() && a.port() == 9091));
    }

    fn hello(node: &str, boot: &str) -> Hello {
        Hello {
            node: node.into(),
            boot_id: boot.into(),
            disk_capacity: 1 << 40,
        }
    }

    fn names(members: &Members) -> Vec<&str> {
        members.members.iter().map(|m| m.hello.node.as_str()).collect()
    }

    #[test]
    fn newcomers_join_after_two_answers_in_a_row_and_members_leave_only_when_unheard_long() {
        let address = |i: u8| SocketAddr::from(([10, 0, 0, i], 9091));
        let mut roster = Roster::new(
            hello("a", "1"),
            Duration::from_secs(30),
            Arc::new(Departures::new(Duration::from_secs(15))),
        );
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first round forms the region with whoever answers.
        let formed = roster.round(
            vec![(address(2), hello("b", "1")), (address(1), hello("a", "1"))],
            at(0),
        );
        assert_eq!(names(&formed), ["a", "b"]);
        // A newcomer joins on its second answer in a row, not its first.
        assert_eq!(
            names(&roster.round(
                vec![(address(2), hello("b", "1")), (address(3), hello("c", "1"))],
                at(5)
            )),
            ["a", "b"]
        );
        assert_eq!(
            names(&roster.round(
                vec![(address(2), hello("b", "1")), (address(3), hello("c", "1"))],
                at(10)
            )),
            ["a", "b", "c"]
        );
        // A flapping newcomer never joins.
        for round in 0..6 {
            let mut answered = vec![(address(2), hello("b", "1")), (address(3), hello("c", "1"))];
            if round % 2 == 0 {
                answered.push((address(4), hello("d", "1")));
            }
            assert_eq!(names(&roster.round(answered, at(15 + 5 * round))), ["a", "b", "c"]);
        }
        // A member unheard stays (its chunks do not move) until leave_after...
        let stays = roster.round(vec![(address(3), hello("c", "1"))], at(50));
        assert_eq!(names(&stays), ["a", "b", "c"]);
        assert_eq!(
            names(&roster.round(vec![(address(3), hello("c", "1"))], at(65))),
            ["a", "b", "c"]
        );
        // ...and is back at once, at its new address, under a new boot.
        let back = roster.round(
            vec![(address(9), hello("b", "2")), (address(3), hello("c", "1"))],
            at(76),
        );
        assert_eq!(names(&back), ["a", "b", "c"]);
        assert_eq!(back.members[1].address, Some(address(9)));
        assert_eq!(back.members[1].hello.boot_id, "2");
        // Unheard for leave_after: it leaves.
        roster.round(vec![(address(3), hello("c", "1"))], at(80));
        assert_eq!(
            names(&roster.round(vec![(address(3), hello("c", "1"))], at(106))),
            ["a", "c"]
        );
        // Coming back after leaving is joining: two answers in a row.
        assert_eq!(
            names(&roster.round(
                vec![(address(2), hello("b", "3")), (address(3), hello("c", "1"))],
                at(110)
            )),
            ["a", "c"]
        );
        assert_eq!(
            names(&roster.round(
                vec![(address(2), hello("b", "3")), (address(3), hello("c", "1"))],
                at(115)
            )),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn a_stopping_member_is_asked_where_it_was_and_stays_while_readers_wait_for_it() {
        let address = |i: u8| SocketAddr::from(([10, 0, 0, i], 9091));
        let departures = Arc::new(Departures::new(Duration::from_secs(15)));
        let mut roster = Roster::new(hello("a", "1"), Duration::from_secs(3), departures.clone());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let everyone = vec![
            (address(2), hello("b", "1")),
            (address(3), hello("c", "1")),
            (address(4), hello("d", "1")),
        ];
        assert_eq!(names(&roster.round(everyone, at(0))), ["a", "b", "c", "d"]);
        assert!(roster.addresses().is_empty(), "nobody said it stops");
        // b says it stops: its last address is asked again, listed or not.
        departures.said("b", "1", t0);
        assert_eq!(roster.addresses(), [address(2)]);
        // b is found down by a reader: it stays a member past leave_after while
        // readers wait for it, and leaves once their wait is over.
        let _wait = departures.wait("b", at(1_000));
        let others = || vec![(address(3), hello("c", "1")), (address(4), hello("d", "1"))];
        assert_eq!(names(&roster.round(others(), at(5_000))), ["a", "b", "c", "d"]);
        assert_eq!(names(&roster.round(others(), at(17_000))), ["a", "c", "d"]);
        // c's address now answers as another node: c is not there, at once.
        let moved = roster.round(
            vec![(address(3), hello("e", "1")), (address(4), hello("d", "1"))],
            at(17_500),
        );
        assert_eq!(names(&moved), ["a", "d"], "e is new (not joined yet), c replaced");
    }

    #[test]
    fn a_stopping_member_that_stops_answering_is_waited_for_though_no_reader_needed_it() {
        let address = |i: u8| SocketAddr::from(([10, 0, 0, i], 9091));
        let departures = Arc::new(Departures::new(Duration::from_secs(15)));
        let mut roster = Roster::new(hello("a", "1"), Duration::from_secs(3), departures.clone());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let everyone = vec![(address(2), hello("b", "1")), (address(3), hello("c", "1"))];
        assert_eq!(names(&roster.round(everyone.clone(), at(0))), ["a", "b", "c"]);
        departures.said("b", "1", t0);
        // b drains, still answering where it was; then stops answering at 1 s.
        assert_eq!(names(&roster.round(everyone, at(500))), ["a", "b", "c"]);
        let c = || vec![(address(3), hello("c", "1"))];
        assert_eq!(names(&roster.round(c(), at(1_000))), ["a", "b", "c"]);
        // Unheard past leave_after, with no reader having found it down: it stays
        // (its chunks do not move to be filled from the origin)...
        assert_eq!(names(&roster.round(c(), at(5_000))), ["a", "b", "c"]);
        assert!(departures.waited_for("b", at(5_000)));
        // A reader that needs b now waits out the same time, counted from then.
        match departures.wait("b", at(6_000)) {
            crate::peers::departures::Wait::Start { deadline, .. } => assert_eq!(deadline, at(16_000)),
            _ => panic!("a reader finding b down starts waiting for it"),
        }
        assert_eq!(names(&roster.round(c(), at(15_500))), ["a", "b", "c"]);
        // ...until restart_wait from when the roster found it down.
        assert_eq!(names(&roster.round(c(), at(16_500))), ["a", "c"]);
    }

    #[test]
    fn a_stopping_member_that_answers_again_is_no_longer_counted_down() {
        let address = |i: u8| SocketAddr::from(([10, 0, 0, i], 9091));
        let departures = Arc::new(Departures::new(Duration::from_secs(15)));
        let mut roster = Roster::new(hello("a", "1"), Duration::from_secs(3), departures.clone());
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let b = (address(2), hello("b", "1"));
        roster.round(vec![b.clone()], at(0));
        departures.said("b", "1", t0);
        // One hello lost while b drains: found down...
        roster.round(vec![], at(500));
        assert!(departures.waited_for("b", at(500)));
        // ...and alive again at its next answer, under the same boot: its wait is
        // not spent, and a later loss counts afresh.
        roster.round(vec![b], at(1_000));
        assert!(!departures.waited_for("b", at(1_000)));
        roster.round(vec![], at(20_000));
        assert!(departures.waited_for("b", at(34_000)), "counted from 20 s, not 0.5 s");
    }

    #[test]
    fn members_are_one_list_whatever_the_order() {
        let member = |node: &str| Member {
            address: None,
            hello: Hello {
                node: node.into(),
                boot_id: "b".into(),
                disk_capacity: 1 << 40,
            },
        };
        let a = Members::new(vec![member("b"), member("a"), member("c")]);
        let b = Members::new(vec![member("c"), member("b"), member("a"), member("a")]);
        assert_eq!(a, b);
        assert_eq!(a.ranked(42).len(), 3);
        assert_eq!(a.ranked(42)[0].hello.node, b.ranked(42)[0].hello.node);
    }
}
