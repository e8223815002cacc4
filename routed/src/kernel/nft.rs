//! Our nftables table `inet hostgw`: forwarding accepted for the cluster network and, with
//! `--ip-masq`, masquerade of pod traffic leaving it. Applied in one `nft -f` transaction,
//! and only when the rendered rules differ from what is installed (the hash is kept in the
//! table's comment), so restarts don't churn.

use std::process::Stdio;

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

/// The table body, without the comment that carries its hash.
pub fn render_body(cfg: &NetConfig, masq: bool) -> String {
    // Per family the cluster has: an IPv6-only cluster gets `ip6` rules only.
    let nets: Vec<(&str, String)> = cfg
        .pools()
        .map(|p| (if p.v6() { "ip6" } else { "ip" }, p.network.to_string()))
        .collect();
    let mut s = String::from(
        "  chain forward {\n    type filter hook forward priority filter; policy accept;\n",
    );
    for (fam, n) in &nets {
        s += &format!("    {fam} saddr {n} accept\n    {fam} daddr {n} accept\n");
    }
    s += "  }\n";
    if masq {
        s += "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n";
        for (fam, n) in &nets {
            // Never pod-to-pod: only traffic whose destination is outside the cluster network.
            s += &format!("    {fam} saddr {n} {fam} daddr != {n} masquerade\n");
        }
        s += "  }\n";
    }
    s
}

/// FNV-1a: stable across builds and versions, unlike `DefaultHasher`.
pub fn hash(s: &str) -> String {
    format!("{:016x}", hostgw_common::hash::fnv1a64(s.bytes()))
}

pub fn comment(body: &str) -> String {
    format!("hostgw {}", hash(body))
}

/// Create-then-delete makes the delete safe when the table doesn't exist yet; the whole
/// script is one transaction, so traffic never sees a missing table.
pub fn render_script(cfg: &NetConfig, masq: bool) -> String {
    let body = render_body(cfg, masq);
    format!(
        "table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  comment \"{}\"\n{body}}}\n",
        comment(&body)
    )
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

/// Returns whether anything had to change.
pub async fn ensure(cfg: &NetConfig, masq: bool) -> Result<bool, NftError> {
    let want = comment(&render_body(cfg, masq));
    if let Ok(listing) = nft(&["list", "table", "inet", TABLE], None).await
        && listing.contains(&format!("comment \"{want}\""))
    {
        return Ok(false);
    }
    nft(&["-f", "-"], Some(&render_script(cfg, masq))).await?;
    Ok(true)
}

pub async fn remove() -> Result<(), NftError> {
    match nft(&["delete", "table", "inet", TABLE], None).await {
        Err(NftError::Failed(e)) if e.contains("No such file") => Ok(()),
        r => r.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_shape() {
        let cfg = NetConfig::parse(br#"{"Network":"198.18.0.0/16","IPv6Network":"fd18:18::/48"}"#)
            .unwrap();
        let s = render_script(&cfg, true);
        assert!(s.starts_with(
            "table inet hostgw\ndelete table inet hostgw\ntable inet hostgw {\n  comment \"hostgw "
        ));
        assert!(s.contains("ip saddr 198.18.0.0/16 accept"));
        assert!(s.contains("ip6 daddr fd18:18::/48 accept"));
        assert!(s.contains("ip saddr 198.18.0.0/16 ip daddr != 198.18.0.0/16 masquerade"));
        assert!(!render_script(&cfg, false).contains("masquerade"));
        assert_ne!(
            comment(&render_body(&cfg, true)),
            comment(&render_body(&cfg, false))
        );
    }
}
