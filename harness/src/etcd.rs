//! A real etcd (Debian's `etcd-server`, v3 API) started inside a test namespace, with an
//! optional TLS variant whose certificates the test generates with the `openssl` CLI.
//!
//! etcd listens for clients on `<ip>:2379` inside its namespace and serves its own metrics
//! on `127.0.0.1:2381` there; peers use loopback. Drop ends the process (by PID, through
//! `Proc`) and removes the data directory.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{Netns, Proc, must, run_timeout, wait_for};

/// Client certificates for a TLS etcd: CA, server (IP SAN = etcd's address), client.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn generate(server_ip: &str) -> Result<Certs> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        let ossl = |args: &[&str]| must(Command::new("openssl").current_dir(d).args(args));
        ossl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=hostgw-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])?;
        for (name, ext) in [
            (
                "server",
                format!(
                    "subjectAltName=IP:{server_ip},IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"
                ),
            ),
            ("client", "extendedKeyUsage=clientAuth".to_owned()),
        ] {
            std::fs::write(d.join(format!("{name}.ext")), ext)?;
            ossl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=hostgw-{name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ])?;
            ossl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ])?;
        }
        Ok(Certs { dir })
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

pub struct Etcd {
    proc: Proc,
    ns_name: String,
    ns_path: PathBuf,
    _data: tempfile::TempDir,
    argv: Vec<String>,
    /// Client URL, e.g. `http://198.19.0.1:2379`.
    pub endpoint: String,
    tls: Option<[PathBuf; 3]>,
}

/// A data directory in memory when possible: etcd fsyncs every write.
/// The flags every member gets: its name and data, client and peer URLs, the initial
/// cluster, metrics on loopback, and errors only in its log.
fn member_args(name: &str, data: &Path, client: &str, peer: &str, initial: &str) -> Vec<String> {
    let data = data.display().to_string();
    [
        "--name",
        name,
        "--data-dir",
        &data,
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        initial,
        "--listen-metrics-urls",
        "http://127.0.0.1:2381",
        "--log-level",
        "error",
        "--logger",
        "zap",
    ]
    .map(String::from)
    .to_vec()
}

/// etcd inside the namespace at `ns`, its stderr (grpc-go's own warnings, which ignore
/// `--log-level`) appended to `etcd.log` in its data directory rather than the terminal.
fn etcd_command(ns: &Path, argv: &[String], data: &Path) -> Result<Command> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("etcd.log"))?;
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", ns.display()))
        .args(["--", "etcd"])
        .args(argv)
        .stderr(log);
    Ok(c)
}

/// Mode 0700, as etcd wants its data directory (it warns otherwise).
fn data_dir() -> Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::Builder::new()
            .prefix("hgwt-etcd")
            .tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

impl Etcd {
    /// Plain-HTTP etcd on `ip` inside `ns`.
    pub fn start(ns: &Netns, ip: &str) -> Result<Etcd> {
        Etcd::launch(ns, ip, None)
    }

    /// etcd that requires client certificates signed by `certs`' CA.
    pub fn start_tls(ns: &Netns, ip: &str, certs: &Certs) -> Result<Etcd> {
        Etcd::launch(ns, ip, Some(certs))
    }

    fn launch(ns: &Netns, ip: &str, certs: Option<&Certs>) -> Result<Etcd> {
        let data = data_dir()?;
        let scheme = if certs.is_some() { "https" } else { "http" };
        let endpoint = format!("{scheme}://{ip}:2379");
        let peer = "http://127.0.0.1:2380";
        let mut args = member_args(
            "default",
            data.path(),
            &endpoint,
            peer,
            &format!("default={peer}"),
        );
        // Progress notifications every second rather than etcd's default 10 minutes, so a
        // test sees a quiet watch's revision advance (the lease cache follows it). The
        // benchmarks' etcd keeps the default.
        args.extend([
            "--experimental-watch-progress-notify-interval".into(),
            "1s".into(),
        ]);
        let tls = certs.map(|c| [c.path("ca.crt"), c.path("client.crt"), c.path("client.key")]);
        if let Some(c) = certs {
            for (flag, file) in [
                ("--trusted-ca-file", "ca.crt"),
                ("--cert-file", "server.crt"),
                ("--key-file", "server.key"),
            ] {
                args.push(flag.into());
                args.push(c.path(file).display().to_string());
            }
            args.push("--client-cert-auth".into());
        }
        let mut etcd = Etcd {
            proc: Proc::none(),
            ns_name: ns.name().to_owned(),
            ns_path: ns.path(),
            _data: data,
            argv: args,
            endpoint,
            tls,
        };
        etcd.restart()?;
        Ok(etcd)
    }

    /// Ends etcd at once (SIGKILL), keeping its data for `restart`.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts etcd (again) on the same data and waits until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.proc = Proc::spawn(etcd_command(&self.ns_path, &self.argv, self._data.path())?)?;
        wait_for("etcd health", Duration::from_secs(20), || {
            self.ctl(&["endpoint", "health"]).ok()
        })?;
        Ok(())
    }

    /// Compacts the history up to the current revision.
    pub fn compact_now(&self) -> Result<()> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let rev = v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("revision in endpoint status")?;
        self.ctl(&["compact", &rev.to_string()]).map(|_| ())
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its data directory (removed on Drop; a sweep after a signal needs the name).
    pub fn data_dir(&self) -> &Path {
        self._data.path()
    }

    /// The TLS flags a client needs (`--etcd-cafile …`), empty without TLS.
    pub fn client_flags(&self) -> Vec<String> {
        match &self.tls {
            None => vec![],
            Some([ca, cert, key]) => vec![
                "--etcd-cafile".into(),
                ca.display().to_string(),
                "--etcd-certfile".into(),
                cert.display().to_string(),
                "--etcd-keyfile".into(),
                key.display().to_string(),
            ],
        }
    }

    fn ctl_cmd(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path.display()))
            .args([
                "--",
                "etcdctl",
                "--endpoints",
                &self.endpoint,
                "--command-timeout=5s",
            ])
            .env("ETCDCTL_API", "3");
        if let Some([ca, cert, key]) = &self.tls {
            c.arg(format!("--cacert={}", ca.display()))
                .arg(format!("--cert={}", cert.display()))
                .arg(format!("--key={}", key.display()));
        }
        c
    }

    /// `etcdctl ARGS` against this etcd; must succeed.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let out = run_timeout(self.ctl_cmd().args(args), Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "etcdctl {args:?} in {}: {}",
                self.ns_name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl(&["put", key, value]).map(|_| ())
    }

    /// Puts a key attached to a fresh etcd lease of `ttl` seconds; returns the lease id (hex).
    pub fn put_leased(&self, key: &str, value: &str, ttl: u32) -> Result<String> {
        let out = self.ctl(&["lease", "grant", &ttl.to_string()])?;
        let id = out
            .split_whitespace()
            .nth(1)
            .context("lease grant output")?
            .to_owned();
        self.ctl(&["put", "--lease", &id, key, value])?;
        Ok(id)
    }

    pub fn del(&self, key: &str) -> Result<()> {
        self.ctl(&["del", key]).map(|_| ())
    }

    /// Values under a prefix, as (key, value) pairs.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.ctl(&["get", "--prefix", prefix])?;
        let lines: Vec<&str> = out.lines().collect();
        Ok(lines
            .chunks(2)
            .filter(|c| c.len() == 2)
            .map(|c| (c[0].to_owned(), c[1].to_owned()))
            .collect())
    }

    /// etcd's own Prometheus metrics (served on loopback inside its namespace).
    pub fn metrics(&self) -> Result<String> {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path.display())).args([
            "--",
            "curl",
            "-sf",
            "--max-time",
            "5",
            "http://127.0.0.1:2381/metrics",
        ]);
        // The page is larger than a pipe buffer: `.output()` reads while curl writes, and
        // curl's --max-time bounds it.
        let out = c.output()?;
        if !out.status.success() {
            bail!("scrape etcd metrics: {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Range requests served so far (gRPC Range calls; txn-internal reads are not counted).
    pub fn range_requests(&self) -> Result<u64> {
        let text = self.metrics()?;
        Ok(metric_sum(
            &text,
            "grpc_server_handled_total",
            &["grpc_method=\"Range\""],
        ) as u64)
    }
}

/// Sum of a metric's samples whose labels contain every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Etcd {
    /// Writes many keys quickly: one gRPC-gateway transaction per 100 keys (plain HTTP only),
    /// instead of one etcdctl process per key.
    pub fn put_many(&self, kvs: &[(String, String)]) -> Result<()> {
        for chunk in kvs.chunks(100) {
            let ops: Vec<String> = chunk
                .iter()
                .map(|(k, v)| {
                    format!(
                        r#"{{"request_put":{{"key":"{}","value":"{}"}}}}"#,
                        b64(k),
                        b64(v)
                    )
                })
                .collect();
            let body = format!(r#"{{"success":[{}]}}"#, ops.join(","));
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", self.ns_path.display())).args([
                "--",
                "curl",
                "-sf",
                "--max-time",
                "10",
                "-X",
                "POST",
                "--data-binary",
                &body,
                &format!("{}/v3/kv/txn", self.endpoint),
            ]);
            let out = must(&mut c)?;
            if !out.contains("\"succeeded\":true") {
                bail!("bulk put failed: {out}");
            }
        }
        Ok(())
    }
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl Etcd {
    /// Puts `key` `count` times (one revision and one watch event each) with `value`, in
    /// one curl process over the gRPC gateway (plain HTTP only): history that piles up
    /// quickly in a stalled watcher's stream.
    pub fn put_repeatedly(&self, key: &str, value: &str, count: usize) -> Result<()> {
        let dir = tempfile::tempdir()?;
        let body = dir.path().join("body.json");
        std::fs::write(
            &body,
            format!(r#"{{"key":"{}","value":"{}"}}"#, b64(key), b64(value)),
        )?;
        let url = format!("{}/v3/kv/put", self.endpoint);
        let mut cfg = String::new();
        for i in 0..count {
            if i > 0 {
                cfg.push_str("next\n");
            }
            cfg.push_str(&format!(
                "url = \"{url}\"\ndata-binary = \"@{}\"\noutput = \"/dev/null\"\nsilent\nfail\nmax-time = 10\n",
                body.display()
            ));
        }
        let cfg_path = dir.path().join("curl.cfg");
        std::fs::write(&cfg_path, cfg)?;
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.ns_path.display()))
            .args(["--", "curl", "-K"])
            .arg(&cfg_path);
        let o = run_timeout(&mut c, Duration::from_secs(120))?;
        if !o.status.success() {
            bail!("curl puts: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(())
    }

    /// The current revision of the store.
    pub fn revision(&self) -> Result<i64> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["Status"]["header"]["revision"]
            .as_i64()
            .context("revision in endpoint status")
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        self.proc.pid() != 0 && self.proc.exited().is_none()
    }
}

/// etcd as operators run it: several members, each in its own namespace on its own
/// address (`<ip>:2379` for clients, `<ip>:2380` for peers), one cluster.
pub struct EtcdCluster {
    pub members: Vec<Etcd>,
    /// Every member's client URL, comma-separated (for `--etcd-endpoints`).
    pub endpoints: String,
    ids: Vec<u64>,
}

impl EtcdCluster {
    /// Starts one member per (namespace, address) and waits until each is healthy (which
    /// needs a quorum, so all are started first).
    pub fn start(members: &[(&Netns, &str)]) -> Result<EtcdCluster> {
        let token = crate::unique("etc");
        let initial: Vec<String> = members
            .iter()
            .enumerate()
            .map(|(i, (_, ip))| format!("m{i}=http://{ip}:2380"))
            .collect();
        let mut out = Vec::new();
        for (i, (ns, ip)) in members.iter().enumerate() {
            let data = data_dir()?;
            let endpoint = format!("http://{ip}:2379");
            let peer = format!("http://{ip}:2380");
            let mut args = member_args(
                &format!("m{i}"),
                data.path(),
                &endpoint,
                &peer,
                &initial.join(","),
            );
            args.extend(
                [
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                ]
                .map(String::from),
            );
            // etcd's progress notifications come every 10 minutes by default; a benchmark
            // may want them within its run.
            if let Ok(every) = std::env::var("HOSTGW_BENCH_ETCD_PROGRESS") {
                args.extend([
                    "--experimental-watch-progress-notify-interval".into(),
                    every,
                ]);
            }
            let mut m = Etcd {
                proc: Proc::none(),
                ns_name: ns.name().to_owned(),
                ns_path: ns.path(),
                _data: data,
                argv: args,
                endpoint,
                tls: None,
            };
            m.proc = Proc::spawn(etcd_command(&m.ns_path, &m.argv, m._data.path())?)?;
            out.push(m);
        }
        for m in &out {
            wait_for("etcd member health", Duration::from_secs(30), || {
                m.ctl(&["endpoint", "health"]).ok()
            })?;
        }
        let mut ids = Vec::new();
        for m in &out {
            let (id, _) = m.ids()?;
            ids.push(id);
        }
        Ok(EtcdCluster {
            endpoints: out
                .iter()
                .map(|m| m.endpoint.clone())
                .collect::<Vec<_>>()
                .join(","),
            members: out,
            ids,
        })
    }

    /// Index of the member that is leader now, as the live members agree; `None` while
    /// there is none (an election is under way) or they disagree.
    pub fn leader(&mut self) -> Option<usize> {
        let mut seen = None;
        for i in 0..self.members.len() {
            if !self.members[i].alive() {
                continue;
            }
            let (_, leader) = self.members[i].ids().ok()?;
            let idx = self.ids.iter().position(|&id| id == leader)?;
            if !self.members[idx].alive() || seen.is_some_and(|s| s != idx) {
                return None;
            }
            seen = Some(idx);
        }
        seen
    }

    /// Ends member `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// `etcdctl ARGS` through the first live member.
    pub fn ctl(&mut self, args: &[&str]) -> Result<String> {
        let i = (0..self.members.len())
            .find(|&i| self.members[i].alive())
            .context("no live etcd member")?;
        self.members[i].ctl(args)
    }
}

impl Etcd {
    /// (this member's ID, the leader's ID) from `endpoint status`.
    fn ids(&self) -> Result<(u64, u64)> {
        let out = self.ctl(&["endpoint", "status", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let s = &v[0]["Status"];
        Ok((
            s["header"]["member_id"].as_u64().context("member_id")?,
            s["leader"].as_u64().context("leader")?,
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64() {
        assert_eq!(super::b64("hostgw"), "aG9zdGd3");
        assert_eq!(super::b64("ab"), "YWI=");
        assert_eq!(super::b64("a"), "YQ==");
    }
}
