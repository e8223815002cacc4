//! Model check: random ADD/DEL/GC sequences against a map of ip -> attachment. The
//! store must agree with the model after every step, including which address
//! round-robin picks and which error a refused ADD gives.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use common::*;
use hostgw_ipam::{Attachment, Error, Locked, Pool};
use proptest::prelude::*;
use tempfile::TempDir;

const IDS: [&str; 7] = ["a", "b", "c", "d", "e", "f", "g"];
const IFNAMES: [&str; 2] = ["eth0", "eth1"];

#[derive(Clone, Debug)]
enum Op {
    /// Attachment index, optional requested last octet of a v4 address in 198.18.3.0/29.
    Add(usize, Option<u8>),
    Del(usize),
    /// Bit i set: attachment i is still valid.
    Gc(u16),
}

fn attachment(i: usize) -> Attachment {
    att(IDS[i / 2], IFNAMES[i % 2])
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        5 => (0..14usize, prop::option::weighted(0.2, 0u8..8)).prop_map(|(a, r)| Op::Add(a, r)),
        3 => (0..14usize).prop_map(Op::Del),
        1 => any::<u16>().prop_map(Op::Gc),
    ];
    prop::collection::vec(op, 1..40)
}

struct Model {
    pools: [Pool; 2],
    held: BTreeMap<IpAddr, Attachment>,
    last: [Option<IpAddr>; 2],
}

// === impl Model ===

impl Model {
    /// Round-robin as host-local defines it: the first free usable address after the
    /// marker, wrapping once.
    fn next_free(&self, index: usize) -> Option<IpAddr> {
        let pool = &self.pools[index];
        let usable: Vec<IpAddr> = all_addresses(pool)
            .filter(|ip| pool.contains_usable(*ip))
            .collect();
        let start = match self.last[index] {
            Some(last) => usable
                .iter()
                .position(|ip| *ip == last)
                .map_or(0, |p| p + 1),
            None => 0,
        };
        (0..usable.len())
            .map(|k| usable[(start + k) % usable.len()])
            .find(|ip| !self.held.contains_key(ip))
    }

    fn expect_add(
        &self,
        who: &Attachment,
        requested: Option<IpAddr>,
    ) -> Result<Vec<IpAddr>, String> {
        if let Some(ip) = requested {
            if ip == self.pools[0].gateway {
                return Err("gateway".into());
            }
            if !self.pools[0].contains_usable(ip) {
                return Err("not in range".into());
            }
        }
        if self.held.values().any(|h| h == who) {
            return Err("duplicate".into());
        }
        let first = match requested {
            Some(ip) if self.held.contains_key(&ip) => return Err("unavailable".into()),
            Some(ip) => ip,
            None => self.next_free(0).ok_or("exhausted 0")?,
        };
        let second = self.next_free(1).ok_or("exhausted 1")?;
        Ok(vec![first, second])
    }

    fn release(&mut self, keep: impl Fn(&Attachment) -> bool) -> BTreeSet<(IpAddr, Attachment)> {
        let gone: BTreeSet<(IpAddr, Attachment)> = self
            .held
            .iter()
            .filter(|(_, a)| !keep(a))
            .map(|(ip, a)| (*ip, a.clone()))
            .collect();
        self.held.retain(|_, a| keep(a));
        gone
    }
}

fn all_addresses(pool: &Pool) -> impl Iterator<Item = IpAddr> + '_ {
    (0u8..=255)
        .map(|n| match pool.subnet.network() {
            IpAddr::V4(v4) => IpAddr::from(Ipv4Addr::from(u32::from(v4) + u32::from(n))),
            IpAddr::V6(v6) => IpAddr::from(Ipv6Addr::from(u128::from(v6) + u128::from(n))),
        })
        .take_while(|ip| pool.subnet.contains(*ip))
}

fn error_kind(err: &Error) -> &'static str {
    match err {
        Error::RequestedIsGateway { .. } => "gateway",
        Error::RequestedNotInRange { .. } => "not in range",
        Error::Duplicate { .. } => "duplicate",
        Error::RequestedUnavailable { .. } => "unavailable",
        Error::Exhausted { pool: 0, .. } => "exhausted 0",
        Error::Exhausted { pool: 1, .. } => "exhausted 1",
        _ => "unexpected",
    }
}

fn step(locked: &mut Locked<'_>, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match *op {
        Op::Add(i, octet) => {
            let who = attachment(i);
            let requested = octet.map(|n| ip(&format!("198.18.3.{n}")));
            let expected = model.expect_add(&who, requested);
            let got = locked.allocate(&model.pools, &who, requested.as_slice());
            let got = got.map_err(|e| error_kind(&e).to_owned());
            prop_assert_eq!(&got, &expected);
            if let Ok(ips) = got {
                for (index, ip) in ips.into_iter().enumerate() {
                    model.held.insert(ip, who.clone());
                    model.last[index] = Some(ip);
                }
            }
        }
        Op::Del(i) => {
            let who = attachment(i);
            let expected = model.release(|a| *a != who);
            let got = locked
                .release(&who)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let got: BTreeSet<(IpAddr, Attachment)> =
                got.into_iter().map(|ip| (ip, who.clone())).collect();
            prop_assert_eq!(got, expected);
        }
        Op::Gc(mask) => {
            let valid: Vec<Attachment> = (0..14)
                .filter(|i| mask & (1 << i) != 0)
                .map(attachment)
                .collect();
            let expected = model.release(|a| valid.contains(a));
            let got = locked
                .gc(&valid)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
        }
    }
    Ok(())
}

proptest! {
    // Each case costs a temp dir and a few dozen small file operations per step;
    // 64 cases keep this binary well under a second.
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in ops()) {
        let tmp = TempDir::new().unwrap();
        let store = open(tmp.path());
        let mut model = Model {
            pools: [pool("198.18.3.0/29"), pool("fd18:18:0:3::/125")],
            held: BTreeMap::new(),
            last: [None, None],
        };
        for op in &ops {
            // A fresh lock per step, as each plugin invocation takes its own.
            let mut locked = store.lock(WAIT).unwrap();
            step(&mut locked, &mut model, op)?;
            let on_disk: BTreeMap<IpAddr, Attachment> = locked.list().unwrap().into_iter().collect();
            prop_assert_eq!(&on_disk, &model.held);
            for pool in &model.pools {
                let holders: Vec<&Attachment> =
                    on_disk.iter().filter(|(ip, _)| pool.subnet.contains(**ip)).map(|(_, a)| a).collect();
                let distinct: BTreeSet<&&Attachment> = holders.iter().collect();
                prop_assert_eq!(distinct.len(), holders.len(), "an attachment holds two IPs in one pool");
            }
        }
    }
}
