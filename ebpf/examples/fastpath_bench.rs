//! A first look at what the fast path buys: iperf3, one TCP stream, pod a -> pod b across the
//! two test nodes, with plain routes, with the programs attached, and with the programs plus
//! BIG TCP on every veth end; node-to-node ("native") as the reference. Interleaved rounds in
//! one run, so a slow phase of the machine hits every mode.
//!
//! `cargo run -p hostgw-ebpf --example fastpath_bench -- [SECONDS] [ROUNDS]` (as root; 5 s, 3).

#[path = "../tests/common/mod.rs"]
mod common;

use anyhow::{Context, Result};
use common::*;
use hostgw_ebpf::{BIG_TCP_SIZE, FastPath, LEGACY_GSO_SIZE, set_gso_gro_max};

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Native,
    Routes,
    RoutesBigTcp,
    Ebpf,
    EbpfBigTcp,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Mode::Native,
        Mode::Routes,
        Mode::RoutesBigTcp,
        Mode::Ebpf,
        Mode::EbpfBigTcp,
    ];
    fn name(self) -> &'static str {
        match self {
            Mode::Native => "native (node a -> node b)",
            Mode::Routes => "hostgw ptp, routes",
            Mode::RoutesBigTcp => "hostgw ptp, routes + BIG TCP",
            Mode::Ebpf => "hostgw ptp, ebpf fast path",
            Mode::EbpfBigTcp => "hostgw ptp, ebpf + BIG TCP",
        }
    }
}

fn main() -> Result<()> {
    require_root();
    let mut args = std::env::args().skip(1);
    let secs: u32 = args
        .next()
        .map_or(Ok(5), |a| a.parse())
        .context("SECONDS")?;
    let rounds: usize = args.next().map_or(Ok(3), |a| a.parse()).context("ROUNDS")?;
    let c = cluster()?;
    with_bpffs(|bpffs| run(&c, bpffs, secs, rounds))
}

fn run(c: &Cluster, bpffs: &std::path::Path, secs: u32, rounds: usize) -> Result<()> {
    let fps = [c.a.fast_path(bpffs)?, c.b.fast_path(bpffs)?];
    let _pod_server = spawn_quiet(&c.b.pod, "iperf3", &["-s", "-p", "5201"])?;
    let _node_server = spawn_quiet(&c.b.ns, "iperf3", &["-s", "-p", "5202"])?;
    wait_listen(&c.b.pod, 5201)?;
    wait_listen(&c.b.ns, 5202)?;
    reach(&c.a.pod, &c.b.pod_ip4())?;
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); Mode::ALL.len()];
    for round in 1..=rounds {
        for (i, mode) in Mode::ALL.into_iter().enumerate() {
            set_mode(c, &fps, mode)?;
            let gbit = iperf(c, mode, secs)?;
            println!("round {round}  {:<28} {gbit:6.2} Gbit/s", mode.name());
            results[i].push(gbit);
        }
    }
    set_mode(c, &fps, Mode::Routes)?;
    let native = median(&results[0]);
    println!(
        "\nmedian of {rounds} rounds, {secs} s each, one TCP stream (first look, shared 2-CPU VM):"
    );
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let m = median(&results[i]);
        println!(
            "  {:<28} {m:6.2} Gbit/s  {:.2}x native",
            mode.name(),
            m / native
        );
    }
    let fast: u64 = fps
        .iter()
        .map(|f| f.counters().map_or(0, |c| c.fast_packets()))
        .sum();
    println!("  (fast-pathed skbs on both nodes over the run: {fast})");
    Ok(())
}

fn set_mode(c: &Cluster, fps: &[FastPath; 2], mode: Mode) -> Result<()> {
    let attach = matches!(mode, Mode::Ebpf | Mode::EbpfBigTcp);
    for (node, fp) in [(&c.a, &fps[0]), (&c.b, &fps[1])] {
        in_netns(&node.ns, || fp.detach_all())?;
        if attach {
            node.attach(fp)?;
        }
    }
    big_tcp(
        c,
        if matches!(mode, Mode::EbpfBigTcp | Mode::RoutesBigTcp) {
            BIG_TCP_SIZE
        } else {
            LEGACY_GSO_SIZE
        },
    )
}

/// BIG TCP on both ends of every veth (pod and wire), IPv6 and IPv4 sizes.
fn big_tcp(c: &Cluster, size: u32) -> Result<()> {
    for node in [&c.a, &c.b] {
        for (ns, dev) in [
            (&node.ns, UPLINK),
            (&node.ns, POD_VETH),
            (&node.pod, "eth0"),
        ] {
            in_netns(ns, || -> Result<()> {
                let ifindex = nix::net::if_::if_nametoindex(dev)?;
                Ok(set_gso_gro_max(ifindex, size)?)
            })?;
        }
    }
    Ok(())
}

fn iperf(c: &Cluster, mode: Mode, secs: u32) -> Result<f64> {
    let t = secs.to_string();
    let (from, to, port) = if mode == Mode::Native {
        (&c.a.ns, c.b.node_ip4(), "5202")
    } else {
        (&c.a.pod, c.b.pod_ip4(), "5201")
    };
    let out = must(
        from.cmd("iperf3")
            .args(["-c", &to, "-p", port, "-t", &t, "-J"]),
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 -J: no end.sum_received.bits_per_second")?;
    Ok(bps / 1e9)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}
