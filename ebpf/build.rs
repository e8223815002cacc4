//! Compiles the BPF C programs in bpf/ with clang (`-target bpf -O2 -g`, so the object carries
//! BTF for CO-RE and the kfunc calls) against libbpf's headers and the plain UAPI headers; no
//! vmlinux.h, so the build does not depend on the build machine's kernel.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const PROGRAMS: &[&str] = &["fastpath"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let clang = env::var("HOSTGW_CLANG").unwrap_or_else(|_| "clang".to_owned());
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=HOSTGW_CLANG");
    check_tools(&clang);
    // Debian keeps <asm/types.h> under the multiarch directory, which `-target bpf` does not search.
    let multiarch = format!("/usr/include/{}-linux-gnu", env::consts::ARCH);
    for name in PROGRAMS {
        let src = Path::new("bpf").join(format!("{name}.c"));
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
            .arg(format!("-I{multiarch}"))
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("hostgw-ebpf: cannot run {clang}: {e}"));
        assert!(
            status.success(),
            "hostgw-ebpf: {clang} failed on {}",
            src.display()
        );
    }
}

/// Fails the build with what to install, instead of a compiler error deep in a header.
fn check_tools(clang: &str) {
    let found = Command::new(clang).arg("--version").output();
    if !matches!(found, Ok(ref o) if o.status.success()) {
        panic!(
            "hostgw-ebpf: `{clang}` not found: the BPF programs are compiled with clang -target bpf; \
             install clang and libbpf-dev (bash scripts/setup.sh does), or set HOSTGW_CLANG"
        );
    }
    if !Path::new("/usr/include/bpf/bpf_helpers.h").is_file() {
        panic!(
            "hostgw-ebpf: /usr/include/bpf/bpf_helpers.h missing: install libbpf-dev (bash scripts/setup.sh does)"
        );
    }
}
