//! Fixtures for tests of the CNI plugin: a node namespace with its own data dir and subnet
//! file, pods attached through the real binary, and readers of what the node holds
//! (reservations, host veths, host routes).

use std::{
    collections::BTreeMap,
    io::Write,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    Netns,
    cni::{Call, Reply, command, invoke},
};

/// The network name the fixtures use (and so the folder below `dataDir`).
pub const NETWORK: &str = "podnet";

pub use crate::node::Node;

/// The plugin fixtures of a [`Node`].
impl Node {
    /// Writes the subnet file as the route daemon would.
    pub fn write_subnet_file(
        &self,
        subnet: &str,
        ipv6_subnet: Option<&str>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let v = json!({
            "network": "198.18.0.0/16",
            "subnet": subnet,
            "ipv6Network": ipv6_subnet.map(|_| "fd18:18::/48"),
            "ipv6Subnet": ipv6_subnet,
            "mtu": mtu,
        });
        std::fs::write(&self.subnet_file, v.to_string())?;
        Ok(())
    }

    /// A plugin config for this node (no static subnet: the subnet file decides).
    pub fn conf(&self, mode: &str, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": NETWORK,
            "type": "hostgw",
            "mode": mode,
            "subnetFile": self.subnet_file,
            "dataDir": self.data_dir(),
            "bridge": "cni0",
        })
    }

    /// Runs the plugin in this node with `conf` on stdin.
    pub fn invoke(&self, call: &Call, conf: &Value) -> Result<Reply> {
        invoke(&self.plugin, &self.ns, call, &conf.to_string())
    }

    pub fn add(&self, conf: &Value, id: &str, pod: &Netns) -> Result<Reply> {
        let path = ns_path(pod);
        self.invoke(&Call::attach("ADD", id, &path), conf)
    }

    /// ADD that must succeed; returns the parsed result.
    pub fn add_ok(&self, conf: &Value, id: &str, pod: &Netns) -> Result<Value> {
        ok_json(&self.add(conf, id, pod)?).with_context(|| format!("ADD {id}"))
    }

    /// Starts ADD of `id` into `pod` and SIGKILLs it `delay` after spawn (a runtime's context
    /// deadline); returns whether it had already exited.
    pub fn add_killed_after(
        &self,
        conf: &Value,
        id: &str,
        pod: &Netns,
        delay: Duration,
    ) -> Result<bool> {
        let path = ns_path(pod);
        let mut child = command(&self.plugin, &self.ns, &Call::attach("ADD", id, &path))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let spawned = Instant::now();
        let _ = child
            .stdin
            .take()
            .expect("piped")
            .write_all(conf.to_string().as_bytes());
        if let Some(left) = delay.checked_sub(spawned.elapsed()) {
            std::thread::sleep(left);
        }
        let finished = child.try_wait()?.is_some();
        let _ = child.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("killed plugin did not go away");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(finished)
    }

    /// CHECK with `prev` as prevResult, as a runtime does.
    pub fn check(&self, conf: &Value, id: &str, pod: &Netns, prev: &Value) -> Result<Reply> {
        let path = ns_path(pod);
        self.invoke(
            &Call::attach("CHECK", id, &path),
            &with(conf, "prevResult", prev.clone()),
        )
    }

    /// DEL; `netns` None leaves CNI_NETNS unset.
    pub fn del(&self, conf: &Value, id: &str, netns: Option<&str>) -> Result<Reply> {
        let call = Call {
            netns,
            ..Call::attach("DEL", id, "")
        };
        self.invoke(&call, conf)
    }

    /// GC with `valid` as `cni.dev/valid-attachments` (`Value::Null` sends null).
    pub fn gc(&self, conf: &Value, valid: Value) -> Result<Reply> {
        self.invoke(
            &verb_call("GC"),
            &with(conf, "cni.dev/valid-attachments", valid),
        )
    }

    pub fn status(&self, conf: &Value) -> Result<Reply> {
        self.invoke(&verb_call("STATUS"), conf)
    }

    /// Reservation files of `network` (name → content), without `lock` and
    /// `last_reserved_ip.*`; anything else (a `.tmp-*` left behind, say) is listed.
    pub fn reservations(&self, network: &str) -> Result<BTreeMap<String, String>> {
        reservation_files(&self.net_dir(network))
    }

    /// Names of the node's host veths (`hgw…`).
    pub fn host_veths(&self) -> Result<Vec<String>> {
        Ok(self
            .ns
            .links()?
            .into_iter()
            .filter(|l| l.starts_with("hgw"))
            .collect())
    }

    /// The node's routes (both families) to single pod addresses (`/32`, `/128`) inside
    /// the pod ranges 198.18.0.0/16 and fd18:18::/48, as `dst dev`.
    pub fn pod_host_routes(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            let routes = self.ns.ip_json(&[fam, "route", "show"])?;
            for r in routes.as_array().into_iter().flatten() {
                let dst = r["dst"].as_str().unwrap_or_default();
                let single = !dst.contains('/') || dst.ends_with("/32") || dst.ends_with("/128");
                if single && (dst.starts_with("198.18.") || dst.starts_with("fd18:18:")) {
                    // The v6 gateway on a ptp host veth makes a kernel route to itself.
                    if r["protocol"].as_str() == Some("kernel") {
                        continue;
                    }
                    out.push(format!("{dst} dev {}", r["dev"].as_str().unwrap_or("?")));
                }
            }
        }
        Ok(out)
    }

    /// Asserts the node holds nothing of any pod: no reservation of `network`, no host
    /// veth, no host route to a pod address.
    pub fn assert_clean(&self, network: &str) -> Result<()> {
        let res = self.reservations(network)?;
        let links = self.host_veths()?;
        let routes = self.pod_host_routes()?;
        if !res.is_empty() || !links.is_empty() || !routes.is_empty() {
            bail!(
                "node not clean: reservations {res:?}, host veths {links:?}, pod routes {routes:?}"
            );
        }
        Ok(())
    }
}

/// A call of a verb without attachment (GC, STATUS, VERSION).
pub fn verb_call(command: &str) -> Call<'_> {
    Call {
        command,
        path: Some("/opt/cni/bin"),
        ..Default::default()
    }
}

/// The namespace path as the runtime passes it in CNI_NETNS.
pub fn ns_path(ns: &Netns) -> String {
    ns.path().display().to_string()
}

/// `conf` with `key` set to `value`.
pub fn with(conf: &Value, key: &str, value: Value) -> Value {
    let mut c = conf.clone();
    c[key] = value;
    c
}

/// The JSON result of a call that must have succeeded.
pub fn ok_json(r: &Reply) -> Result<Value> {
    if !r.ok() {
        bail!(
            "plugin failed ({:?}): stdout {:?} stderr {:?}",
            r.code,
            r.stdout,
            r.stderr
        );
    }
    r.json()
}

/// Asserts success with nothing on stdout (DEL, CHECK, GC, STATUS).
pub fn ok_empty(r: &Reply) -> Result<()> {
    if !r.ok() || !r.stdout.trim().is_empty() {
        bail!(
            "expected silent success, got ({:?}): stdout {:?} stderr {:?}",
            r.code,
            r.stdout,
            r.stderr
        );
    }
    Ok(())
}

/// Asserts a CNI error with `code`: non-zero exit and exactly one error object on stdout
/// holding `code` and a non-empty `msg`. Returns the object.
pub fn err_code(r: &Reply, code: u64) -> Result<Value> {
    if r.ok() {
        bail!("expected error {code}, got success: stdout {:?}", r.stdout);
    }
    let v = r.json()?;
    if v["code"].as_u64() != Some(code) || v["msg"].as_str().is_none_or(str::is_empty) {
        bail!(
            "expected error code {code}, got {v} (exit {:?}, stderr {:?})",
            r.code,
            r.stderr
        );
    }
    Ok(v)
}

/// Addresses (`ip/prefix`) of `dev` in `ns`, with their flags, from `ip -j addr`.
pub fn addrs(ns: &Netns, dev: &str) -> Result<Vec<Value>> {
    let v = ns.ip_json(&["addr", "show", "dev", dev])?;
    Ok(v[0]["addr_info"].as_array().cloned().unwrap_or_default())
}

/// `ip/prefix` strings of the global addresses of `dev`.
pub fn global_addrs(ns: &Netns, dev: &str) -> Result<Vec<String>> {
    Ok(addrs(ns, dev)?
        .iter()
        .filter(|a| a["scope"] == "global")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect())
}

/// One link of `ns` as `ip -j -d link show` prints it.
pub fn link(ns: &Netns, dev: &str) -> Result<Value> {
    let v = ns.ip_json(&["-d", "link", "show", "dev", dev])?;
    Ok(v[0].clone())
}

/// A sysctl of `ns`, read from /proc/sys (`net/ipv4/ip_forward`).
pub fn sysctl(ns: &Netns, key: &str) -> Result<String> {
    Ok(ns.sh(&format!("cat /proc/sys/{key}"))?.trim().to_owned())
}

/// Path of a file under `dir`, as a string for configs.
pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The host veth name the plugin derives for an attachment (a pure function of it, which
/// DEL and GC depend on).
pub use hostgw_cni::datapath::host_veth_name;

/// Main-table routes of `ns` for `family` ("-4" or "-6") as `dst [via gw] dev D [scope S]`,
/// without the kernel's own (link-local, multicast, connected /128 of an address).
pub fn routes(ns: &Netns, family: &str) -> Result<Vec<String>> {
    let v = ns.ip_json(&[family, "route", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|r| !(family == "-6" && r["protocol"] == "kernel"))
        .map(|r| {
            let mut s = r["dst"].as_str().unwrap_or("?").to_owned();
            if let Some(gw) = r["gateway"].as_str() {
                s += &format!(" via {gw}");
            }
            s += &format!(" dev {}", r["dev"].as_str().unwrap_or("?"));
            if let Some(scope) = r["scope"].as_str() {
                s += &format!(" scope {scope}");
            }
            s
        })
        .collect())
}

/// The reservation files of one IPAM network directory (name → content), without `lock`
/// and `last_reserved_ip.*`; a missing directory holds none.
pub fn reservation_files(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in rd {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name == "lock" || name.starts_with("last_reserved_ip.") {
            continue;
        }
        let content = std::fs::read_to_string(e.path()).unwrap_or_default();
        out.insert(name, content);
    }
    Ok(out)
}
