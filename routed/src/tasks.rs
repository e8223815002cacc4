//! Running the daemon's long-lived tasks side by side in one task.

use std::{future::Future, pin::Pin};

use futures::{StreamExt, stream::FuturesUnordered};

/// One of the daemon's tasks, boxed (see `cmd::run`: its futures are large).
pub type Task<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Runs every task to completion, polling only the ones that were woken. `tokio::join!`
/// shares one waker among its futures and polls all of them on every wake: each lease
/// event woke the main task several times (etcd's stream, netlink's answer, the kernel's
/// echo), and each time all seven tasks and their `select!`s were polled again.
pub async fn join_all(tasks: impl IntoIterator<Item = Task<'_>>) {
    let mut all: FuturesUnordered<Task<'_>> = tasks.into_iter().collect();
    while all.next().await.is_some() {}
}
