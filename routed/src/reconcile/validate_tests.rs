use std::collections::BTreeMap;

use super::*;
use crate::etcd::codec::LeaseValue;

fn cfg() -> NetConfig {
    NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#).unwrap()
}

fn lease(subnet: &str, ip: &str, created: i64) -> Decoded {
    Ok(Lease {
        subnet: subnet.parse().unwrap(),
        value: LeaseValue {
            public_ip: Some(ip.parse().unwrap()),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            node_name: format!("n-{}", ip.replace([':', '.'], "-")),
            ipv6_subnet: None,
            mtu: None,
        },
        created,
    })
}

fn view() -> LocalView {
    LocalView {
        addrs: ["198.19.0.1".parse().unwrap()].into(),
        connected: vec!["198.19.0.0/24".parse().unwrap()],
        ..LocalView::default()
    }
}

fn run(leases: Vec<(&str, Decoded)>) -> Validated {
    run_with(&cfg(), &view(), leases)
}

fn run_with(cfg: &NetConfig, view: &LocalView, leases: Vec<(&str, Decoded)>) -> Validated {
    let own = OwnLease {
        name: "198.18.1.0-24".into(),
        subnet: "198.18.1.0/24".parse().unwrap(),
        ipv6_subnet: None,
        lease_id: 1,
    };
    let map: BTreeMap<String, Decoded> =
        leases.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    validate(&map, cfg, Some(&own), view)
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
    let map: BTreeMap<String, Decoded> = leases.into_iter().collect();
    let start = std::time::Instant::now();
    let v = validate(&map, &cfg, None, &LocalView::default());
    assert_eq!(v.peers.len(), 5000);
    assert!(start.elapsed() < std::time::Duration::from_secs(1));
}

fn expect(v: &Validated, want: &[(&str, Reason)]) {
    assert!(v.peers.is_empty(), "{:?}", v.peers);
    let want: Vec<_> = want.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    assert_eq!(reasons(v), want, "{:#?}", v.rejected);
}

#[test]
fn leases_over_the_node_link_local_entries_or_foreign_routes_are_refused() {
    // A network config that covers the node LAN (198.19.0.0/24) as well as the pods.
    let cfg = NetConfig::parse(br#"{"Network":"198.16.0.0/12"}"#).unwrap();
    let mut view = view();
    view.connected.push("198.20.0.0/16".parse().unwrap());
    view.local.push("198.21.7.7/32".parse().unwrap());
    view.addrs.insert("198.22.0.9".parse().unwrap());
    for foreign in ["198.18.30.0/24", "198.19.0.0/24", "198.21.7.7/32"] {
        view.foreign.insert(foreign.parse().unwrap());
    }
    let v = run_with(
        &cfg,
        &view,
        vec![
            ("198.19.0.0-24", lease("198.19.0.0/24", "198.19.0.7", 1)),
            ("198.19.0.0-16", lease("198.19.0.0/16", "198.19.0.7", 2)),
            ("198.19.0.128-25", lease("198.19.0.128/25", "198.19.0.7", 3)),
            ("198.20.0.0-24", lease("198.20.0.0/24", "198.19.0.7", 4)),
            ("198.21.7.0-24", lease("198.21.7.0/24", "198.19.0.7", 5)),
            ("198.22.0.0-24", lease("198.22.0.0/24", "198.19.0.7", 6)),
            ("198.18.30.0-24", lease("198.18.30.0/24", "198.19.0.7", 7)),
        ],
    );
    expect(
        &v,
        &[
            ("198.18.30.0-24", Reason::ForeignRoute),
            ("198.19.0.0-16", Reason::Connected),
            ("198.19.0.0-24", Reason::Connected),
            ("198.19.0.128-25", Reason::Connected),
            ("198.20.0.0-24", Reason::Connected),
            ("198.21.7.0-24", Reason::Connected),
            ("198.22.0.0-24", Reason::Connected),
        ],
    );
    // A wider foreign route (a blackhole for the whole pod network, say) or a narrower one
    // inside a lease is no collision: the lease's route replaces neither.
    let mut view = self::view();
    view.foreign.insert("198.18.0.0/16".parse().unwrap());
    view.foreign.insert("198.18.31.128/25".parse().unwrap());
    let v = run_with(
        &self::cfg(),
        &view,
        vec![("198.18.31.0-24", lease("198.18.31.0/24", "198.19.0.7", 1))],
    );
    assert_eq!(v.peers.len(), 1, "{:?}", v.rejected);
}

#[test]
fn next_hops_must_be_node_addresses_outside_every_pod_network() {
    let v6 = |v4: &str, subnet: &str, hop: &str| {
        let mut l = lease(v4, "198.19.0.40", 1).unwrap();
        l.value.ipv6_subnet = Some(subnet.parse().unwrap());
        l.value.public_ipv6 = Some(hop.parse().unwrap());
        Ok(l)
    };
    let v = run(vec![
        // A pod on this very node, and pods elsewhere in both pod networks.
        ("198.18.11.0-24", lease("198.18.11.0/24", "198.18.1.5", 1)),
        ("198.18.12.0-24", lease("198.18.12.0/24", "198.18.200.9", 1)),
        ("198.18.13.0-24", lease("198.18.13.0/24", "198.19.0.255", 1)),
        ("198.18.14.0-24", lease("198.18.14.0/24", "198.19.0.0", 1)),
        ("198.18.15.0-24", lease("198.18.15.0/24", "240.0.0.1", 1)),
        ("198.18.16.0-24", lease("198.18.16.0/24", "169.254.0.1", 1)),
        (
            "198.18.57.0-24",
            v6("198.18.57.0/24", "fd18:18:0:9::/64", "fe80::1"),
        ),
        (
            "198.18.58.0-24",
            v6("198.18.58.0/24", "fd18:18:0:10::/64", "::ffff:198.19.0.9"),
        ),
        (
            "198.18.59.0-24",
            v6("198.18.59.0/24", "fd18:18:0:11::/64", "fd18:18:0:3::7"),
        ),
        (
            "198.18.60.0-24",
            v6("198.18.60.0/24", "fd18:18:0:12::/64", "ff02::2"),
        ),
        (
            "198.18.61.0-24",
            v6("198.18.61.0/24", "fd18:18:0:13::/64", "198.19.0.9"),
        ),
    ]);
    let all: Vec<(String, Reason)> = reasons(&v);
    assert_eq!(all.len(), 11, "{:#?}", v.rejected);
    assert!(
        all.iter().all(|(_, r)| *r == Reason::BadNextHop),
        "{:#?}",
        v.rejected
    );
    let pod = &v.rejected[0].detail;
    assert!(pod.contains("pod address"), "{pod}");
}

#[test]
fn other_backends_non_canonical_keys_and_bad_node_names_are_refused() {
    // `subnet` is what the key parses to; only its spelling is off in the first three.
    let rec = |subnet: &str, f: &dyn Fn(&mut Lease)| {
        let mut l = lease(subnet, "198.19.0.20", 1).unwrap();
        f(&mut l);
        Ok(l)
    };
    let v = run(vec![
        ("198.18.20.0-024", rec("198.18.20.0/24", &|_| {})),
        ("198.18.21.0-+24", rec("198.18.21.0/24", &|_| {})),
        ("fd18:18:0:0022::-64", rec("198.18.22.0/24", &|_| {})),
        (
            "198.18.23.0-24",
            rec("198.18.23.0/24", &|l| l.value.backend_type = "vxlan".into()),
        ),
        (
            "198.18.24.0-24",
            rec("198.18.24.0/24", &|l| l.value.backend_type = String::new()),
        ),
        (
            "198.18.25.0-24",
            rec("198.18.25.0/24", &|l| {
                l.value.node_name = "evil\n  node-0".into()
            }),
        ),
        (
            "198.18.26.0-24",
            rec("198.18.26.0/24", &|l| l.value.node_name = "\x1b[2J".into()),
        ),
        (
            "198.18.27.0-24",
            rec("198.18.27.0/24", &|l| {
                l.value.ipv6_subnet = Some("fd18:18:0:3::1/64".parse().unwrap())
            }),
        ),
        // Flannel's own leases carry no NodeName: still a peer.
        (
            "198.18.28.0-24",
            rec("198.18.28.0/24", &|l| l.value.node_name = String::new()),
        ),
    ]);
    let want = [
        ("198.18.20.0-024", Reason::Malformed),
        ("198.18.21.0-+24", Reason::Malformed),
        ("198.18.23.0-24", Reason::Backend),
        ("198.18.24.0-24", Reason::Backend),
        ("198.18.25.0-24", Reason::BadNodeName),
        ("198.18.26.0-24", Reason::BadNodeName),
        ("198.18.27.0-24", Reason::Malformed),
        ("fd18:18:0:0022::-64", Reason::Malformed),
    ];
    let want: Vec<_> = want.iter().map(|(k, r)| (k.to_string(), *r)).collect();
    assert_eq!(reasons(&v), want, "{:#?}", v.rejected);
    assert_eq!(v.peers.len(), 1);
    assert!(
        v.rejected
            .iter()
            .all(|r| !r.detail.contains('\x1b') && !r.detail.contains('\n'))
    );
}

fn dual(v4: &str, v6: &str, hop6: &str) -> Decoded {
    let mut l = lease(v4, "198.19.0.40", 1).unwrap();
    l.value.ipv6_subnet = Some(v6.parse().unwrap());
    l.value.public_ipv6 = Some(hop6.parse().unwrap());
    Ok(l)
}

/// A link-local PublicIPv6 is a next hop only through our uplink: accepted when the uplink
/// has an IPv6 link-local address of its own, else `bad-next-hop` saying why.
#[test]
fn a_link_local_next_hop_needs_an_ipv6_uplink() {
    let leases = || {
        vec![(
            "198.18.5.0-24",
            dual("198.18.5.0/24", "fd18:18:0:5::/64", "fe80::5"),
        )]
    };
    let without = run(leases());
    assert_eq!(
        reasons(&without),
        vec![("198.18.5.0-24".into(), Reason::BadNextHop)]
    );
    let detail = &without.rejected[0].detail;
    assert!(detail.contains("fe80::5 is link-local"), "{detail}");
    assert!(detail.contains("uplink has no IPv6 link-local"), "{detail}");
    let with = LocalView {
        uplink_link_local: true,
        ..view()
    };
    let v = run_with(&cfg(), &with, leases());
    assert!(v.rejected.is_empty(), "{:?}", v.rejected);
    let hops: Vec<String> = v.peers[0].routes.iter().map(|r| r.to_string()).collect();
    assert_eq!(
        hops,
        [
            "198.18.5.0/24 via 198.19.0.40",
            "fd18:18:0:5::/64 via fe80::5"
        ]
    );
    // Our own link-local address is still no peer's next hop.
    let mine = LocalView {
        addrs: ["198.19.0.1".parse().unwrap(), "fe80::5".parse().unwrap()].into(),
        ..with
    };
    let v = run_with(&cfg(), &mine, leases());
    assert_eq!(v.rejected[0].reason, Reason::BadNextHop);
    assert!(v.rejected[0].detail.contains("address of this node"));
}

#[test]
fn ipv6_only_leases_route_by_public_ipv6() {
    let cfg = NetConfig::parse(br#"{"IPv6Network":"fd18:18::/48"}"#).unwrap();
    let v6only = |subnet: &str, hop: Option<&str>| {
        let mut l = lease("198.18.9.0/24", "198.19.0.9", 1).unwrap();
        l.subnet = subnet.parse().unwrap();
        l.value.public_ip = None;
        l.value.public_ipv6 = hop.map(|h| h.parse().unwrap());
        Ok(l)
    };
    let view = LocalView {
        connected: vec!["fd19:19::/64".parse().unwrap()],
        ..LocalView::default()
    };
    let v = run_with(
        &cfg,
        &view,
        vec![
            (
                "fd18:18:0:2::-64",
                v6only("fd18:18:0:2::/64", Some("fd19:19::2")),
            ),
            ("fd18:18:0:3::-64", v6only("fd18:18:0:3::/64", None)),
            // An IPv4 lease in an IPv6-only cluster, and an IPv6 one outside the network.
            ("198.18.4.0-24", lease("198.18.4.0/24", "198.19.0.4", 1)),
            (
                "fd17:0:0:5::-64",
                v6only("fd17:0:0:5::/64", Some("fd19:19::5")),
            ),
        ],
    );
    assert_eq!(v.peers.len(), 1, "{:?}", v.rejected);
    assert_eq!(
        v.peers[0].routes[0].to_string(),
        "fd18:18:0:2::/64 via fd19:19::2"
    );
    assert_eq!(
        reasons(&v),
        vec![
            ("198.18.4.0-24".into(), Reason::OutsideNetwork),
            ("fd17:0:0:5::-64".into(), Reason::OutsideNetwork),
            ("fd18:18:0:3::-64".into(), Reason::BadNextHop),
        ]
    );
}

/// flannel's `<v4>-<len>&<v6>-<len>` key is canonical; another spelling of it is not.
#[test]
fn flannel_dual_stack_keys_are_canonical() {
    let name = "198.18.6.0-24&fd18:18:0:6::-64";
    let v = run(vec![
        (
            name,
            dual("198.18.6.0/24", "fd18:18:0:6::/64", "fd19:19::6"),
        ),
        (
            "198.18.7.0-24&fd18:18:0:7:0::-64",
            dual("198.18.7.0/24", "fd18:18:0:7::/64", "fd19:19::7"),
        ),
    ]);
    assert_eq!(v.peers.len(), 1);
    assert_eq!(
        (v.peers[0].key.as_str(), v.peers[0].routes.len()),
        (name, 2)
    );
    assert_eq!(v.rejected[0].reason, Reason::Malformed);
}
