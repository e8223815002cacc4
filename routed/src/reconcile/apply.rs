//! The dumb half of reconcile: apply a plan, removals first, in batches (see
//! `kernel::batch`), and collect per-route errors instead of stopping at the first.

use super::plan::{HostRoute, Plan};
use crate::kernel::{KernelError, RouteTable};

#[derive(Debug, Default)]
pub struct Applied {
    pub removed: Vec<HostRoute>,
    pub added: Vec<HostRoute>,
    pub errors: Vec<(HostRoute, KernelError)>,
}

pub async fn apply<R: RouteTable>(table: &R, plan: &Plan) -> Applied {
    let mut out = Applied::default();
    let removed = table.delete_all(&plan.remove).await;
    sort(&mut out, removed, true);
    let replaced = table.replace_all(&plan.replace).await;
    sort(&mut out, replaced, false);
    let created = table.create_all(&plan.add).await;
    sort(&mut out, created, false);
    out
}

fn sort(out: &mut Applied, results: Vec<(HostRoute, Result<(), KernelError>)>, removal: bool) {
    for (r, res) in results {
        match (res, removal) {
            (Ok(()), true) => out.removed.push(r),
            (Ok(()), false) => out.added.push(r),
            (Err(e), _) => out.errors.push((r, e)),
        }
    }
}
