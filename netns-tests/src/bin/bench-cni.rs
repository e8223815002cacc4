//! Benchmark of the `hostgw` CNI plugin against the reference `bridge` + `host-local`.
//!
//! ```text
//! cargo build --release -p hostgw-cni
//! cargo run --release -p hostgw-netns-tests --bin bench-cni -- [--runs 200] [--burst 100]
//!     [--burst-reps 3] [--warmup 3] [--json out.json]
//! ```
//!
//! Needs root. Every plugin runs exactly as a runtime runs it (`cni::command`: config on
//! stdin, CNI_* environment, `nsenter --net=<node>` into a node namespace of its own), into
//! pod namespaces that were created before any timing starts. Nothing is created in the
//! root namespace; pod addresses are 198.18.8.0/24 (ours) and 198.18.9.0/24 (reference).
//!
//! What is timed: for each call, from just before `spawn()` of the runtime's command to the
//! moment the process's pidfd reports its exit (poll). That is the plugin's whole life as a
//! runtime sees it, including the fork/exec and the `nsenter` hop (the `floor` row measures
//! that hop alone: the same command running `/bin/true`).
//!
//! Memory: `wait4`'s rusage of that process. Linux's `ru_maxrss` (KiB) from `wait4` is
//! RUSAGE_BOTH of the reaped process: the max of its own high-water RSS over every image it
//! exec'd (the vfork'd pre-exec image, `nsenter`, then the plugin) and of the children *it*
//! waited for. So for the reference it covers `bridge` and the `host-local` it runs and
//! waits for; for ours it is the plugin. Because the pre-exec images count too, the figure
//! is an upper bound; the `floor` row (same spawn, `/bin/true`) gives what the spawn path
//! alone reaches: a figure above the floor is the plugin's own peak.
//!
//! Sequential runs are interleaved (ours-ptp, ours-bridge, reference, ours-ptp, …) so that
//! background load on a shared machine hits every contender alike.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use hostgw_netns_tests::{
    Netns, bin,
    cni::{Call, command},
    require_root,
};
use nix::libc;
use serde_json::{Value, json};

const OUR_SUBNET: &str = "198.18.8.0/24";
const REF_SUBNET: &str = "198.18.9.0/24";
/// No single call may take longer than this; a burst gets this much as a whole.
const CALL_LIMIT: Duration = Duration::from_secs(30);
const RSS_TARGET_KIB: i64 = 5 * 1024;

struct Args {
    runs: usize,
    burst: usize,
    burst_reps: usize,
    warmup: usize,
    json: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        runs: 200,
        burst: 100,
        burst_reps: 3,
        warmup: 3,
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = val()?.parse()?,
            "--burst" => a.burst = val()?.parse()?,
            "--burst-reps" => a.burst_reps = val()?.parse()?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--json" => a.json = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!(
                    "bench-cni [--runs N(200)] [--burst N(100)] [--burst-reps N(3)] [--warmup N(3)] [--json FILE]"
                );
                std::process::exit(0);
            }
            f => bail!("unknown argument {f}"),
        }
    }
    if a.runs == 0 || a.burst == 0 || a.burst_reps == 0 {
        bail!("--runs, --burst and --burst-reps must be positive");
    }
    // A /24 has 253 addresses besides the gateway; the burst holds `burst` of them at once.
    if a.burst > 250 {
        bail!("--burst must be ≤ 250 (one /24 per contender)");
    }
    Ok(a)
}

// === processes: spawn → pidfd → wait4 ===

struct Running {
    start: Instant,
    child: Child,
    pidfd: OwnedFd,
}

struct Outcome {
    start: Instant,
    exited: Instant,
    /// Spawn to exit.
    wall: Duration,
    /// Exit code, or 128+signal.
    code: i32,
    maxrss_kib: i64,
    /// User + system CPU of the process and the children it waited for.
    cpu: Duration,
    stdout: String,
    stderr: String,
}

fn launch(mut cmd: Command, stdin: &str) -> Result<Running> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawn {cmd:?}"))?;
    // SAFETY: plain syscall on a pid we own and have not reaped.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let _ = child.kill();
        let _ = child.wait();
        bail!("pidfd_open: {e}");
    }
    // SAFETY: a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // The config is < 1 KiB: it fits the pipe, the write never blocks.
    // A process that exits without reading it (the floor's /bin/true) closes it first.
    let mut input = child.stdin.take().expect("piped");
    match input.write_all(stdin.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e).context("write the config to the plugin's stdin");
        }
        _ => {}
    }
    drop(input);
    Ok(Running {
        start,
        child,
        pidfd,
    })
}

/// Reads what is left in a pipe without blocking (the writer has exited, or a grandchild
/// that still holds it must not hang us).
fn drain(r: Option<impl Read + AsRawFd>) -> String {
    let Some(mut r) = r else { return String::new() };
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(r.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(r.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

fn reap(mut r: Running, exited: Instant) -> Result<Outcome> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 on our own, exited child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = r.child.id() as libc::pid_t;
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    if got != pid {
        bail!("wait4({pid}): {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(Outcome {
        start: r.start,
        exited,
        wall: exited - r.start,
        code,
        maxrss_kib: ru.ru_maxrss,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        stdout: drain(r.child.stdout.take()),
        stderr: drain(r.child.stderr.take()),
    })
}

/// Waits for every process, noting each one's exit time as its pidfd turns readable.
/// Past `limit` the rest are killed (by PID, each ours) and this fails.
fn finish_all(running: Vec<Running>, limit: Duration) -> Result<Vec<Outcome>> {
    let deadline = Instant::now() + limit;
    let n = running.len();
    let mut slots: Vec<Option<Running>> = running.into_iter().map(Some).collect();
    let mut out: Vec<Option<Outcome>> = (0..n).map(|_| None).collect();
    let mut left = n;
    while left > 0 {
        let idx: Vec<usize> = (0..n).filter(|&i| slots[i].is_some()).collect();
        let mut fds: Vec<libc::pollfd> = idx
            .iter()
            .map(|&i| libc::pollfd {
                fd: slots[i].as_ref().unwrap().pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let now = Instant::now();
        if now >= deadline {
            for s in slots.iter_mut().flatten() {
                let _ = s.child.kill();
                let _ = s.child.wait();
            }
            bail!("{left} of {n} plugin processes did not finish within {limit:?}");
        }
        let ms = (deadline - now).as_millis().min(i32::MAX as u128) as i32 + 1;
        // SAFETY: fds is a valid array of pollfd.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        let t = Instant::now();
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("poll: {e}");
        }
        for (k, pfd) in fds.iter().enumerate() {
            if pfd.revents != 0 {
                let i = idx[k];
                out[i] = Some(reap(slots[i].take().unwrap(), t)?);
                left -= 1;
            }
        }
    }
    Ok(out.into_iter().map(Option::unwrap).collect())
}

fn run_one(cmd: Command, stdin: &str) -> Result<Outcome> {
    let r = launch(cmd, stdin)?;
    Ok(finish_all(vec![r], CALL_LIMIT)?.pop().unwrap())
}

// === statistics ===

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of unsorted samples.
fn pct(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

fn summary(samples: &[f64]) -> Value {
    let mean = samples.iter().sum::<f64>() / samples.len().max(1) as f64;
    json!({
        "n": samples.len(),
        "p50_ms": pct(samples, 50.0),
        "p90_ms": pct(samples, 90.0),
        "p99_ms": pct(samples, 99.0),
        "min_ms": pct(samples, 0.0),
        "max_ms": pct(samples, 100.0),
        "mean_ms": mean,
    })
}

// === contenders ===

struct Contender {
    label: &'static str,
    plugin: PathBuf,
    cni_path: &'static str,
    node: Netns,
    config: String,
    subnet_prefix: &'static str,
    _data: tempfile::TempDir,
    // figures
    add: Vec<f64>,
    del: Vec<f64>,
    add_del: Vec<f64>,
    add_cpu: Vec<f64>,
    del_cpu: Vec<f64>,
    /// Sum of the CPU of all calls of one burst rep (ADD), ms.
    burst_cpu: Vec<f64>,
    burst_walls: Vec<f64>,
    burst_calls: Vec<f64>,
    burst_del_walls: Vec<f64>,
    burst_del_calls: Vec<f64>,
    rss_add_kib: i64,
    rss_del_kib: i64,
    seq: u64,
}

impl Contender {
    fn new(
        label: &'static str,
        plugin: PathBuf,
        cni_path: &'static str,
        tag: &str,
        subnet_prefix: &'static str,
        conf: impl FnOnce(&Path) -> Value,
    ) -> Result<Contender> {
        let node = Netns::new(tag)?;
        let data = tempfile::Builder::new().prefix("hgwt-bench-").tempdir()?;
        let config = conf(data.path()).to_string();
        Ok(Contender {
            label,
            plugin,
            cni_path,
            node,
            config,
            subnet_prefix,
            _data: data,
            add: vec![],
            del: vec![],
            add_del: vec![],
            add_cpu: vec![],
            del_cpu: vec![],
            burst_cpu: vec![],
            burst_walls: vec![],
            burst_calls: vec![],
            burst_del_walls: vec![],
            burst_del_calls: vec![],
            rss_add_kib: 0,
            rss_del_kib: 0,
            seq: 0,
        })
    }

    fn cmd(&self, verb: &str, id: &str, pod: &str) -> Command {
        let call = Call {
            command: verb,
            container_id: Some(id),
            netns: Some(pod),
            ifname: Some("eth0"),
            args: None,
            path: Some(self.cni_path),
        };
        command(&self.plugin, &self.node, &call)
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("bench-{}-{}", self.label, self.seq)
    }

    /// An ADD must succeed and give an address of this contender's subnet.
    fn check_add(&self, o: &Outcome) -> Result<()> {
        if o.code != 0 {
            bail!(
                "{} ADD failed (exit {}): {}{}",
                self.label,
                o.code,
                o.stdout,
                o.stderr
            );
        }
        let v: Value = serde_json::from_str(&o.stdout)
            .with_context(|| format!("{} ADD result is not JSON: {}", self.label, o.stdout))?;
        let addr = v["ips"][0]["address"].as_str().unwrap_or_default();
        if !addr.starts_with(self.subnet_prefix) {
            bail!(
                "{} ADD gave no address in {}: {}",
                self.label,
                self.subnet_prefix,
                o.stdout
            );
        }
        Ok(())
    }

    fn check_del(&self, o: &Outcome) -> Result<()> {
        if o.code != 0 {
            bail!(
                "{} DEL failed (exit {}): {}{}",
                self.label,
                o.code,
                o.stdout,
                o.stderr
            );
        }
        Ok(())
    }

    /// One sequential ADD then DEL into `pod`; recorded unless `warm`.
    fn add_del(&mut self, pod: &Netns, warm: bool) -> Result<()> {
        let id = self.next_id();
        let path = pod.path().display().to_string();
        let a = run_one(self.cmd("ADD", &id, &path), &self.config)?;
        self.check_add(&a)?;
        let d = run_one(self.cmd("DEL", &id, &path), &self.config)?;
        self.check_del(&d)?;
        if !warm {
            self.add.push(ms(a.wall));
            self.del.push(ms(d.wall));
            self.add_del.push(ms(a.wall + d.wall));
            self.add_cpu.push(ms(a.cpu));
            self.del_cpu.push(ms(d.cpu));
            self.rss_add_kib = self.rss_add_kib.max(a.maxrss_kib);
            self.rss_del_kib = self.rss_del_kib.max(d.maxrss_kib);
        }
        Ok(())
    }

    /// `pods.len()` ADDs launched back to back, then all their DELs the same way.
    fn burst(&mut self, pods: &[Netns]) -> Result<()> {
        let ids: Vec<String> = pods.iter().map(|_| self.next_id()).collect();
        let paths: Vec<String> = pods
            .iter()
            .map(|p| p.path().display().to_string())
            .collect();
        for verb in ["ADD", "DEL"] {
            let mut running = Vec::with_capacity(pods.len());
            for (id, path) in ids.iter().zip(&paths) {
                match launch(self.cmd(verb, id, path), &self.config) {
                    Ok(r) => running.push(r),
                    Err(e) => {
                        let _ = finish_all(running, CALL_LIMIT);
                        return Err(e);
                    }
                }
            }
            let outs = finish_all(running, CALL_LIMIT)?;
            // Wall: from the first spawn to the last exit.
            let first = outs.iter().map(|o| o.start).min().unwrap();
            let last = outs.iter().map(|o| o.exited).max().unwrap();
            let wall = ms(last - first);
            let calls = outs.iter().map(|o| ms(o.wall));
            if verb == "ADD" {
                for o in &outs {
                    self.check_add(o)?;
                    self.rss_add_kib = self.rss_add_kib.max(o.maxrss_kib);
                }
                self.burst_walls.push(wall);
                self.burst_cpu.push(outs.iter().map(|o| ms(o.cpu)).sum());
                self.burst_calls.extend(calls);
            } else {
                for o in &outs {
                    self.check_del(o)?;
                    self.rss_del_kib = self.rss_del_kib.max(o.maxrss_kib);
                }
                self.burst_del_walls.push(wall);
                self.burst_del_calls.extend(calls);
            }
        }
        Ok(())
    }

    fn burst_wall(&self) -> f64 {
        pct(&self.burst_walls, 50.0)
    }

    fn rss_kib(&self) -> i64 {
        self.rss_add_kib.max(self.rss_del_kib)
    }

    fn to_json(&self) -> Value {
        json!({
            "plugin": self.plugin.display().to_string(),
            "config": serde_json::from_str::<Value>(&self.config).unwrap_or(Value::Null),
            "add": summary(&self.add),
            "del": summary(&self.del),
            "add_del": summary(&self.add_del),
            "add_cpu": summary(&self.add_cpu),
            "del_cpu": summary(&self.del_cpu),
            "burst": {
                "size": self.burst_calls.len() / self.burst_walls.len().max(1),
                "add_wall_ms_per_rep": self.burst_walls,
                "add_wall_ms_median": self.burst_wall(),
                "add_calls": summary(&self.burst_calls),
                "add_cpu_ms_sum_per_rep": self.burst_cpu,
                "del_wall_ms_per_rep": self.burst_del_walls,
                "del_wall_ms_median": pct(&self.burst_del_walls, 50.0),
                "del_calls": summary(&self.burst_del_calls),
            },
            "peak_rss_kib": {"add": self.rss_add_kib, "del": self.rss_del_kib, "max": self.rss_kib()},
        })
    }
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("bench-cni: {e:#}");
        std::process::exit(1);
    }
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .unwrap_or_default();
    json!({
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "hostname": sh("hostname"),
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_kib": mem_kib.parse::<u64>().unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
    })
}

/// First 12 hex digits of the file's sha256.
fn sha(p: &Path) -> String {
    sh(&format!("sha256sum {} | cut -c1-12", p.display()))
}

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn mib(kib: i64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

fn real_main() -> Result<()> {
    require_root();
    let args = parse_args()?;
    let t0 = Instant::now();
    let mut info = machine();
    // A snapshot of the plugin: the shared target dir may be rebuilt while this runs.
    let ours_src = bin("hostgw");
    let bin_dir = tempfile::Builder::new()
        .prefix("hgwt-bench-bin-")
        .tempdir()?;
    let ours = bin_dir.path().join("hostgw");
    std::fs::copy(&ours_src, &ours).with_context(|| format!("copy {}", ours_src.display()))?;
    let ours_sha = sha(&ours);
    let reference = PathBuf::from("/usr/lib/cni/bridge");
    for p in [&reference, &PathBuf::from("/usr/lib/cni/host-local")] {
        if !p.is_file() {
            bail!(
                "{} is missing (Debian package containernetworking-plugins)",
                p.display()
            );
        }
    }
    let ref_version = sh("dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null");
    let git = sh(&format!(
        "git -C {} rev-parse --short HEAD 2>/dev/null",
        env!("CARGO_MANIFEST_DIR")
    ));
    let ours_size = std::fs::metadata(&ours).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "bench-cni: {} ({} KiB, sha256 {ours_sha}, git {git}) vs {} ({ref_version}); {} runs, burst {} × {}",
        ours_src.display(),
        ours_size / 1024,
        reference.display(),
        args.runs,
        args.burst,
        args.burst_reps
    );

    let ours_conf = |mode: &'static str| {
        move |dir: &Path| {
            let mut v = json!({
                "cniVersion": "1.0.0", "name": "benchnet", "type": "hostgw",
                "mode": mode, "subnet": OUR_SUBNET, "mtu": 1500,
                "dataDir": dir.display().to_string(),
            });
            if mode == "bridge" {
                v["bridge"] = json!("cni0");
            }
            v
        }
    };
    let mut contenders = vec![
        Contender::new(
            "ours-ptp",
            ours.clone(),
            "/usr/lib/cni",
            "bnp",
            "198.18.8.",
            ours_conf("ptp"),
        )?,
        Contender::new(
            "ours-bridge",
            ours.clone(),
            "/usr/lib/cni",
            "bnb",
            "198.18.8.",
            ours_conf("bridge"),
        )?,
        Contender::new(
            "reference",
            reference.clone(),
            "/usr/lib/cni",
            "bnr",
            "198.18.9.",
            |dir| {
                json!({
                    "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
                    "isGateway": true, "mtu": 1500,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": REF_SUBNET}]],
                             "dataDir": dir.display().to_string()},
                })
            },
        )?,
    ];
    // The floor: the very same spawn (env, stdin, nsenter into a node) running /bin/true.
    let floor_node = Netns::new("bnf")?;
    let floor_cmd = || {
        let call = Call {
            command: "ADD",
            container_id: Some("floor"),
            netns: Some("/nonexistent"),
            ifname: Some("eth0"),
            args: None,
            path: Some("/usr/lib/cni"),
        };
        command(Path::new("/bin/true"), &floor_node, &call)
    };

    // Pod namespaces, all made before any timing.
    let npods = args.burst.max(8);
    let t_pods = Instant::now();
    let pods: Vec<Netns> = (0..npods)
        .map(|_| Netns::new("bpd"))
        .collect::<Result<_>>()?;
    eprintln!(
        "bench-cni: {npods} pod namespaces in {:.1} s",
        t_pods.elapsed().as_secs_f64()
    );

    // 1. Sequential ADD+DEL, interleaved across contenders.
    let mut floor = Vec::new();
    let mut floor_rss = 0i64;
    let mut k = 0usize;
    let t_seq = Instant::now();
    for i in 0..args.warmup + args.runs {
        let warm = i < args.warmup;
        for c in contenders.iter_mut() {
            c.add_del(&pods[k % pods.len()], warm)?;
            k += 1;
        }
        let f = run_one(floor_cmd(), "{}")?;
        if f.code != 0 {
            bail!("floor command failed: {}", f.stderr);
        }
        if !warm {
            floor.push(ms(f.wall));
            floor_rss = floor_rss.max(f.maxrss_kib);
        }
        if (i + 1) % 50 == 0 {
            eprintln!(
                "bench-cni: sequential {}/{}",
                i + 1,
                args.warmup + args.runs
            );
        }
    }
    let seq_secs = t_seq.elapsed().as_secs_f64();

    // 2. Bursts: `burst` ADDs at once into distinct pods, then their DELs; interleaved reps.
    let t_burst = Instant::now();
    for rep in 0..args.burst_reps {
        for c in contenders.iter_mut() {
            c.burst(&pods[..args.burst])?;
        }
        eprintln!("bench-cni: burst rep {}/{}", rep + 1, args.burst_reps);
    }
    let burst_secs = t_burst.elapsed().as_secs_f64();
    // The floor once more, now that this process is at its largest.
    for _ in 0..5 {
        let f = run_one(floor_cmd(), "{}")?;
        floor_rss = floor_rss.max(f.maxrss_kib);
    }

    // Every DEL left its pod as it found it.
    for p in &pods {
        let links = p.links()?;
        if links != ["lo"] {
            bail!("pod namespace {} still has {links:?} after DEL", p.name());
        }
    }
    let mut node_links = BTreeMap::new();
    for c in &contenders {
        node_links.insert(c.label, c.node.links()?);
    }
    info["loadavg_end"] = json!(
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );

    // === report ===
    let r = contenders.iter().find(|c| c.label == "reference").unwrap();
    let m = &info;
    println!();
    println!("## hostgw CNI plugin vs reference bridge+host-local");
    println!(
        "machine: {} · {} CPUs · {} MiB RAM · kernel {} · {}",
        m["cpu_model"].as_str().unwrap_or(""),
        m["nproc"],
        m["mem_total_kib"].as_u64().unwrap_or(0) / 1024,
        m["kernel"].as_str().unwrap_or(""),
        m["date"].as_str().unwrap_or("")
    );
    println!(
        "load avg: start {} · end {}",
        m["loadavg_start"].as_str().unwrap_or(""),
        m["loadavg_end"].as_str().unwrap_or("")
    );
    println!(
        "ours: {} ({} KiB, sha256 {ours_sha}, git {git} + working tree) · reference: /usr/lib/cni/bridge + host-local, containernetworking-plugins {ref_version} (sha256 {})",
        ours_src.display(),
        ours_size / 1024,
        sha(&reference)
    );
    println!(
        "{} sequential ADD+DEL per contender (after {} warm-up), interleaved; burst of {} ADDs then {} DELs, {} reps (wall = median rep)",
        args.runs, args.warmup, args.burst, args.burst, args.burst_reps
    );
    println!(
        "times in ms, spawn→exit of `nsenter --net=<node> -- <plugin>`; RSS = wait4 ru_maxrss, MiB"
    );
    println!();
    let head = [
        "contender",
        "ADD p50",
        "ADD p99",
        "DEL p50",
        "DEL p99",
        "ADD+DEL p50",
        "ADD+DEL p99",
        "burst wall",
        "burst p50",
        "burst p99",
        "burst DEL wall",
        "peak RSS",
    ];
    println!("| {} |", head.join(" | "));
    println!("|{}", "---|".repeat(head.len()));
    for c in &contenders {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label,
            fmt_ms(pct(&c.add, 50.0)),
            fmt_ms(pct(&c.add, 99.0)),
            fmt_ms(pct(&c.del, 50.0)),
            fmt_ms(pct(&c.del, 99.0)),
            fmt_ms(pct(&c.add_del, 50.0)),
            fmt_ms(pct(&c.add_del, 99.0)),
            fmt_ms(c.burst_wall()),
            fmt_ms(pct(&c.burst_calls, 50.0)),
            fmt_ms(pct(&c.burst_calls, 99.0)),
            fmt_ms(pct(&c.burst_del_walls, 50.0)),
            mib(c.rss_kib()),
        );
    }
    println!(
        "| floor (/bin/true) | {} | {} | | | | | | | | | {} |",
        fmt_ms(pct(&floor, 50.0)),
        fmt_ms(pct(&floor, 99.0)),
        mib(floor_rss)
    );
    println!();
    println!(
        "burst walls per rep (ms): {}",
        contenders
            .iter()
            .map(|c| format!(
                "{} {:?}",
                c.label,
                c.burst_walls.iter().map(|w| w.round()).collect::<Vec<_>>()
            ))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    println!(
        "peak RSS ADD/DEL (KiB): {}",
        contenders
            .iter()
            .map(|c| format!("{} {}/{}", c.label, c.rss_add_kib, c.rss_del_kib))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    println!(
        "CPU per call, user+sys ms, p50 (sequential ADD / DEL; burst ADD sum ÷ {} CPUs = CPU-bound floor of the burst wall): {}",
        m["nproc"],
        contenders
            .iter()
            .map(|c| format!(
                "{} {} / {} ({:.0} ms)",
                c.label,
                fmt_ms(pct(&c.add_cpu, 50.0)),
                fmt_ms(pct(&c.del_cpu, 50.0)),
                pct(&c.burst_cpu, 50.0) / m["nproc"].as_f64().unwrap_or(1.0).max(1.0)
            ))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    println!();
    println!("targets:");
    let mut targets = Vec::new();
    for c in contenders.iter().filter(|c| c.label != "reference") {
        let add_ratio = pct(&c.add, 50.0) / pct(&r.add, 50.0);
        let burst_ratio = c.burst_wall() / r.burst_wall();
        let rss = c.rss_kib();
        let rss_ok = rss <= RSS_TARGET_KIB;
        let rss_note = if rss > floor_rss {
            "above the spawn floor: the plugin's own peak"
        } else {
            "not above the spawn floor: the plugin's own peak is at most this"
        };
        println!(
            "  {:<12} single ADD p50 {:.2}× reference (target ≤ 0.50×): {}",
            c.label,
            add_ratio,
            verdict(add_ratio <= 0.5)
        );
        println!(
            "  {:<12} burst-{} wall {:.2}× reference (target ≤ 0.50×): {}",
            c.label,
            args.burst,
            burst_ratio,
            verdict(burst_ratio <= 0.5)
        );
        println!(
            "  {:<12} peak RSS {} MiB (target ≤ 5 MiB): {} ({rss_note}, floor {} MiB)",
            c.label,
            mib(rss),
            verdict(rss_ok),
            mib(floor_rss)
        );
        targets.push(json!({
            "contender": c.label,
            "single_add_p50_ratio": add_ratio, "single_add_met": add_ratio <= 0.5,
            "burst_wall_ratio": burst_ratio, "burst_met": burst_ratio <= 0.5,
            "peak_rss_kib": rss, "rss_met": rss_ok, "rss_above_floor": rss > floor_rss,
        }));
    }
    println!(
        "  reference    peak RSS {} MiB (bridge and the host-local it waits for)",
        mib(r.rss_kib())
    );
    let total = t0.elapsed().as_secs_f64();
    println!();
    println!(
        "phases: sequential {seq_secs:.1} s, bursts {burst_secs:.1} s, total {total:.1} s; node links after: {}",
        node_links
            .iter()
            .map(|(k, v)| format!("{k} {v:?}"))
            .collect::<Vec<_>>()
            .join(" · ")
    );

    if let Some(path) = &args.json {
        let mut by = serde_json::Map::new();
        for c in &contenders {
            by.insert(c.label.into(), c.to_json());
        }
        let doc = json!({
            "machine": info,
            "git": git,
            "ours_binary": ours_src.display().to_string(),
            "ours_binary_sha256": ours_sha,
            "reference_sha256": sha(&reference),
            "ours_binary_bytes": ours_size,
            "reference_version": ref_version,
            "params": {"runs": args.runs, "warmup": args.warmup, "burst": args.burst,
                       "burst_reps": args.burst_reps},
            "method": {
                "timing": "spawn() of `nsenter --net=<node ns> -- <plugin>` (env + config on stdin, as cni::command) to pidfd-readable exit",
                "rss": "wait4 ru_maxrss (KiB): max over the exec chain (spawn image, nsenter, plugin) and the children the process waited for (reference: host-local)",
                "burst_wall": "first spawn to last exit; median over reps",
                "percentiles": "nearest rank",
            },
            "contenders": by,
            "floor": {"cmd": "/bin/true via the same spawn", "wall": summary(&floor), "peak_rss_kib": floor_rss},
            "targets": targets,
            "node_links_after": node_links,
            "phase_seconds": {"sequential": seq_secs, "bursts": burst_secs, "total": total},
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("write {}", path.display()))?;
        eprintln!("bench-cni: wrote {}", path.display());
    }
    Ok(())
}
