//! What this kernel and this process can do for the fast path, and why not: the daemon keeps
//! plain routes unless every check passes, and reports the first one that failed.

use std::{fmt, fs, path::Path};

use libbpf_rs::{ObjectBuilder, btf::types::Func};
use nix::sys::statfs::FsType;

use crate::sys;

/// bpffs's `statfs` f_type (include/uapi/linux/magic.h).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    /// CAP_BPF, CAP_PERFMON (or CAP_SYS_ADMIN for both) and CAP_NET_ADMIN in the effective set.
    Privilege,
    /// The kernel's BTF, for CO-RE and kfunc resolution.
    Btf,
    /// bpf_skb_ct_lookup / bpf_ct_release, for the NAT check.
    ConntrackKfuncs,
    /// The programs pass the verifier on this kernel.
    Load,
    /// tcx links (Linux 6.6).
    Tcx,
    /// A bpffs at the pin directory, so links survive a restart.
    Bpffs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub feature: Feature,
    /// Err: what is missing, with the kernel's answer.
    pub result: Result<(), String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub checks: Vec<Check>,
}

impl Probe {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.result.is_ok())
    }

    /// The first failed check: the one reason to log and export.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks.iter().find(|c| c.result.is_err())
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            match &c.result {
                Ok(()) => writeln!(f, "{:?}: ok", c.feature)?,
                Err(why) => writeln!(f, "{:?}: no: {why}", c.feature)?,
            }
        }
        Ok(())
    }
}

/// Runs every check; nothing is attached and nothing is left behind (the load check loads the
/// programs without pinning, and they go when it returns).
pub fn probe(pin_dir: &Path) -> Probe {
    let checks = [
        (Feature::Privilege, privilege(&status_caps())),
        (Feature::Btf, btf()),
        (Feature::ConntrackKfuncs, kfuncs()),
        (Feature::Load, load()),
        (Feature::Tcx, tcx()),
        (Feature::Bpffs, on_bpffs(pin_dir)),
    ];
    Probe {
        checks: checks
            .into_iter()
            .map(|(feature, result)| Check { feature, result })
            .collect(),
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn status_caps() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Pure, for the unit tests: the verdict on an effective capability set.
pub(crate) fn privilege(cap_eff: &Option<u64>) -> Result<(), String> {
    let Some(caps) = *cap_eff else {
        return Err("cannot read CapEff from /proc/self/status".into());
    };
    let has = |c: u32| caps & (1 << c) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    // The NAT check reads `struct nf_conn`: "'struct nf_conn' access is allowed only to
    // CAP_PERFMON and CAP_SYS_ADMIN", the verifier answers with CAP_BPF + CAP_NET_ADMIN alone.
    if !has(CAP_PERFMON) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("missing {}", missing.join(" and ")))
    }
}

fn btf() -> Result<(), String> {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if path.exists() {
        Ok(())
    } else {
        Err("no /sys/kernel/btf/vmlinux: the kernel is built without CONFIG_DEBUG_INFO_BTF".into())
    }
}

fn kfuncs() -> Result<(), String> {
    let btf = libbpf_rs::btf::Btf::from_vmlinux().map_err(|e| format!("read vmlinux BTF: {e}"))?;
    let missing: Vec<&str> = ["bpf_skb_ct_lookup", "bpf_ct_release"]
        .into_iter()
        .filter(|name| btf.type_by_name::<Func<'_>>(name).is_none())
        .collect();
    match (
        missing.is_empty(),
        Path::new("/sys/kernel/btf/nf_conntrack").exists(),
    ) {
        (true, _) => Ok(()),
        // The kfuncs live in the module's BTF when conntrack is a module.
        (false, true) => Ok(()),
        (false, false) => Err(format!(
            "{} not in the kernel's BTF and no nf_conntrack module loaded (needs Linux >= 6.0 with \
             CONFIG_NF_CONNTRACK; modprobe nf_conntrack)",
            missing.join(", ")
        )),
    }
}

fn load() -> Result<(), String> {
    let bytes = crate::fastpath::object_bytes();
    let open = ObjectBuilder::default()
        .open_memory(&bytes)
        .map_err(|e| format!("open: {e}"))?;
    open.load()
        .map(drop)
        .map_err(|e| format!("the kernel refused the programs: {e}"))
}

fn tcx() -> Result<(), String> {
    let lo = nix::net::if_::if_nametoindex("lo").map_err(|e| format!("ifindex of lo: {e}"))?;
    match sys::query_tcx_ingress(lo) {
        Ok(_) => Ok(()),
        Err(errno) => Err(format!(
            "querying tcx ingress on lo answered {} (tcx needs Linux >= 6.6)",
            std::io::Error::from_raw_os_error(errno)
        )),
    }
}

/// Whether `pin_dir`, or its nearest existing ancestor, is on bpffs.
pub(crate) fn on_bpffs(pin_dir: &Path) -> Result<(), String> {
    let mut at = pin_dir;
    while !at.exists() {
        at = at.parent().unwrap_or(Path::new("/"));
    }
    match nix::sys::statfs::statfs(at) {
        Ok(s) if s.filesystem_type() == FsType(BPF_FS_MAGIC as _) => Ok(()),
        Ok(_) => Err(format!(
            "{} is not on bpffs: mount -t bpf bpf /sys/fs/bpf",
            at.display()
        )),
        Err(e) => Err(format!("statfs {}: {e}", at.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn privilege_names_what_is_missing() {
        let all = (1u64 << CAP_BPF) | (1 << CAP_PERFMON) | (1 << CAP_NET_ADMIN);
        assert_eq!(privilege(&Some(all)), Ok(()));
        assert_eq!(
            privilege(&Some((1u64 << CAP_BPF) | (1 << CAP_NET_ADMIN))),
            Err("missing CAP_PERFMON".into())
        );
        let sys_admin = (1u64 << CAP_SYS_ADMIN) | (1 << CAP_NET_ADMIN);
        assert_eq!(privilege(&Some(sys_admin)), Ok(()));
        assert_eq!(
            privilege(&Some(0)),
            Err("missing CAP_BPF and CAP_PERFMON and CAP_NET_ADMIN".into())
        );
        assert_eq!(
            privilege(&Some((1 << CAP_BPF) | (1 << CAP_PERFMON))),
            Err("missing CAP_NET_ADMIN".into())
        );
        assert!(privilege(&None).is_err());
    }

    #[test]
    fn report_names_the_first_failure() {
        let p = Probe {
            checks: vec![
                Check {
                    feature: Feature::Btf,
                    result: Ok(()),
                },
                Check {
                    feature: Feature::Tcx,
                    result: Err("old kernel".into()),
                },
                Check {
                    feature: Feature::Bpffs,
                    result: Err("no mount".into()),
                },
            ],
        };
        assert!(!p.ready());
        assert_eq!(p.first_failure().unwrap().feature, Feature::Tcx);
        assert_eq!(
            p.to_string(),
            "Btf: ok\nTcx: no: old kernel\nBpffs: no: no mount\n"
        );
    }
}
