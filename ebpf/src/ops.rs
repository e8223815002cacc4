//! The seam for the daemon: what it does with the fast path, as a trait, with the real
//! `FastPath` and a `FakeFastPath` that records calls, so the daemon's lifecycle logic (attach on
//! start and on a new pod, detach on DEL and release) is unit-tested without a kernel.

use std::{collections::BTreeMap, sync::Mutex};

use crate::{
    error::{Error, Result},
    fastpath::{Attached, Attachment, FastPath},
    maps::{Counters, IfaceKind},
};

pub trait FastPathOps {
    fn attach_uplink(&self, ifindex: u32) -> Result<Attached>;
    fn attach_pod(&self, ifindex: u32) -> Result<Attached>;
    fn detach(&self, ifindex: u32) -> Result<bool>;
    fn detach_all(&self) -> Result<usize>;
    fn status(&self) -> Result<Vec<Attachment>>;
    fn counters(&self) -> Result<Counters>;
}

impl FastPathOps for FastPath {
    fn attach_uplink(&self, ifindex: u32) -> Result<Attached> {
        FastPath::attach_uplink(self, ifindex)
    }
    fn attach_pod(&self, ifindex: u32) -> Result<Attached> {
        FastPath::attach_pod(self, ifindex)
    }
    fn detach(&self, ifindex: u32) -> Result<bool> {
        FastPath::detach(self, ifindex)
    }
    fn detach_all(&self) -> Result<usize> {
        FastPath::detach_all(self)
    }
    fn status(&self) -> Result<Vec<Attachment>> {
        FastPath::status(self)
    }
    fn counters(&self) -> Result<Counters> {
        FastPath::counters(self)
    }
}

/// Keeps the attachments in memory, with the real one's answers (New/Replaced, idempotent
/// detach, BadIfindex for 0); `counters` answers whatever the test put in.
#[derive(Debug, Default)]
pub struct FakeFastPath {
    links: Mutex<BTreeMap<u32, IfaceKind>>,
    pub counters: Mutex<Counters>,
}

impl FakeFastPath {
    fn attach(&self, ifindex: u32, kind: IfaceKind) -> Result<Attached> {
        if ifindex == 0 {
            return Err(Error::BadIfindex(ifindex));
        }
        let old = self.links.lock().unwrap().insert(ifindex, kind);
        Ok(if old.is_some() {
            Attached::Replaced
        } else {
            Attached::New
        })
    }
}

impl FastPathOps for FakeFastPath {
    fn attach_uplink(&self, ifindex: u32) -> Result<Attached> {
        self.attach(ifindex, IfaceKind::Uplink)
    }
    fn attach_pod(&self, ifindex: u32) -> Result<Attached> {
        self.attach(ifindex, IfaceKind::Pod)
    }
    fn detach(&self, ifindex: u32) -> Result<bool> {
        Ok(self.links.lock().unwrap().remove(&ifindex).is_some())
    }
    fn detach_all(&self) -> Result<usize> {
        let mut links = self.links.lock().unwrap();
        let n = links.len();
        links.clear();
        Ok(n)
    }
    fn status(&self) -> Result<Vec<Attachment>> {
        let links = self.links.lock().unwrap();
        Ok(links
            .iter()
            .map(|(&ifindex, &kind)| Attachment {
                ifindex,
                kind: Some(kind),
                link_id: ifindex,
                prog_id: 1,
                attached: true,
                current: true,
            })
            .collect())
    }
    fn counters(&self) -> Result<Counters> {
        Ok(self.counters.lock().unwrap().clone())
    }
}

const _: fn() = || {
    fn assert<T: FastPathOps + Send + Sync>() {}
    assert::<FastPath>();
    assert::<FakeFastPath>();
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_answers_like_the_real_one() {
        let f = FakeFastPath::default();
        assert_eq!(f.attach_uplink(2).unwrap(), Attached::New);
        assert_eq!(f.attach_pod(7).unwrap(), Attached::New);
        assert_eq!(f.attach_pod(7).unwrap(), Attached::Replaced);
        assert!(matches!(f.attach_pod(0), Err(Error::BadIfindex(0))));
        let st = f.status().unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[1].kind, Some(IfaceKind::Pod));
        assert!(f.detach(7).unwrap());
        assert!(!f.detach(7).unwrap());
        assert_eq!(f.detach_all().unwrap(), 1);
        assert!(f.status().unwrap().is_empty());
    }
}
