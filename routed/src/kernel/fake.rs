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
    /// Destinations whose replace fails.
    pub failing: RefCell<BTreeSet<ipnetwork::IpNetwork>>,
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
}

impl RouteTable for FakeRoutes {
    async fn list_owned(&self) -> Result<BTreeSet<HostRoute>, KernelError> {
        self.log("list".into());
        Ok(self.routes.borrow().clone())
    }

    async fn replace(&self, r: &HostRoute) -> Result<(), KernelError> {
        self.log(format!("replace {r}"));
        if self.failing.borrow().contains(&r.dst) {
            return Err(KernelError::Errno {
                op: format!("replace {r}"),
                errno: 101,
            });
        }
        let mut routes = self.routes.borrow_mut();
        routes.retain(|x| x.dst != r.dst);
        routes.insert(*r);
        Ok(())
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
