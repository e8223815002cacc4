//! The two libbpf calls libbpf-rs 0.27 has no safe wrapper for: attaching a tcx link and
//! querying a tcx hook. The only `unsafe` code of the crate.
#![allow(unsafe_code)]

use std::{mem, ptr::NonNull};

use libbpf_rs::{AsRawLibbpf, Link, Program};

/// Attaches `prog` to the tcx hook of its expected attach type (`SEC("tcx/ingress")`) on
/// `ifindex`, appended after any program already there. The caller must be in the netns of
/// the interface: the kernel resolves the ifindex in the caller's namespace.
pub(crate) fn attach_tcx(prog: &Program<'_>, ifindex: u32) -> libbpf_rs::Result<Link> {
    let ifindex =
        i32::try_from(ifindex).map_err(|_| libbpf_rs::Error::from_raw_os_error(EINVAL))?;
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: mem::size_of::<libbpf_sys::bpf_tcx_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    // SAFETY: the program pointer is valid for the borrow of `prog`, which belongs to a loaded
    // object; `opts` lives across the call; libbpf returns either NULL (errno set) or a link
    // whose ownership passes to us, which `Link::from_ptr` takes.
    let link = unsafe {
        libbpf_sys::bpf_program__attach_tcx(prog.as_libbpf_object().as_ptr(), ifindex, &opts)
    };
    match NonNull::new(link) {
        Some(p) => Ok(unsafe { Link::from_ptr(p) }),
        None => Err(libbpf_rs::Error::from(std::io::Error::last_os_error())),
    }
}

/// How many programs sit on the tcx ingress hook of `ifindex`; an error when the kernel has
/// no tcx (it answers EINVAL to the attach type).
pub(crate) fn query_tcx_ingress(ifindex: u32) -> Result<u32, i32> {
    let mut opts = libbpf_sys::bpf_prog_query_opts {
        sz: mem::size_of::<libbpf_sys::bpf_prog_query_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized, zeroed query with no output arrays; libbpf only
    // writes the counters back into it.
    let rc = unsafe {
        libbpf_sys::bpf_prog_query_opts(ifindex as i32, libbpf_sys::BPF_TCX_INGRESS, &mut opts)
    };
    if rc < 0 {
        return Err(-rc);
    }
    // SAFETY: both union members are the same u32.
    Ok(unsafe { opts.__bindgen_anon_1.count })
}

const EINVAL: i32 = 22;

/// The kernel's id of a loaded program, to tell which program a pinned link runs.
pub(crate) fn prog_id(prog: &Program<'_>) -> libbpf_rs::Result<u32> {
    use std::os::fd::{AsFd, AsRawFd};
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a zeroed bpf_prog_info of `len` bytes with no output arrays requested;
    // the kernel writes at most `len` bytes into it.
    let rc = unsafe {
        libbpf_sys::bpf_prog_get_info_by_fd(prog.as_fd().as_raw_fd(), &mut info, &mut len)
    };
    if rc < 0 {
        return Err(libbpf_rs::Error::from_raw_os_error(-rc));
    }
    Ok(info.id)
}
