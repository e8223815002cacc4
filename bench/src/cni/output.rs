//! What the CNI benchmark prints (Markdown tables, target checks) and writes (`--json`).

use std::path::Path;

use anyhow::{Context, Result};

use super::{
    Binaries, Options, Outcome,
    contender::Contender,
    report::{
        Floor, METHOD, Machine, Params, RSS_TARGET_KIB, Report, Summary, TABLE_HEAD, Target,
        fmt_ms, mib, pct, verdict,
    },
    sha,
};

pub(super) fn print_header(o: &Options, b: &Binaries, m: &Machine) {
    println!();
    println!("## hostgw CNI plugin vs reference bridge+host-local");
    println!(
        "machine: {} · {} CPUs · {} MiB RAM · kernel {} · {}",
        m.cpu_model,
        m.nproc,
        m.mem_total_kib / 1024,
        m.kernel,
        m.date
    );
    println!(
        "load avg: start {} · end {}",
        m.loadavg_start, m.loadavg_end
    );
    println!(
        "ours: {} ({} KiB, sha256 {}, git {} + working tree) · reference: /usr/lib/cni/bridge + host-local, containernetworking-plugins {} (sha256 {})",
        b.ours_src.display(),
        b.ours_size / 1024,
        b.ours_sha,
        b.git,
        b.ref_version,
        sha(&b.reference)
    );
    println!(
        "{} sequential ADD+DEL per contender (after {} warm-up), interleaved; burst of {} ADDs then {} DELs, {} reps (wall = median rep)",
        o.runs, o.warmup, o.burst, o.burst, o.burst_reps
    );
    println!(
        "times in ms, spawn→exit of `nsenter --net=<node> -- <plugin>`; RSS = ru_maxrss in a probe of each contender's calls, MiB"
    );
    println!();
}

pub(super) fn print_table(out: &Outcome) {
    println!("| {} |", TABLE_HEAD.join(" | "));
    println!("|{}", "---|".repeat(TABLE_HEAD.len()));
    for c in &out.contenders {
        let cells = [
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
        ];
        println!("| {} | {} |", c.label, cells.join(" | "));
    }
    let f = &out.floor;
    println!(
        "| floor (/bin/true) | {} | {} | | | | | | | | | {} |",
        fmt_ms(pct(&f.wall, 50.0)),
        fmt_ms(pct(&f.wall, 99.0)),
        mib(f.rss_kib)
    );
    println!();
}

pub(super) fn print_details(out: &Outcome, nproc: usize) {
    let join = |f: &dyn Fn(&Contender) -> String| {
        out.contenders.iter().map(f).collect::<Vec<_>>().join(" · ")
    };
    println!(
        "burst walls per rep (ms): {}",
        join(&|c| format!(
            "{} {:?}",
            c.label,
            c.burst_walls.iter().map(|w| w.round()).collect::<Vec<_>>()
        ))
    );
    println!(
        "peak RSS ADD/DEL (KiB): {}",
        join(&|c| format!("{} {}/{}", c.label, c.rss_add_kib, c.rss_del_kib))
    );
    println!(
        "CPU per call, user+sys ms, p50 (sequential ADD / DEL; burst ADD sum ÷ {nproc} CPUs = CPU-bound floor of the burst wall): {}",
        join(&|c| format!(
            "{} {} / {} ({:.0} ms)",
            c.label,
            fmt_ms(pct(&c.add_cpu, 50.0)),
            fmt_ms(pct(&c.del_cpu, 50.0)),
            pct(&c.burst_cpu, 50.0) / nproc.max(1) as f64
        ))
    );
    println!();
}

/// Prints and returns the target checks of ours against the reference.
pub(super) fn targets(out: &Outcome, burst: usize) -> Result<Vec<Target>> {
    let r = out
        .contenders
        .iter()
        .find(|c| c.label == "reference")
        .context("no reference contender")?;
    let floor_rss = out.floor.rss_kib;
    println!("targets:");
    let mut targets = Vec::new();
    for c in out.contenders.iter().filter(|c| c.label != "reference") {
        let add_ratio = pct(&c.add, 50.0) / pct(&r.add, 50.0);
        let burst_ratio = c.burst_wall() / r.burst_wall();
        let rss = c.rss_kib();
        let rss_note = if rss > floor_rss {
            "above the spawn floor: the plugin's own peak"
        } else {
            "not above the spawn floor: the plugin's own peak is at most this"
        };
        let l = c.label;
        println!(
            "  {l:<12} single ADD p50 {add_ratio:.2}× reference (target ≤ 0.50×): {}",
            verdict(add_ratio <= 0.5)
        );
        println!(
            "  {l:<12} burst-{burst} wall {burst_ratio:.2}× reference (target ≤ 0.50×): {}",
            verdict(burst_ratio <= 0.5)
        );
        println!(
            "  {l:<12} peak RSS {} MiB (target ≤ 5 MiB): {} ({rss_note}, floor {} MiB)",
            mib(rss),
            verdict(rss <= RSS_TARGET_KIB),
            mib(floor_rss)
        );
        targets.push(Target {
            contender: c.label,
            single_add_p50_ratio: add_ratio,
            single_add_met: add_ratio <= 0.5,
            burst_wall_ratio: burst_ratio,
            burst_met: burst_ratio <= 0.5,
            peak_rss_kib: rss,
            rss_met: rss <= RSS_TARGET_KIB,
            rss_above_floor: rss > floor_rss,
        });
    }
    println!(
        "  reference    peak RSS {} MiB (bridge and the host-local it waits for)",
        mib(r.rss_kib())
    );
    println!();
    Ok(targets)
}

pub(super) fn write_json(
    path: &Path,
    o: &Options,
    b: &Binaries,
    machine: Machine,
    out: Outcome,
    targets: Vec<Target>,
) -> Result<()> {
    let doc = Report {
        machine,
        git: b.git.clone(),
        ours_binary: b.ours_src.display().to_string(),
        ours_binary_sha256: b.ours_sha.clone(),
        reference_sha256: sha(&b.reference),
        ours_binary_bytes: b.ours_size,
        reference_version: b.ref_version.clone(),
        params: Params {
            runs: o.runs,
            warmup: o.warmup,
            burst: o.burst,
            burst_reps: o.burst_reps,
        },
        method: METHOD,
        contenders: out
            .contenders
            .iter()
            .map(|c| (c.label, c.report()))
            .collect(),
        floor: Floor {
            cmd: "/bin/true via the same spawn",
            wall: Summary::of(&out.floor.wall),
            peak_rss_kib: out.floor.rss_kib,
        },
        targets,
        node_links_after: out.node_links,
        phase_seconds: out.phases,
    };
    std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("write {}", path.display()))?;
    eprintln!("bench-cni: wrote {}", path.display());
    Ok(())
}
