//! Our nftables table `inet hostgw`, present only with `--ip-masq`: masquerade of pod traffic
//! leaving the cluster. Applied in one `nft -f` transaction, and only when the rendered rules
//! differ from what is installed (the hash is kept in the table's comment), so restarts
//! don't churn.
//!
//! There is no forward chain. In nftables an `accept` is final only within its own base
//! chain: another table's forward chain with policy drop (iptables-nft's `FORWARD` as Docker
//! sets it, firewalld, ufw) drops the packet all the same, and a chain of accepts under
//! policy accept changes nothing. Earlier versions installed one; it cost 1-2 % of pod
//! throughput and did nothing, and `ensure` deletes the table it lived in when masquerade
//! is off.

use std::{collections::BTreeSet, net::IpAddr, process::Stdio};

use ipnetwork::IpNetwork;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::config::NetConfig;

pub const TABLE: &str = "hostgw";

/// nft answers in milliseconds; a hung one must not hold start-up or release forever.
const NFT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("run nft: {0}")]
    Spawn(#[from] std::io::Error),
    #[error("nft failed: {0}")]
    Failed(String),
}

/// How pod traffic leaving the cluster is masqueraded (`--ip-masq` and its options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Masq {
    pub enabled: bool,
    /// `masquerade random,fully-random` (`--ip-masq-random-fully`): source ports drawn at
    /// random, so many pods behind one node IP don't collide on the same mapping.
    pub random_fully: bool,
    /// Destinations never masqueraded beyond the cluster's own (`--no-masquerade-cidr`).
    pub except: Vec<IpNetwork>,
}

/// The nft sets of every node's own address (ours and the peers' PublicIPs): pod traffic
/// to a node is never masqueraded. Their elements change as leases come and go, so they
/// are not part of the table's hash; see [`set_nodes`].
const NODE_SETS: [(&str, &str, &str); 2] = [
    ("ip", "nodes4", "ipv4_addr"),
    ("ip6", "nodes6", "ipv6_addr"),
];

/// The table body, without the comment that carries its hash and without the node sets'
/// elements. Empty without masquerade: then there is no table at all.
pub fn render_body(cfg: &NetConfig, masq: &Masq) -> String {
    if !masq.enabled {
        return String::new();
    }
    // Per family the cluster has: an IPv6-only cluster gets `ip6` rules only.
    let nets: Vec<(&str, String)> = cfg
        .pools()
        .map(|p| (if p.v6() { "ip6" } else { "ip" }, p.network.to_string()))
        .collect();
    render_masq(&nets, masq)
}

/// Node sets, then `postrouting`: never pod to pod, never pod to a node, never to an
/// exception; everything else from a pod is masqueraded.
fn render_masq(nets: &[(&str, String)], masq: &Masq) -> String {
    let mut s = String::new();
    for (_, name, kind) in NODE_SETS {
        s += &format!("  set {name} {{\n    type {kind};\n  }}\n");
    }
    s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
    let how = if masq.random_fully {
        "masquerade random,fully-random"
    } else {
        "masquerade"
    };
    for (fam, n) in nets {
        let set = NODE_SETS.iter().find(|x| x.0 == *fam).map_or("", |x| x.1);
        s += &format!("    {fam} saddr {n} {fam} daddr {n} return\n");
        s += &format!("    {fam} saddr {n} {fam} daddr @{set} return\n");
        let except: Vec<String> = masq
            .except
            .iter()
            .filter(|c| c.is_ipv4() == (*fam == "ip"))
            .map(|c| c.to_string())
            .collect();
        if !except.is_empty() {
            let list = except.join(", ");
            s += &format!("    {fam} saddr {n} {fam} daddr {{ {list} }} return\n");
        }
        s += &format!("    {fam} saddr {n} {how}\n");
    }
    s += "  }\n";
    s
}

/// `flush` + `add element` of both node sets: one `nft -f` is one transaction, so a packet
/// sees the old set or the new one, never an empty one in between.
pub fn render_nodes(nodes: &BTreeSet<IpAddr>) -> String {
    let mut s = String::new();
    for (_, name, _) in NODE_SETS {
        let ips = of_set(nodes, name);
        s += &format!("flush set inet {TABLE} {name}\n");
        if !ips.is_empty() {
            s += &format!("add element inet {TABLE} {name} {{ {} }}\n", ips.join(", "));
        }
    }
    s
}

/// `add element` and `delete element` of the addresses that joined and left, in the set
/// of their family: one transaction. (A delete of an element that is not there fails the
/// whole transaction: the caller then writes the sets whole.)
pub fn render_node_changes(added: &BTreeSet<IpAddr>, removed: &BTreeSet<IpAddr>) -> String {
    let mut s = String::new();
    for (verb, ips) in [("add", added), ("delete", removed)] {
        for (_, name, _) in NODE_SETS {
            let these = of_set(ips, name);
            if !these.is_empty() {
                s += &format!(
                    "{verb} element inet {TABLE} {name} {{ {} }}\n",
                    these.join(", ")
                );
            }
        }
    }
    s
}

/// The addresses of `ips` that belong in node set `name` (its family), as text.
fn of_set(ips: &BTreeSet<IpAddr>, name: &str) -> Vec<String> {
    let v6 = name == "nodes6";
    ips.iter()
        .filter(|ip| ip.is_ipv6() == v6)
        .map(|ip| ip.to_string())
        .collect()
}

/// FNV-1a: stable across builds and versions, unlike `DefaultHasher`.
pub fn hash(s: &str) -> String {
    format!("{:016x}", hostgw_common::hash::fnv1a64(s.bytes()))
}

pub fn comment(body: &str) -> String {
    format!("hostgw {}", hash(body))
}

/// Create-then-delete makes the delete safe when the table doesn't exist yet; the whole
/// script is one transaction, so traffic never sees a missing table. The node sets are
/// filled in the same transaction.
pub fn render_script(cfg: &NetConfig, masq: &Masq, nodes: &BTreeSet<IpAddr>) -> String {
    let body = render_body(cfg, masq);
    let mut s = format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  comment \"{}\"\n{body}}}\n",
        comment(&body)
    );
    s += &render_nodes(nodes);
    s
}

async fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, NftError> {
    let mut child = Command::new("nft")
        .args(args)
        // Ended with us if the caller gives up (timeout, shutdown): no orphaned nft.
        .kill_on_drop(true)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(NFT_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| NftError::Failed(format!("nft did not finish within {NFT_TIMEOUT:?}")))??;
    if !out.status.success() {
        return Err(NftError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What [`ensure`] had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The table was as wanted (or, without masquerade, absent).
    None,
    /// The masquerade table was missing or differed and was (re)written.
    Installed,
    /// Masquerade is off and a table of ours stood (an earlier version's forward chain, or
    /// `--ip-masq` turned off): deleted.
    Removed,
}

/// Makes the table what `masq` asks for. `nodes` fills the node sets when the table is
/// (re)made; while it stands, [`set_nodes`] keeps them current. Without masquerade a node
/// without `nft` at all is fine: there is nothing to remove.
pub async fn ensure(
    cfg: &NetConfig,
    masq: &Masq,
    nodes: &BTreeSet<IpAddr>,
) -> Result<Change, NftError> {
    if !masq.enabled {
        return match nft(&["list", "table", "inet", TABLE], None).await {
            Ok(_) => remove().await.map(|()| Change::Removed),
            Err(NftError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(Change::None),
            Err(NftError::Failed(e)) if e.contains("No such file") => Ok(Change::None),
            Err(e) => Err(e),
        };
    }
    let want = comment(&render_body(cfg, masq));
    if let Ok(listing) = nft(&["list", "table", "inet", TABLE], None).await
        && listing.contains(&format!("comment \"{want}\""))
    {
        return Ok(Change::None);
    }
    nft(&["-f", "-"], Some(&render_script(cfg, masq, nodes))).await?;
    Ok(Change::Installed)
}

/// Replaces the node sets' elements in one transaction.
pub async fn set_nodes(nodes: &BTreeSet<IpAddr>) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(&render_nodes(nodes)))
        .await
        .map(|_| ())
}

/// Adds and deletes node set elements in one transaction (nothing to do: no `nft` run).
pub async fn change_nodes(
    added: &BTreeSet<IpAddr>,
    removed: &BTreeSet<IpAddr>,
) -> Result<(), NftError> {
    let script = render_node_changes(added, removed);
    if script.is_empty() {
        return Ok(());
    }
    nft(&["-f", "-"], Some(&script)).await.map(|_| ())
}

/// Deletes our table; absent (or no `nft` on the node, so no table of ours) is success.
pub async fn remove() -> Result<(), NftError> {
    match nft(&["delete", "table", "inet", TABLE], None).await {
        Err(NftError::Failed(e)) if e.contains("No such file") => Ok(()),
        Err(NftError::Spawn(e)) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_changes_add_and_delete_by_family_in_one_script() {
        let ips =
            |v: &[&str]| -> BTreeSet<IpAddr> { v.iter().map(|s| s.parse().unwrap()).collect() };
        let s = render_node_changes(
            &ips(&["198.19.0.2", "fd19:19::2", "198.19.0.3"]),
            &ips(&["198.19.0.9"]),
        );
        assert_eq!(
            s,
            "add element inet hostgw nodes4 { 198.19.0.2, 198.19.0.3 }\n\
             add element inet hostgw nodes6 { fd19:19::2 }\n\
             delete element inet hostgw nodes4 { 198.19.0.9 }\n"
        );
        assert_eq!(render_node_changes(&ips(&[]), &ips(&[])), "");
    }

    #[test]
    fn script_shape() {
        let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#)
            .unwrap();
        let on = Masq {
            enabled: true,
            ..Masq::default()
        };
        let none = BTreeSet::new();
        let s = render_script(&cfg, &on, &none);
        assert!(s.starts_with(
            "table inet hostgw\ndelete table inet hostgw\ntable inet hostgw {\n  comment \"hostgw "
        ));
        assert!(!s.contains("forward"), "no forward chain: {s}");
        assert!(s.contains("ip saddr 198.18.0.0/16 ip daddr 198.18.0.0/16 return"));
        assert!(s.contains("ip saddr 198.18.0.0/16 ip daddr @nodes4 return"));
        assert!(s.contains("ip6 saddr fd18:18::/48 ip6 daddr @nodes6 return"));
        assert!(s.contains("    ip saddr 198.18.0.0/16 masquerade\n"));
        let off = Masq::default();
        assert_eq!(render_body(&cfg, &off), "", "no table without masquerade");
        assert_ne!(
            comment(&render_body(&cfg, &on)),
            comment(&render_body(&cfg, &off))
        );
    }

    #[test]
    fn exceptions_random_fully_and_node_sets() {
        let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#)
            .unwrap();
        let m = Masq {
            enabled: true,
            random_fully: true,
            except: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
                "172.16.0.0/12".parse().unwrap(),
            ],
        };
        let body = render_body(&cfg, &m);
        assert!(
            body.contains("ip saddr 198.18.0.0/16 ip daddr { 10.0.0.0/8, 172.16.0.0/12 } return"),
            "{body}"
        );
        assert!(
            body.contains("ip6 saddr fd18:18::/48 ip6 daddr { 2001:db8::/32 } return"),
            "{body}"
        );
        assert!(
            body.contains("ip saddr 198.18.0.0/16 masquerade random,fully-random"),
            "{body}"
        );
        // Exceptions come before the masquerade they exempt from.
        assert!(body.find("{ 10.0.0.0/8").unwrap() < body.find("random,fully-random").unwrap());
        let nodes: BTreeSet<IpAddr> = ["198.19.0.11", "198.19.0.10", "fd19:19::a"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        // The node sets' content is not in the hash: a new peer never remakes the table.
        let script = render_script(&cfg, &m, &nodes);
        assert!(script.contains(&comment(&body)));
        assert_eq!(
            render_nodes(&nodes),
            "flush set inet hostgw nodes4\nadd element inet hostgw nodes4 { 198.19.0.10, 198.19.0.11 }\n\
             flush set inet hostgw nodes6\nadd element inet hostgw nodes6 { fd19:19::a }\n"
        );
        assert_eq!(
            render_nodes(&BTreeSet::new()),
            "flush set inet hostgw nodes4\nflush set inet hostgw nodes6\n"
        );
    }
}
