//! A `RouteTable` for unit tests: an in-memory table that records every call.

use std::{
    cell::RefCell,
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use super::{HostRoute, KernelError, LocalView, NextHop, RouteTable};

#[derive(Debug, Default)]
pub struct FakeRoutes {
    pub routes: RefCell<BTreeSet<HostRoute>>,
    pub view: RefCell<LocalView>,
    /// Lookup answers; an address not listed is on-link.
    pub hops: RefCell<HashMap<IpAddr, NextHop>>,
    /// Destinations whose replace or create fails, with `failing_errno` (default ENOBUFS,
    /// a failure of this node; EINVAL would be the kernel refusing the route itself).
    pub failing: RefCell<BTreeSet<ipnetwork::IpNetwork>>,
    pub failing_errno: std::cell::Cell<Option<i32>>,
    pub calls: RefCell<Vec<String>>,
}

const _: fn() = || {
    fn assert<T: RouteTable>() {}
    assert::<FakeRoutes>();
};

impl FakeRoutes {
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn log(&self, s: String) {
        self.calls.borrow_mut().push(s);
    }

    fn replace_inner(&self, r: &HostRoute) -> Result<(), KernelError> {
        if self.failing.borrow().contains(&r.dst) {
            return Err(KernelError::Errno {
                op: format!("write {r}"),
                errno: self.failing_errno.get().unwrap_or(105),
            });
        }
        let mut routes = self.routes.borrow_mut();
        routes.retain(|x| x.slot() != r.slot());
        routes.insert(*r);
        Ok(())
    }
}

impl RouteTable for FakeRoutes {
    async fn list_owned(&self) -> Result<BTreeSet<HostRoute>, KernelError> {
        self.log("list".into());
        Ok(self.routes.borrow().clone())
    }

    async fn replace(&self, r: &HostRoute) -> Result<(), KernelError> {
        self.log(format!("replace {r}"));
        self.replace_inner(r)
    }

    async fn create(&self, r: &HostRoute) -> Result<(), KernelError> {
        self.log(format!("create {r}"));
        // As the kernel with NLM_F_EXCL: any route at the destination and metric, ours or
        // foreign (foreign routes are at the default metric, as a peer route is).
        let foreign = r.kind == super::Kind::Via && self.view.borrow().foreign.contains(&r.dst);
        let taken = self.routes.borrow().iter().any(|x| x.slot() == r.slot()) || foreign;
        if taken {
            return Err(KernelError::Errno {
                op: format!("create {r}"),
                errno: 17,
            });
        }
        self.replace_inner(r)
    }

    async fn delete(&self, r: &HostRoute) -> Result<(), KernelError> {
        self.log(format!("delete {r}"));
        self.routes.borrow_mut().remove(r);
        Ok(())
    }

    async fn local_view(&self) -> Result<LocalView, KernelError> {
        Ok(self.view.borrow().clone())
    }

    async fn lookup(&self, ip: IpAddr) -> Result<NextHop, KernelError> {
        self.log(format!("lookup {ip}"));
        Ok(self
            .hops
            .borrow()
            .get(&ip)
            .copied()
            .unwrap_or(NextHop::OnLink))
    }
}
