//! Which node of the region owns a key: weighted rendezvous (highest random weight)
//! hashing over node names, weighted by disk tier size. Every node computes the same
//! owners from the same member list, with no coordination; removing a node moves
//! only the keys it owned; a restarted pod keeps its name, so it keeps owning what
//! its NVMe holds.

use std::cmp::Ordering;

use twox_hash::XxHash64;

/// One member of the region, as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The Kubernetes node name: the identity that survives a pod's restart.
    pub name: String,
    /// The node's disk tier, in bytes: its share of the keys.
    pub weight: u64,
    seed: u64,
}

impl Node {
    pub fn new(name: impl Into<String>, weight: u64) -> Self {
        let name = name.into();
        Self {
            seed: XxHash64::oneshot(0, name.as_bytes()),
            name,
            weight,
        }
    }

    /// This node's score for a key: `weight / -ln(u)`, with `u` uniform in (0, 1)
    /// from a stable hash of (node, key). The highest score owns the key, and the
    /// chance of holding it is the node's share of the total weight.
    fn score(&self, key: u64) -> f64 {
        let hash = XxHash64::oneshot(self.seed, &key.to_be_bytes());
        // The top 53 bits, centred in their interval: never 0, never 1.
        let unit = ((hash >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        self.weight.max(1) as f64 / -unit.ln()
    }
}

/// The nodes in the order a reader should try them for `key` (a cache key's stable
/// hash): the owner first, then the next in line should it fail.
pub fn ranked(nodes: &[Node], key: u64) -> Vec<&Node> {
    let mut scored: Vec<(f64, &Node)> = nodes.iter().map(|node| (node.score(key), node)).collect();
    scored.sort_by(|(a, x), (b, y)| {
        b.partial_cmp(a)
            .unwrap_or(Ordering::Equal)
            .then_with(|| x.name.cmp(&y.name))
    });
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The owner of `key`, if the region has any node.
pub fn owner(nodes: &[Node], key: u64) -> Option<&Node> {
    nodes
        .iter()
        .map(|node| (node.score(key), node))
        .max_by(|(a, x), (b, y)| {
            a.partial_cmp(b)
                .unwrap_or(Ordering::Equal)
                .then_with(|| y.name.cmp(&x.name))
        })
        .map(|(_, node)| node)
}

/// A fingerprint of a member list (names and weights, in any order): two nodes with
/// the same fingerprint place every key alike; a gauge of it shows split views.
pub fn fingerprint(nodes: &[Node]) -> u64 {
    let mut members: Vec<(&str, u64)> = nodes.iter().map(|n| (n.name.as_str(), n.weight)).collect();
    members.sort_unstable();
    let mut bytes = Vec::new();
    for (name, weight) in members {
        bytes.extend_from_slice(&(name.len() as u32).to_be_bytes());
        bytes.extend_from_slice(name.as_bytes());
        bytes.extend_from_slice(&weight.to_be_bytes());
    }
    XxHash64::oneshot(0, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn region(weights: &[u64]) -> Vec<Node> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Node::new(format!("gpu-node-{i:02}"), *w))
            .collect()
    }

    /// Keys spread like cache keys' stable hashes.
    fn keys(count: u64) -> impl Iterator<Item = u64> {
        (0..count).map(|i| XxHash64::oneshot(7, &i.to_be_bytes()))
    }

    /// Golden owners: if these change, a dependency upgrade (or an edit here) would
    /// move every chunk of every region to another node. Never edit them: add a
    /// version instead.
    #[test]
    fn owners_do_not_drift() {
        let nodes = region(&[4 << 40, 4 << 40, 8 << 40, 2 << 40, 4 << 40]);
        let owners: Vec<&str> = [0u64, 1, 0xdead_beef, u64::MAX, 0x23d8_dd30_47e5_4ec4]
            .iter()
            .map(|key| owner(&nodes, *key).unwrap().name.as_str())
            .collect();
        assert_eq!(
            owners,
            [
                "gpu-node-01",
                "gpu-node-02",
                "gpu-node-00",
                "gpu-node-02",
                "gpu-node-04"
            ]
        );
        assert_eq!(fingerprint(&nodes), 0xf5e4_0d26_9ec0_4830, "{:#x}", fingerprint(&nodes));
    }

    #[test]
    fn the_owner_heads_the_ranking_and_order_does_not_matter() {
        let nodes = region(&[1, 2, 3, 4, 5, 6]);
        let mut reversed = nodes.clone();
        reversed.reverse();
        for key in keys(2000) {
            let ranking = ranked(&nodes, key);
            assert_eq!(ranking.len(), nodes.len());
            assert_eq!(ranking[0], owner(&nodes, key).unwrap());
            assert_eq!(owner(&reversed, key), owner(&nodes, key), "every node agrees");
        }
        assert_eq!(fingerprint(&nodes), fingerprint(&reversed));
        assert!(owner(&[], 1).is_none());
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let nodes = region(&[1, 1, 1, 1, 1, 1, 1, 1]);
        let without: Vec<Node> = nodes.iter().filter(|n| n.name != "gpu-node-03").cloned().collect();
        let total = 40_000;
        let mut moved = 0;
        for key in keys(total) {
            let before = owner(&nodes, key).unwrap();
            let after = owner(&without, key).unwrap();
            if before != after {
                assert_eq!(before.name, "gpu-node-03", "a key moved between two surviving nodes");
                assert_eq!(after, ranked(&nodes, key)[1], "it goes to the next in line");
                moved += 1;
            }
        }
        let share = moved as f64 / total as f64;
        assert!((share - 1.0 / 8.0).abs() < 0.01, "{share}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn shares_follow_weights(weights in proptest::collection::vec(1u64..16, 2..7)) {
            let nodes: Vec<Node> = region(&weights.iter().map(|w| w << 40).collect::<Vec<_>>());
            let total = 60_000;
            let mut owned = vec![0u64; nodes.len()];
            for key in keys(total) {
                let owner = owner(&nodes, key).unwrap();
                owned[nodes.iter().position(|n| n == owner).unwrap()] += 1;
            }
            let sum: u64 = weights.iter().sum();
            for (i, weight) in weights.iter().enumerate() {
                let expected = *weight as f64 / sum as f64;
                let share = owned[i] as f64 / total as f64;
                // Within ±5 % of the node's expected share (and a floor for tiny shares).
                prop_assert!((share - expected).abs() <= (0.05 * expected).max(0.004),
                    "node {i}: weight {weight}/{sum}, share {share:.4}, expected {expected:.4}");
            }
        }
    }
}
