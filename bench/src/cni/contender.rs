//! One contender of the CNI benchmark: a plugin with its config, in a node namespace of its
//! own, and every figure measured of it.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hostgw_harness::{
    Netns,
    cni::{Call, command},
    proc::{Finished, finish_all, launch},
};
use serde_json::Value;

use super::{
    probe::{ProbeCall, peak_rss},
    report::{Burst, ContenderReport, PeakRss, Summary, ms, pct},
};

/// No single call may take longer than this; a burst gets this much as a whole.
pub const CALL_LIMIT: Duration = Duration::from_secs(30);

/// Calls of each verb the RSS probe runs per contender.
const RSS_CALLS: usize = 8;

/// The command that runs `plugin` in `node` for (`verb`, `id`) in the pod at `pod`.
pub fn call_cmd(
    plugin: &Path,
    node: &Netns,
    cni_path: &str,
    (verb, id, pod): (&str, &str, &str),
) -> Command {
    let call = Call {
        command: verb,
        container_id: Some(id),
        netns: Some(pod),
        ifname: Some("eth0"),
        args: None,
        path: Some(cni_path),
    };
    command(plugin, node, &call)
}

/// One run, bounded by [`CALL_LIMIT`].
pub fn run_one(mut cmd: Command, stdin: &str) -> Result<Finished> {
    let r = launch(&mut cmd, stdin.as_bytes())?;
    finish_all(vec![r], CALL_LIMIT)?.pop().context("no result")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub struct Contender {
    pub label: &'static str,
    pub plugin: PathBuf,
    pub cni_path: &'static str,
    pub node: Netns,
    pub config: String,
    /// The start of every address this contender hands out (`198.18.8.`).
    pub subnet_prefix: &'static str,
    pub _data: tempfile::TempDir,
    pub add: Vec<f64>,
    pub del: Vec<f64>,
    pub add_del: Vec<f64>,
    pub add_cpu: Vec<f64>,
    pub del_cpu: Vec<f64>,
    /// Sum of the CPU of all calls of one burst rep (ADD), ms.
    pub burst_cpu: Vec<f64>,
    pub burst_walls: Vec<f64>,
    pub burst_calls: Vec<f64>,
    pub burst_del_walls: Vec<f64>,
    pub burst_del_calls: Vec<f64>,
    pub rss_add_kib: i64,
    pub rss_del_kib: i64,
    seq: u64,
}

/// What a contender is made of.
pub struct Spec {
    pub label: &'static str,
    pub plugin: PathBuf,
    pub cni_path: &'static str,
    /// Tag of its node namespace's name.
    pub tag: &'static str,
    pub subnet_prefix: &'static str,
}

impl Contender {
    pub fn new(spec: Spec, conf: impl FnOnce(&Path) -> Value) -> Result<Contender> {
        let node = Netns::new(spec.tag)?;
        let data = tempfile::Builder::new().prefix("hgwt-bench-").tempdir()?;
        let config = conf(data.path()).to_string();
        Ok(Contender {
            label: spec.label,
            plugin: spec.plugin,
            cni_path: spec.cni_path,
            node,
            config,
            subnet_prefix: spec.subnet_prefix,
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
        call_cmd(&self.plugin, &self.node, self.cni_path, (verb, id, pod))
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("bench-{}-{}", self.label, self.seq)
    }

    /// An ADD must succeed and give an address of this contender's subnet.
    fn check_add(&self, o: &Finished) -> Result<()> {
        let (stdout, stderr) = (text(&o.stdout), text(&o.stderr));
        if o.code() != 0 {
            bail!(
                "{} ADD failed (exit {}): {stdout}{stderr}",
                self.label,
                o.code()
            );
        }
        let v: Value = serde_json::from_str(&stdout)
            .with_context(|| format!("{} ADD result is not JSON: {stdout}", self.label))?;
        let addr = v["ips"][0]["address"].as_str().unwrap_or_default();
        if !addr.starts_with(self.subnet_prefix) {
            bail!(
                "{} ADD gave no address in {}: {stdout}",
                self.label,
                self.subnet_prefix
            );
        }
        Ok(())
    }

    fn check_del(&self, o: &Finished) -> Result<()> {
        if o.code() != 0 {
            bail!(
                "{} DEL failed (exit {}): {}{}",
                self.label,
                o.code(),
                text(&o.stdout),
                text(&o.stderr)
            );
        }
        Ok(())
    }

    /// One sequential ADD then DEL into `pod`; recorded unless `warm`.
    pub fn add_del(&mut self, pod: &Netns, warm: bool) -> Result<()> {
        let id = self.next_id();
        let path = pod.path().display().to_string();
        let a = run_one(self.cmd("ADD", &id, &path), &self.config)?;
        self.check_add(&a)?;
        let d = run_one(self.cmd("DEL", &id, &path), &self.config)?;
        self.check_del(&d)?;
        if !warm {
            self.add.push(ms(a.wall()));
            self.del.push(ms(d.wall()));
            self.add_del.push(ms(a.wall() + d.wall()));
            self.add_cpu.push(ms(a.cpu));
            self.del_cpu.push(ms(d.cpu));
        }
        Ok(())
    }

    /// Launches `verb` for every (id, pod) back to back and waits for all of them.
    fn launch_all(&self, verb: &str, ids: &[String], paths: &[String]) -> Result<Vec<Finished>> {
        let mut running = Vec::with_capacity(ids.len());
        for (id, path) in ids.iter().zip(paths) {
            match launch(&mut self.cmd(verb, id, path), self.config.as_bytes()) {
                Ok(r) => running.push(r),
                Err(e) => {
                    let _ = finish_all(running, CALL_LIMIT);
                    return Err(e);
                }
            }
        }
        finish_all(running, CALL_LIMIT)
    }

    /// `pods.len()` ADDs launched back to back, then all their DELs the same way.
    pub fn burst(&mut self, pods: &[Netns]) -> Result<()> {
        let ids: Vec<String> = pods.iter().map(|_| self.next_id()).collect();
        let paths: Vec<String> = pods
            .iter()
            .map(|p| p.path().display().to_string())
            .collect();
        for verb in ["ADD", "DEL"] {
            let outs = self.launch_all(verb, &ids, &paths)?;
            // Wall: from the first spawn to the last exit.
            let first = outs.iter().map(|o| o.start).min().context("empty burst")?;
            let last = outs.iter().map(|o| o.exited).max().context("empty burst")?;
            let wall = ms(last - first);
            let calls = outs.iter().map(|o| ms(o.wall()));
            if verb == "ADD" {
                outs.iter().try_for_each(|o| self.check_add(o))?;
                self.burst_walls.push(wall);
                self.burst_cpu.push(outs.iter().map(|o| ms(o.cpu)).sum());
                self.burst_calls.extend(calls);
            } else {
                outs.iter().try_for_each(|o| self.check_del(o))?;
                self.burst_del_walls.push(wall);
                self.burst_del_calls.extend(calls);
            }
        }
        Ok(())
    }

    /// Peak RSS of ADDs into the first pods, then of their DELs, each in a probe.
    pub fn measure_rss(&mut self, self_exe: &Path, pods: &[Netns]) -> Result<()> {
        let pods = &pods[..RSS_CALLS.min(pods.len())];
        let ids: Vec<String> = pods.iter().map(|_| self.next_id()).collect();
        for verb in ["ADD", "DEL"] {
            let calls: Vec<ProbeCall> = ids
                .iter()
                .zip(pods)
                .map(|(id, p)| {
                    let path = p.path().display().to_string();
                    ProbeCall::of(&self.cmd(verb, id, &path), &self.config)
                })
                .collect();
            let rss =
                peak_rss(self_exe, &calls).with_context(|| format!("{} {verb}", self.label))?;
            if verb == "ADD" {
                self.rss_add_kib = rss;
            } else {
                self.rss_del_kib = rss;
            }
        }
        Ok(())
    }

    pub fn burst_wall(&self) -> f64 {
        pct(&self.burst_walls, 50.0)
    }

    pub fn rss_kib(&self) -> i64 {
        self.rss_add_kib.max(self.rss_del_kib)
    }

    pub fn report(&self) -> ContenderReport {
        ContenderReport {
            plugin: self.plugin.display().to_string(),
            config: serde_json::from_str(&self.config).unwrap_or(Value::Null),
            add: Summary::of(&self.add),
            del: Summary::of(&self.del),
            add_del: Summary::of(&self.add_del),
            add_cpu: Summary::of(&self.add_cpu),
            del_cpu: Summary::of(&self.del_cpu),
            burst: Burst {
                size: self.burst_calls.len() / self.burst_walls.len().max(1),
                add_wall_ms_per_rep: self.burst_walls.clone(),
                add_wall_ms_median: self.burst_wall(),
                add_calls: Summary::of(&self.burst_calls),
                add_cpu_ms_sum_per_rep: self.burst_cpu.clone(),
                del_wall_ms_per_rep: self.burst_del_walls.clone(),
                del_wall_ms_median: pct(&self.burst_del_walls, 50.0),
                del_calls: Summary::of(&self.burst_del_calls),
            },
            peak_rss_kib: PeakRss {
                add: self.rss_add_kib,
                del: self.rss_del_kib,
                max: self.rss_kib(),
            },
        }
    }
}
