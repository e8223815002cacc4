//! Prints what this kernel and process support for the fast path, and why not:
//! `cargo run -p hostgw-ebpf --example probe [PIN_DIR]` (default /sys/fs/bpf/hostgw).
//! Exits 1 when the daemon would keep plain routes.

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| hostgw_ebpf::DEFAULT_PIN_DIR.to_owned());
    let p = hostgw_ebpf::probe(std::path::Path::new(&dir));
    print!("{p}");
    if let Some(c) = p.first_failure() {
        println!("datapath: routes ({:?} unavailable)", c.feature);
        std::process::exit(1);
    }
    println!("datapath: ebpf possible");
}
