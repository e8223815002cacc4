//! Choosing a free subnet for this node (pure; the claim itself is an etcd transaction).

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use rand::{Rng, RngExt};

use crate::{config::Pool, net};

/// Subnets already leased in one family, merged into disjoint ranges start → end.
#[derive(Debug, Default)]
pub struct Taken(BTreeMap<u128, u128>);

impl Taken {
    pub fn new<'a>(pool: &Pool, subnets: impl IntoIterator<Item = &'a IpNetwork>) -> Taken {
        let mut ranges: Vec<(u128, u128)> = subnets
            .into_iter()
            .map(net::range)
            .filter(|(v6, _, _)| *v6 == pool.v6())
            .map(|(_, s, e)| (s, e))
            .collect();
        ranges.sort_unstable();
        let mut t = BTreeMap::new();
        let mut cur: Option<(u128, u128)> = None;
        for (s, e) in ranges {
            cur = match cur {
                Some((cs, ce)) if s <= ce.saturating_add(1) => Some((cs, ce.max(e))),
                Some((cs, ce)) => {
                    t.insert(cs, ce);
                    Some((s, e))
                }
                None => Some((s, e)),
            };
        }
        if let Some((cs, ce)) = cur {
            t.insert(cs, ce);
        }
        Taken(t)
    }

    pub fn is_free(&self, n: &IpNetwork) -> bool {
        let (_, start, end) = net::range(n);
        // Ranges are disjoint, so only the last one starting at or before our end can clash.
        self.0
            .range(..=end)
            .next_back()
            .is_none_or(|(_, &e)| e < start)
    }
}

/// Whether `n` is one of the pool's subnets (right length, aligned, between min and max).
pub fn in_pool(pool: &Pool, n: &IpNetwork) -> bool {
    let (v6, start, _) = net::range(n);
    v6 == pool.v6()
        && n.prefix() == pool.subnet_len
        && net::is_canonical(n)
        && start >= pool.min
        && start <= pool.max
        && (start - pool.min).is_multiple_of(pool.step())
}

/// A free subnet: `prefer` if it is in the pool and free, otherwise a random free one
/// (random so that nodes starting together rarely race for the same key), otherwise the
/// first free one. `None` when the pool is exhausted.
pub fn choose(
    pool: &Pool,
    taken: &Taken,
    prefer: Option<IpNetwork>,
    rng: &mut impl Rng,
) -> Option<IpNetwork> {
    if let Some(p) = prefer.filter(|p| in_pool(pool, p) && taken.is_free(p)) {
        return Some(p);
    }
    let count = pool.count();
    for _ in 0..64 {
        let n = pool.nth(rng.random_range(0..count))?;
        if taken.is_free(&n) {
            return Some(n);
        }
    }
    (0..count)
        .filter_map(|i| pool.nth(i))
        .find(|n| taken.is_free(n))
}

#[cfg(test)]
mod tests {
    use rand::{SeedableRng, rngs::StdRng};

    use super::*;
    use crate::config::NetConfig;

    fn pool(json: &str) -> Pool {
        NetConfig::parse(json.as_bytes()).unwrap().v4.unwrap()
    }

    fn nets(v: &[&str]) -> Vec<IpNetwork> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn respects_min_max_and_skips_taken() {
        let p = pool(
            r#"{"Network":"198.18.0.0/16","SubnetMin":"198.18.10.0/24","SubnetMax":"198.18.12.0/24"}"#,
        );
        let taken = nets(&["198.18.10.0/24", "198.18.12.0/24"]);
        let t = Taken::new(&p, &taken);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..20 {
            assert_eq!(
                choose(&p, &t, None, &mut rng).unwrap().to_string(),
                "198.18.11.0/24"
            );
        }
        let all = nets(&["198.18.10.0/24", "198.18.11.0/24", "198.18.12.0/24"]);
        assert_eq!(choose(&p, &Taken::new(&p, &all), None, &mut rng), None);
    }

    #[test]
    fn prefers_the_previous_subnet_when_free() {
        let p = pool(r#"{"Network":"198.18.0.0/16"}"#);
        let mut rng = StdRng::seed_from_u64(2);
        let want: IpNetwork = "198.18.77.0/24".parse().unwrap();
        assert_eq!(
            choose(&p, &Taken::default(), Some(want), &mut rng),
            Some(want)
        );
        let t = Taken::new(&p, &[want]);
        assert_ne!(choose(&p, &t, Some(want), &mut rng), Some(want));
        // Not a pool member (wrong length, outside, the reserved first subnet): ignored.
        for bad in ["198.18.77.0/25", "198.20.1.0/24", "198.18.0.0/24"] {
            let c = choose(&p, &Taken::default(), Some(bad.parse().unwrap()), &mut rng).unwrap();
            assert!(in_pool(&p, &c) && c.to_string() != bad);
        }
    }

    #[test]
    fn a_wide_foreign_lease_blocks_what_it_covers() {
        let p = pool(
            r#"{"Network":"198.18.0.0/16","SubnetMin":"198.18.4.0/24","SubnetMax":"198.18.8.0/24"}"#,
        );
        let t = Taken::new(&p, &nets(&["198.18.0.0/21", "198.18.5.0/24"]));
        let mut rng = StdRng::seed_from_u64(3);
        assert_eq!(
            choose(&p, &t, None, &mut rng).unwrap().to_string(),
            "198.18.8.0/24"
        );
    }

    #[test]
    fn retry_after_a_lost_race_picks_another() {
        // The daemon re-lists after a lost transaction, so the winner's subnet is taken.
        let p = pool(
            r#"{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.0/24","SubnetMax":"198.18.2.0/24"}"#,
        );
        let mut rng = StdRng::seed_from_u64(4);
        let first = choose(&p, &Taken::default(), None, &mut rng).unwrap();
        let second = choose(&p, &Taken::new(&p, &[first]), Some(first), &mut rng).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn v6_pool() {
        let c = NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#)
            .unwrap();
        let p = c.v6.unwrap();
        let mut rng = StdRng::seed_from_u64(5);
        let n = choose(&p, &Taken::default(), None, &mut rng).unwrap();
        assert!(in_pool(&p, &n) && n.prefix() == 64, "{n}");
    }
}
