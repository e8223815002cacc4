//! `hostgw`: the CNI plugin binary. All logic lives in the library.
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(hostgw_cni::main_with_process_io());
}
