//! The data-plane suite's smoke run, so that it cannot rot: every mode once for one second,
//! asserting only that every mode passes traffic and that the outputs are well-formed.

use hostgw_bench::dataplane;
use hostgw_harness::require_root;
use serde_json::Value;

#[test]
fn dataplane_heavy_smoke() {
    require_root();
    let out = tempfile::tempdir().unwrap();
    let mut opts = dataplane::Options::smoke(out.path().to_path_buf());
    opts.command = "dataplane_heavy_smoke (bench-dataplane --smoke)".into();
    let report = dataplane::run(&opts, &mut |line| eprintln!("{line}")).expect("smoke run");

    let text = std::fs::read_to_string(out.path().join("dataplane.json")).unwrap();
    let json: Value = serde_json::from_str(&text).expect("dataplane.json is JSON");
    assert_eq!(json, serde_json::to_value(&report).unwrap());
    let modes = json["modes"].as_array().expect("modes");
    let ids: Vec<&str> = modes.iter().filter_map(|m| m["id"].as_str()).collect();
    let all: Vec<&str> = dataplane::MODES.iter().map(|(id, ..)| *id).collect();
    assert_eq!(ids, all, "every mode measured, in order");
    for m in modes {
        let id = m["id"].as_str().unwrap();
        for k in ["tcp_1", "tcp_4"] {
            let g = m[k]["gbps"]["median"].as_f64().unwrap_or(0.0);
            assert!(g > 0.0, "{id}: no {k} throughput: {m}");
        }
        for k in ["p50", "p99"] {
            let v = m["latency_us"][k]["median"].as_f64().unwrap_or(0.0);
            assert!(v > 0.0, "{id}: no latency {k}: {m}");
        }
        assert!(
            m["ratio_to_native"]["tcp_1"].as_f64().is_some(),
            "{id}: ratio"
        );
    }
    // Issue 5's 3 targets × 2 hostgw modes, then issue 13's: 3 concurrent A/B targets per
    // partner (ebpf: native; ebpf-bigtcp: native and native-bigtcp) + 1 latency target each.
    assert_eq!(
        json["targets"].as_array().map(Vec::len),
        Some(6 + (3 + 1) + (3 * 2 + 1)),
        "every target checked"
    );
    for id in ["hostgw-ptp-ebpf", "hostgw-ptp-ebpf-bigtcp"] {
        let m = json["modes"]
            .as_array()
            .and_then(|v| v.iter().find(|m| m["id"] == id))
            .unwrap();
        let ab = m["concurrent"].as_array().map(Vec::len).unwrap_or(0);
        assert!(ab >= 2, "{id}: concurrent A/B figures: {m}");
    }
    let ab = dataplane::concurrent_table(&report);
    assert!(ab.contains("| hostgw-ptp-ebpf | native | 1 |"), "{ab}");

    let svg = std::fs::read_to_string(out.path().join("dataplane.svg")).unwrap();
    assert!(svg.starts_with("<svg"), "SVG starts with <svg");
    assert!(svg.trim_end().ends_with("</svg>"), "SVG is closed");
    for (_, label, _) in dataplane::MODES {
        let label = label.replace('&', "&amp;");
        assert!(
            svg.contains(&format!(">{label}<")),
            "SVG labels mode {label}"
        );
    }
    let table = dataplane::table(&report);
    for id in all {
        assert!(table.contains(&format!("| {id} |")), "table row for {id}");
    }
}
