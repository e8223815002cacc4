//! The convergence curve of a cold start as SVG: routes installed across the cluster over
//! time, against the N × (N-1) target and the kernel floor (the time `ip -batch` alone
//! needed). `crate::chart` draws grouped bars; a curve needs axes of its own.

use std::fmt::Write as _;

use super::Report;
use crate::chart::nice_ceiling;

const W: f64 = 720.0;
const H: f64 = 360.0;
const L: f64 = 80.0;
const B: f64 = 50.0;

pub fn convergence_svg(r: &Report) -> String {
    let pts = &r.cold.curve;
    let target = r.floor.routes as f64;
    let t_max = nice_ceiling(
        pts.last()
            .map_or(1.0, |p| p.0)
            .max(r.floor.secs * 2.0)
            .max(0.1),
    );
    let y_max = nice_ceiling(target.max(1.0));
    let (pw, ph) = (W - L - 20.0, H - B - 40.0);
    let x = |t: f64| L + t / t_max * pw;
    let y = |v: f64| 40.0 + ph - v / y_max * ph;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{L}\" y=\"22\" font-size=\"14\">Cold start of {} hostgw-routed daemons ({} etcd member(s)): routes installed across the cluster</text>\n",
        r.nodes, r.etcd_members
    );
    for k in 0..=4 {
        let (tv, yv) = (t_max * k as f64 / 4.0, y_max * k as f64 / 4.0);
        let _ = writeln!(
            s,
            "<line x1=\"{L}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{yv:.0}</text>\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{tv:.1} s</text>",
            L + pw,
            y(yv),
            y(yv),
            L - 6.0,
            y(yv) + 4.0,
            x(tv),
            H - B + 18.0
        );
    }
    let line: Vec<String> = pts
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v as f64)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"{}\"/>",
        line.join(" ")
    );
    let _ = writeln!(
        s,
        "<line x1=\"{L}\" x2=\"{}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#2ca02c\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#2ca02c\">N × (N-1) = {target:.0}</text>",
        L + pw,
        y(target),
        y(target),
        L + pw,
        y(target) - 4.0
    );
    for (k, (t, label, colour)) in [
        (r.floor.secs, "kernel floor (ip -batch)", "#d62728"),
        (r.floor.secs * 2.0, "2 × floor (target)", "#ff7f0e"),
        (
            r.floor.listening_secs,
            "floor with a listener per namespace",
            "#9467bd",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let _ = writeln!(
            s,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"40\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"/><text x=\"{:.1}\" y=\"{:.1}\" fill=\"{colour}\">{label}</text>",
            x(t),
            x(t),
            40.0 + ph,
            x(t) + 4.0,
            40.0 + ph - 8.0 - 14.0 * k as f64
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">seconds since the first daemon was started (from the daemons' log timestamps)</text>\n</svg>",
        L + pw / 2.0,
        H - 8.0
    );
    s
}
