//! Claims per address family against the in-memory etcd: IPv6-only keys, flannel's
//! dual-stack key form, and flannel's own records next to ours.

use super::{
    Keys,
    claim::{self, Claim},
    codec,
    fake::FakeStore,
};
use crate::{
    config::NetConfig,
    me::{Me, OwnLease},
};

const P: &str = "/p/subnets/";

fn me(ip: Option<&str>, ip6: Option<&str>) -> Me {
    Me {
        node: "node-a".into(),
        public_ip: ip.map(|s| s.parse().unwrap()),
        public_ipv6: ip6.map(|s| s.parse().unwrap()),
        last: None,
        mtu: None,
    }
}

async fn acquire(s: &FakeStore, cfg: &str, me: &Me) -> OwnLease {
    let (k, c) = (Keys::new("/p"), NetConfig::parse(cfg.as_bytes()).unwrap());
    let me = me.clone().for_config(&c);
    let claim = Claim {
        keys: &k,
        cfg: &c,
        me: &me,
        ttl: 60,
        prefer: None,
    };
    claim::acquire(s, &claim).await.unwrap()
}

fn stored(s: &FakeStore, name: &str) -> serde_json::Value {
    let kv = s.value(&format!("{P}{name}")).expect("the claimed key");
    serde_json::from_slice(&kv.value).unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_ipv6_only_node_claims_an_ipv6_key_without_public_ip() {
    let s = FakeStore::new();
    // A host with an IPv4 address too: the cluster routes IPv6 only, so none is written.
    let own = acquire(
        &s,
        r#"{"IPv6Network":"fd18:18::/48","IPv6SubnetLen":64}"#,
        &me(Some("198.19.0.10"), Some("fd19:19::10")),
    )
    .await;
    assert!(own.subnet.is_ipv6() && own.subnet.prefix() == 64, "{own:?}");
    assert_eq!(own.ipv6_subnet, None);
    assert_eq!(own.name, codec::key_name(&own.subnet));
    let v = stored(&s, &own.name);
    assert_eq!(v["PublicIPv6"], "fd19:19::10", "{v}");
    assert!(v.get("PublicIP").is_none(), "{v}");
    assert!(v.get("IPv6Subnet").is_none(), "{v}");
    // Restarted, it adopts that key.
    let again = acquire(
        &s,
        r#"{"IPv6Network":"fd18:18::/48","IPv6SubnetLen":64}"#,
        &me(None, Some("fd19:19::10")),
    )
    .await;
    assert_eq!(again, own);
}

#[tokio::test(start_paused = true)]
async fn a_dual_stack_claim_uses_flannels_key_and_skips_flannels_subnets() {
    let s = FakeStore::new();
    let cfg = r#"{"Network":"198.18.0.0/16","SubnetMin":"198.18.1.0/24","SubnetMax":"198.18.2.0/24",
        "IPv6Network":"fd18:18::/48","IPv6SubnetMin":"fd18:18:0:1::/64","IPv6SubnetMax":"fd18:18:0:2::/64"}"#;
    // A flannel node holds the first subnet of each family, as flannel writes it.
    let l = s.grant_lease();
    s.put(
        &format!("{P}198.18.1.0-24&fd18:18:0:1::-64"),
        r#"{"PublicIP":"198.19.0.21","PublicIPv6":"fd19:19::21","BackendType":"host-gw"}"#,
        l,
    );
    let own = acquire(&s, cfg, &me(Some("198.19.0.10"), Some("fd19:19::10"))).await;
    assert_eq!(own.subnet.to_string(), "198.18.2.0/24");
    assert_eq!(own.ipv6_subnet.unwrap().to_string(), "fd18:18:0:2::/64");
    assert_eq!(own.name, "198.18.2.0-24&fd18:18:0:2::-64");
    let v = stored(&s, &own.name);
    assert_eq!(
        (&v["PublicIP"], &v["PublicIPv6"]),
        (&"198.19.0.10".into(), &"fd19:19::10".into())
    );
}

/// Migrating a flannel node in place: its subnet file names flannel's subnets, so the
/// daemon adopts flannel's nameless key under its own name and adds its NodeName.
#[tokio::test(start_paused = true)]
async fn a_flannel_key_named_by_the_subnet_file_is_adopted_in_place() {
    let s = FakeStore::new();
    let name = "198.18.9.0-24&fd18:18:0:9::-64";
    let l = s.grant_lease();
    s.put(
        &format!("{P}{name}"),
        r#"{"PublicIP":"198.19.0.10","PublicIPv6":"fd19:19::10","BackendType":"host-gw"}"#,
        l,
    );
    let mut m = me(Some("198.19.0.10"), Some("fd19:19::10"));
    m.last = Some((
        "198.18.9.0/24".parse().unwrap(),
        Some("fd18:18:0:9::/64".parse().unwrap()),
    ));
    let k = Keys::new("/p");
    let c =
        NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#).unwrap();
    let claim = Claim {
        keys: &k,
        cfg: &c,
        me: &m,
        ttl: 60,
        prefer: m.last,
    };
    let own = claim::acquire(&s, &claim).await.unwrap();
    assert_eq!(own.name, name);
    assert_eq!(own.ipv6_subnet.unwrap().to_string(), "fd18:18:0:9::/64");
    let v = stored(&s, name);
    assert_eq!(v["NodeName"], "node-a", "{v}");
    assert_eq!(s.state().kvs.len(), 1, "no second key");
}
