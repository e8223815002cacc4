use std::collections::{BTreeMap, HashSet};

use super::*;
use crate::etcd::codec::LeaseValue;

fn cfg() -> NetConfig {
    NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#).unwrap()
}

fn lease(subnet: &str, ip: &str, created: i64) -> Decoded {
    Ok(Lease {
        subnet: subnet.parse().unwrap(),
        value: LeaseValue {
            public_ip: ip.parse().unwrap(),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            node_name: format!("n-{ip}"),
            ipv6_subnet: None,
        },
        created,
    })
}

fn run(leases: Vec<(&str, Decoded)>) -> Validated {
    let cfg = cfg();
    let addrs: HashSet<IpAddr> = ["198.19.0.1".parse().unwrap()].into();
    let own = OwnLease {
        name: "198.18.1.0-24".into(),
        subnet: "198.18.1.0/24".parse().unwrap(),
        ipv6_subnet: None,
        lease_id: 1,
    };
    let map: BTreeMap<String, Decoded> =
        leases.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    validate(&map, &cfg, Some(&own), &addrs)
}

fn reasons(v: &Validated) -> Vec<(String, Reason)> {
    v.rejected
        .iter()
        .map(|r| (r.key.clone(), r.reason))
        .collect()
}

#[test]
fn good_peers_pass_and_own_key_is_skipped() {
    let v = run(vec![
        ("198.18.1.0-24", lease("198.18.1.0/24", "198.19.0.1", 1)),
        ("198.18.2.0-24", lease("198.18.2.0/24", "198.19.0.2", 2)),
        ("198.18.3.0-24", lease("198.18.3.0/24", "198.19.0.3", 3)),
    ]);
    assert!(v.rejected.is_empty());
    assert_eq!(v.peers.len(), 2);
    assert_eq!(
        v.peers[0].routes[0].to_string(),
        "198.18.2.0/24 via 198.19.0.2"
    );
}

#[test]
fn each_kind_of_bad_lease_is_rejected() {
    let v = run(vec![
        ("garbage", Err("value is not a lease".into())),
        ("198.17.0.0-24", lease("198.17.0.0/24", "198.19.0.4", 1)),
        ("198.18.0.0-16", lease("198.18.0.0/16", "198.19.0.4", 1)),
        ("198.18.1.128-25", lease("198.18.1.128/25", "198.19.0.5", 1)),
        ("198.18.6.0-24", lease("198.18.6.0/24", "198.19.0.1", 1)),
        ("198.18.7.0-24", lease("198.18.7.0/24", "0.0.0.0", 1)),
        ("198.18.8.0-24", lease("198.18.8.0/24", "127.0.0.1", 1)),
        ("198.18.9.0-24", lease("198.18.9.0/24", "224.0.0.5", 1)),
        ("198.18.10.0-24", lease("198.18.10.0/24", "fd19:19::1", 1)),
    ]);
    assert!(v.peers.is_empty(), "{:?}", v.peers);
    let r = reasons(&v);
    let expect = [
        ("198.17.0.0-24", Reason::OutsideNetwork),
        ("198.18.0.0-16", Reason::OutsideNetwork),
        ("198.18.1.128-25", Reason::OwnSubnet),
        ("198.18.10.0-24", Reason::BadNextHop),
        ("198.18.6.0-24", Reason::BadNextHop),
        ("198.18.7.0-24", Reason::BadNextHop),
        ("198.18.8.0-24", Reason::BadNextHop),
        ("198.18.9.0-24", Reason::BadNextHop),
        ("garbage", Reason::Malformed),
    ];
    assert_eq!(r, expect.map(|(k, r)| (k.to_owned(), r)).to_vec());
}

#[test]
fn older_of_two_overlapping_leases_wins() {
    let v = run(vec![
        ("198.18.4.0-22", lease("198.18.4.0/22", "198.19.0.9", 9)),
        ("198.18.5.0-24", lease("198.18.5.0/24", "198.19.0.5", 5)),
        ("198.18.6.0-24", lease("198.18.6.0/24", "198.19.0.6", 6)),
        ("198.18.8.0-24", lease("198.18.8.0/24", "198.19.0.8", 10)),
    ]);
    let keys: Vec<_> = v.peers.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["198.18.5.0-24", "198.18.6.0-24", "198.18.8.0-24"]);
    assert_eq!(
        reasons(&v),
        vec![("198.18.4.0-22".to_owned(), Reason::Overlap)]
    );
}

#[test]
fn dual_stack_peer_gets_two_routes() {
    let mut l = lease("198.18.2.0/24", "198.19.0.2", 1).unwrap();
    l.value.ipv6_subnet = Some("fd18:18:0:2::/64".parse().unwrap());
    l.value.public_ipv6 = Some("fd19:19::2".parse().unwrap());
    let mut no_v6_hop = l.clone();
    no_v6_hop.subnet = "198.18.3.0/24".parse().unwrap();
    no_v6_hop.value.ipv6_subnet = Some("fd18:18:0:3::/64".parse().unwrap());
    no_v6_hop.value.public_ipv6 = None;
    let v = run(vec![
        ("198.18.2.0-24", Ok(l)),
        ("198.18.3.0-24", Ok(no_v6_hop)),
    ]);
    assert_eq!(v.peers[0].routes.len(), 2);
    assert_eq!(
        v.peers[0].routes[1].to_string(),
        "fd18:18:0:2::/64 via fd19:19::2"
    );
    assert_eq!(
        reasons(&v),
        vec![("198.18.3.0-24".to_owned(), Reason::BadNextHop)]
    );
}

#[test]
fn five_thousand_leases_validate_quickly() {
    let leases: Vec<(String, Decoded)> = (0..5000u32)
        .map(|i| {
            let net = format!("198.18.{}.{}/29", i / 32, (i % 32) * 8);
            let key = net.replace('/', "-");
            (
                key,
                lease(
                    &net,
                    &format!("198.19.{}.{}", 1 + i / 250, 1 + i % 250),
                    i as i64,
                ),
            )
        })
        .collect();
    let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16","SubnetLen":29}"#).unwrap();
    let addrs = HashSet::new();
    let map: BTreeMap<String, Decoded> = leases.into_iter().collect();
    let start = std::time::Instant::now();
    let v = validate(&map, &cfg, None, &addrs);
    assert_eq!(v.peers.len(), 5000);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}
