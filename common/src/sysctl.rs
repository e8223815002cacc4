//! Sysctls in the network namespace this process runs in.

use std::io;

/// Sets `/proc/sys/<key>` only if it differs. Writing `ip_forward` resets per-device
/// settings, and in the DaemonSet /proc/sys is read-only while an init container has
/// already set it, so a value that is already right is left alone.
pub fn ensure(key: &str, value: &str) -> io::Result<()> {
    let path = format!("/proc/sys/{key}");
    match std::fs::read_to_string(&path) {
        Ok(v) if v.trim() == value => Ok(()),
        _ => std::fs::write(&path, value)
            .map_err(|e| io::Error::new(e.kind(), format!("write {path}: {e}"))),
    }
}

/// IP forwarding on for the families in use.
pub fn ensure_forwarding(v4: bool, v6: bool) -> io::Result<()> {
    if v4 {
        ensure("net/ipv4/ip_forward", "1")?;
    }
    if v6 {
        ensure("net/ipv6/conf/all/forwarding", "1")?;
    }
    Ok(())
}
