//! Host veth names and aliases. The name is a pure function of the attachment, so DEL and
//! GC find the link without the pod's namespace (which may be gone); the alias
//! `hostgw/<network>/<containerID>/<ifname>` marks the link as ours, so teardown never
//! deletes a foreign link that happens to hold the name, and the daemon can ignore pod
//! plumbing in its netlink events.

use crate::hash::fnv1a64;

/// Every host veth the plugin creates starts with this.
pub const HOST_VETH_PREFIX: &str = "hgw";

/// `hgw` + 12 hex digits (15 bytes, the kernel's limit). 48 bits of FNV-1a make a clash
/// among one node's pods vanishingly rare, and a clash is an ADD error, never a reuse.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let bytes = network
        .bytes()
        .chain([0])
        .chain(container_id.bytes())
        .chain([0])
        .chain(ifname.bytes());
    format!("{HOST_VETH_PREFIX}{:012x}", fnv1a64(bytes) >> 16)
}

/// Whether a link name has the shape of our host veths.
pub fn is_host_veth_name(name: &str) -> bool {
    name.strip_prefix(HOST_VETH_PREFIX)
        .is_some_and(|h| h.len() == 12 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub fn alias_prefix(network: &str) -> String {
    format!("hostgw/{network}/")
}

pub fn alias(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{}{container_id}/{ifname}", alias_prefix(network))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_short() {
        let a = host_veth_name("podnet", "c1", "eth0");
        assert_eq!(a, host_veth_name("podnet", "c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(is_host_veth_name(&a));
        assert_ne!(a, host_veth_name("podnet", "c1", "eth1"));
        assert_ne!(a, host_veth_name("podnet", "c2", "eth0"));
        assert_ne!(a, host_veth_name("other", "c1", "eth0"));
        // Pinned: a change here would orphan every running pod's veth on upgrade.
        assert_eq!(a, "hgw5f27bec41cf4");
        assert!(!is_host_veth_name("hgw0") && !is_host_veth_name("eth0"));
        assert_eq!(alias("podnet", "c1", "eth0"), "hostgw/podnet/c1/eth0");
        assert!(alias("podnet", "c1", "eth0").starts_with(&alias_prefix("podnet")));
    }
}
