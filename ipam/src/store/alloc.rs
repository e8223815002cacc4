//! ADD: one address per pool, all or nothing.

use std::{collections::HashSet, net::IpAddr};

use super::{Locked, files};
use crate::{Attachment, Error, Pool, error::Result};

// === impl Locked ===

impl Locked<'_> {
    /// One address per pool, in pool order. `requested` IPs are matched to the pool whose
    /// subnet holds them and must be usable and free; the other pools go round-robin
    /// from after `last_reserved_ip.<index>`. On any failure the reservations this call
    /// made are released again.
    pub fn allocate(
        &mut self,
        pools: &[Pool],
        att: &Attachment,
        requested: &[IpAddr],
    ) -> Result<Vec<IpAddr>> {
        let me = att.normalized();
        me.validate()?;
        check_pools(pools)?;
        let wanted = match_requests(pools, requested)?;
        // One directory read serves the duplicate check and the list of taken IPs, so
        // round-robin skips taken addresses without a failed link() each.
        let entries = files::scan(self.dir(), true)?.strict()?;
        check_duplicate(pools, &entries, &me)?;
        let taken: HashSet<IpAddr> = entries.iter().map(|e| e.ip).collect();

        let mut got = Vec::with_capacity(pools.len());
        for (index, pool) in pools.iter().enumerate() {
            match self.allocate_one(index, pool, &me, wanted[index], &taken) {
                Ok(ip) => got.push(ip),
                Err(e) => return Err(self.roll_back(e, &got)),
            }
        }
        // Markers only after the whole call succeeded: a failed ADD leaves round-robin
        // where it was. host-local also advances the marker for requested IPs.
        for (index, ip) in got.iter().enumerate() {
            if let Err(e) = files::write_last_reserved(self.dir(), index, *ip) {
                return Err(self.roll_back(e, &got));
            }
        }
        Ok(got)
    }

    fn allocate_one(
        &mut self,
        index: usize,
        pool: &Pool,
        me: &Attachment,
        wanted: Option<IpAddr>,
        taken: &HashSet<IpAddr>,
    ) -> Result<IpAddr> {
        if let Some(ip) = wanted {
            if taken.contains(&ip) || !files::reserve(self.dir(), ip, me)? {
                return Err(Error::RequestedUnavailable {
                    ip,
                    range: pool.range_string(),
                });
            }
            return Ok(ip);
        }
        let last = files::read_last_reserved(self.dir(), index)?;
        for candidate in pool.candidates(last) {
            // reserve() can still find a name taken by something scan() skips (a
            // directory called like an IP); then just move on.
            if !taken.contains(&candidate) && files::reserve(self.dir(), candidate, me)? {
                return Ok(candidate);
            }
        }
        Err(Error::Exhausted {
            range: pool.range_string(),
            pool: index,
        })
    }

    fn roll_back(&mut self, cause: Error, got: &[IpAddr]) -> Error {
        let errors: Vec<Error> = got
            .iter()
            .filter_map(|ip| files::remove(self.dir(), &ip.to_string().into()).err())
            .collect();
        if errors.is_empty() {
            cause
        } else {
            Error::Rollback {
                cause: Box::new(cause),
                errors,
            }
        }
    }
}

fn check_pools(pools: &[Pool]) -> Result<()> {
    if pools.is_empty() {
        return Err(Error::NoPools);
    }
    for (i, pool) in pools.iter().enumerate() {
        pool.validate()?;
        if let Some(j) = pools[..i].iter().position(|p| p.overlaps(pool)) {
            return Err(Error::PoolsOverlap {
                first: j,
                second: i,
            });
        }
    }
    Ok(())
}

/// The requested IP of each pool, if any. Same IP twice counts once (host-local keeps
/// them in a map); a second, different IP for one pool is left over, as in host-local.
fn match_requests(pools: &[Pool], requested: &[IpAddr]) -> Result<Vec<Option<IpAddr>>> {
    let mut wanted: Vec<Option<IpAddr>> = vec![None; pools.len()];
    let mut unmatched = Vec::new();
    for &ip in requested {
        let Some(index) = pools.iter().position(|p| p.subnet.contains(ip)) else {
            unmatched.push(ip);
            continue;
        };
        let pool = &pools[index];
        if ip == pool.gateway {
            return Err(Error::RequestedIsGateway { ip });
        }
        if !pool.contains_usable(ip) {
            return Err(Error::RequestedNotInRange {
                ip,
                range: pool.range_string(),
            });
        }
        match wanted[index] {
            None => wanted[index] = Some(ip),
            Some(prev) if prev == ip => {}
            Some(_) => unmatched.push(ip),
        }
    }
    if unmatched.is_empty() {
        Ok(wanted)
    } else {
        Err(Error::RequestedUnmatched { ips: unmatched })
    }
}

/// host-local refuses a second address in a range set for the same (id, ifname) or for a
/// legacy file of the same container.
fn check_duplicate(pools: &[Pool], entries: &[files::Entry], me: &Attachment) -> Result<()> {
    for (index, pool) in pools.iter().enumerate() {
        let held = entries
            .iter()
            .find(|e| pool.subnet.contains(e.ip) && me.owns(&e.holder, true));
        if let Some(entry) = held {
            return Err(Error::Duplicate {
                ip: entry.ip,
                container_id: me.container_id.clone(),
                pool: index,
            });
        }
    }
    Ok(())
}
