//! Benchmark of the `hostgw` CNI plugin against the reference `bridge` + `host-local`
//! (binary `bench-cni`).
//!
//! Needs root. Every plugin runs exactly as a runtime runs it (`cni::command`: config on
//! stdin, CNI_* environment, `nsenter --net=<node>` into a node namespace of its own), into
//! pod namespaces that were created before any timing starts. Nothing is created in the
//! root namespace; pod addresses are 198.18.8.0/24 (ours) and 198.18.9.0/24 (reference).
//!
//! What is timed: for each call, from just before `spawn()` of the runtime's command to the
//! moment the process's pidfd reports its exit (poll, in `hostgw_harness::proc`). That is
//! the plugin's whole life as a runtime sees it, including the fork/exec and the `nsenter`
//! hop (the `floor` row measures that hop alone: the same command running `/bin/true`).
//! CPU: user + system time of each reaped call (`RUSAGE_CHILDREN` around its reap).
//!
//! Memory: peak RSS of each contender's calls, measured in a probe process of its own
//! (see [`probe`]): the high-water RSS over every image each call exec'd (the pre-exec
//! image of the spawn, `nsenter`, then the plugin) and of the children *it* waited for. So
//! for the reference it covers `bridge` and the `host-local` it runs and waits for; for
//! ours it is the plugin. The `floor` row (same spawn, `/bin/true`) gives what the spawn
//! path alone reaches: a figure above the floor is the plugin's own peak.
//!
//! Sequential runs are interleaved (ours-ptp, ours-bridge, reference, ours-ptp, …) so that
//! background load on a shared machine hits every contender alike.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{Netns, bin};
use serde_json::json;

mod contender;
mod output;
pub mod probe;
pub mod report;

use contender::{Contender, Spec, call_cmd, run_one};
use output::{print_details, print_header, print_table, targets, write_json};
use probe::{ProbeCall, peak_rss};
use report::{Machine, PhaseSeconds, ms};

const OUR_SUBNET: &str = "198.18.8.0/24";
const REF_SUBNET: &str = "198.18.9.0/24";

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// Sequential ADD+DEL pairs per contender.
    pub runs: usize,
    /// ADDs launched at once (at most 250: one /24 per contender).
    pub burst: usize,
    pub burst_reps: usize,
    /// Sequential pairs not counted.
    pub warmup: usize,
    pub json: Option<PathBuf>,
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
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
    Machine {
        date: sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        hostname: sh("hostname"),
        nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model,
        mem_total_kib: mem_kib.parse().unwrap_or(0),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        loadavg_start: loadavg(),
        loadavg_end: String::new(),
    }
}

/// First 12 hex digits of the file's sha256.
fn sha(p: &Path) -> String {
    sh(&format!("sha256sum {} | cut -c1-12", p.display()))
}

/// The binaries under test: a snapshot of ours (the shared target dir may be rebuilt while
/// this runs) and the reference.
struct Binaries {
    ours_src: PathBuf,
    ours: PathBuf,
    ours_sha: String,
    ours_size: u64,
    reference: PathBuf,
    ref_version: String,
    git: String,
    _dir: tempfile::TempDir,
}

impl Binaries {
    fn new() -> Result<Binaries> {
        let ours_src = bin("hostgw");
        let dir = tempfile::Builder::new()
            .prefix("hgwt-bench-bin-")
            .tempdir()?;
        let ours = dir.path().join("hostgw");
        std::fs::copy(&ours_src, &ours).with_context(|| format!("copy {}", ours_src.display()))?;
        let reference = PathBuf::from("/usr/lib/cni/bridge");
        for p in [&reference, &PathBuf::from("/usr/lib/cni/host-local")] {
            if !p.is_file() {
                bail!(
                    "{} is missing (Debian package containernetworking-plugins)",
                    p.display()
                );
            }
        }
        Ok(Binaries {
            ours_sha: sha(&ours),
            ours_size: std::fs::metadata(&ours).map_or(0, |m| m.len()),
            ours_src,
            ours,
            reference,
            ref_version: sh(
                "dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null",
            ),
            git: sh(&format!(
                "git -C {} rev-parse --short HEAD 2>/dev/null",
                env!("CARGO_MANIFEST_DIR")
            )),
            _dir: dir,
        })
    }
}

fn contenders(b: &Binaries) -> Result<Vec<Contender>> {
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
    let spec = |label, plugin: &Path, tag, subnet_prefix| Spec {
        label,
        plugin: plugin.to_path_buf(),
        cni_path: "/usr/lib/cni",
        tag,
        subnet_prefix,
    };
    Ok(vec![
        Contender::new(
            spec("ours-ptp", &b.ours, "bnp", "198.18.8."),
            ours_conf("ptp"),
        )?,
        Contender::new(
            spec("ours-bridge", &b.ours, "bnb", "198.18.8."),
            ours_conf("bridge"),
        )?,
        Contender::new(spec("reference", &b.reference, "bnr", "198.18.9."), |dir| {
            json!({
                "cniVersion": "1.0.0", "name": "refnet", "type": "bridge", "bridge": "refbr0",
                "isGateway": true, "mtu": 1500,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": REF_SUBNET}]],
                         "dataDir": dir.display().to_string()},
            })
        })?,
    ])
}

/// The floor: the very same spawn (env, stdin, nsenter into a node) running /bin/true.
struct FloorRun {
    node: Netns,
    wall: Vec<f64>,
    rss_kib: i64,
}

impl FloorRun {
    fn cmd(&self) -> Command {
        call_cmd(
            Path::new("/bin/true"),
            &self.node,
            "/usr/lib/cni",
            ("ADD", "floor", "/nonexistent"),
        )
    }

    fn run(&mut self, record: bool) -> Result<()> {
        let f = run_one(self.cmd(), "{}")?;
        if f.code() != 0 {
            bail!(
                "floor command failed: {}",
                String::from_utf8_lossy(&f.stderr)
            );
        }
        if record {
            self.wall.push(ms(f.wall()));
        }
        Ok(())
    }
}

/// Everything measured, for the report.
struct Outcome {
    contenders: Vec<Contender>,
    floor: FloorRun,
    node_links: BTreeMap<&'static str, Vec<String>>,
    phases: PhaseSeconds,
}

/// 1. Sequential ADD+DEL, interleaved across contenders (and the floor).
fn sequential(
    o: &Options,
    cs: &mut [Contender],
    floor: &mut FloorRun,
    pods: &[Netns],
) -> Result<()> {
    let mut k = 0usize;
    for i in 0..o.warmup + o.runs {
        let warm = i < o.warmup;
        for c in cs.iter_mut() {
            c.add_del(&pods[k % pods.len()], warm)?;
            k += 1;
        }
        floor.run(!warm)?;
        if (i + 1) % 50 == 0 {
            eprintln!("bench-cni: sequential {}/{}", i + 1, o.warmup + o.runs);
        }
    }
    Ok(())
}

/// Runs every phase: sequential pairs, bursts, the RSS probes, and the checks that every
/// DEL left its pod as it found it.
fn measure(o: &Options, b: &Binaries) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut cs = contenders(b)?;
    let mut floor = FloorRun {
        node: Netns::new("bnf")?,
        wall: vec![],
        rss_kib: 0,
    };
    // Pod namespaces, all made before any timing.
    let npods = o.burst.max(8);
    let t_pods = Instant::now();
    let pods: Vec<Netns> = (0..npods)
        .map(|_| Netns::new("bpd"))
        .collect::<Result<_>>()?;
    eprintln!(
        "bench-cni: {npods} pod namespaces in {:.1} s",
        t_pods.elapsed().as_secs_f64()
    );
    let t_seq = Instant::now();
    sequential(o, &mut cs, &mut floor, &pods)?;
    let sequential = t_seq.elapsed().as_secs_f64();
    // 2. Bursts: `burst` ADDs at once into distinct pods, then their DELs; interleaved reps.
    let t_burst = Instant::now();
    for rep in 0..o.burst_reps {
        for c in cs.iter_mut() {
            c.burst(&pods[..o.burst])?;
        }
        eprintln!("bench-cni: burst rep {}/{}", rep + 1, o.burst_reps);
    }
    let bursts = t_burst.elapsed().as_secs_f64();
    // 3. Peak RSS, each contender's calls (and the floor's) in a probe of their own.
    let me = std::env::current_exe().context("current_exe")?;
    for c in cs.iter_mut() {
        c.measure_rss(&me, &pods)?;
    }
    let floor_calls: Vec<ProbeCall> = (0..5).map(|_| ProbeCall::of(&floor.cmd(), "{}")).collect();
    floor.rss_kib = peak_rss(&me, &floor_calls).context("floor")?;
    for p in &pods {
        let links = p.links()?;
        if links != ["lo"] {
            bail!("pod namespace {} still has {links:?} after DEL", p.name());
        }
    }
    let mut node_links = BTreeMap::new();
    for c in &cs {
        node_links.insert(c.label, c.node.links()?);
    }
    let total = t0.elapsed().as_secs_f64();
    Ok(Outcome {
        contenders: cs,
        floor,
        node_links,
        phases: PhaseSeconds {
            sequential,
            bursts,
            total,
        },
    })
}

/// The whole benchmark: prints the tables, and writes `o.json` if given.
pub fn run(o: &Options) -> Result<()> {
    hostgw_harness::require_root();
    if o.runs == 0 || o.burst == 0 || o.burst_reps == 0 {
        bail!("--runs, --burst and --burst-reps must be positive");
    }
    // A /24 has 253 addresses besides the gateway; the burst holds `burst` of them at once.
    if o.burst > 250 {
        bail!("--burst must be ≤ 250 (one /24 per contender)");
    }
    let mut info = machine();
    let b = Binaries::new()?;
    eprintln!(
        "bench-cni: {} ({} KiB, sha256 {}, git {}) vs {} ({}); {} runs, burst {} × {}",
        b.ours_src.display(),
        b.ours_size / 1024,
        b.ours_sha,
        b.git,
        b.reference.display(),
        b.ref_version,
        o.runs,
        o.burst,
        o.burst_reps
    );
    let out = measure(o, &b)?;
    info.loadavg_end = loadavg();
    print_header(o, &b, &info);
    print_table(&out);
    print_details(&out, info.nproc);
    let targets = targets(&out, o.burst)?;
    let p = &out.phases;
    println!(
        "phases: sequential {:.1} s, bursts {:.1} s, total {:.1} s; node links after: {}",
        p.sequential,
        p.bursts,
        p.total,
        out.node_links
            .iter()
            .map(|(k, v)| format!("{k} {v:?}"))
            .collect::<Vec<_>>()
            .join(" · ")
    );
    if let Some(path) = &o.json {
        write_json(path, o, &b, info, out, targets)?;
    }
    Ok(())
}
