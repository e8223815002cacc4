//! CNI spec versions this plugin speaks, and what each allows.

use crate::error::Error;

/// Oldest first. 0.1.0/0.2.0 are left out: their result shape (`ip4`/`ip6`) is from before
/// chaining, and no runtime that ships today asks for it.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The version a request speaks, after validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(u32, u32, u32);

impl Version {
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `MAJOR.MINOR.PATCH`; anything else is a decode error (code 6), as in skel.
    pub fn parse(s: &str) -> Result<Version, Error> {
        let parts: Vec<&str> = s.split('.').collect();
        let num = |p: &str| p.parse::<u32>().ok().filter(|_| !p.is_empty());
        match parts.as_slice() {
            [a, b, c] => match (num(a), num(b), num(c)) {
                (Some(a), Some(b), Some(c)) => Ok(Version(a, b, c)),
                _ => Err(Error::Decode(format!("invalid version {s:?}"))),
            },
            _ => Err(Error::Decode(format!("invalid version {s:?}"))),
        }
    }

    /// Parses and requires one of the exact strings this plugin supports (code 1
    /// otherwise): `01.0.0` reads as 1.0.0, but the result must carry the request's own
    /// string, and no runtime parses that back.
    pub fn negotiate(s: &str) -> Result<Version, Error> {
        let v = Version::parse(s)?;
        if SUPPORTED.contains(&s) {
            Ok(v)
        } else {
            Err(Error::IncompatibleVersion(format!(
                "config is {s:?}, plugin supports {SUPPORTED:?}"
            )))
        }
    }

    /// 0.3.x and 0.4.0 carry `version` in each `ips[]` entry; 1.x does not.
    pub fn ips_carry_version(self) -> bool {
        self < Version::V1_0_0
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_negotiates_and_prints_back() {
        for s in SUPPORTED {
            assert_eq!(Version::negotiate(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn unsupported_is_code_1_and_garbage_is_code_6() {
        assert_eq!(Version::negotiate("0.2.0").unwrap_err().code(), 1);
        assert_eq!(Version::negotiate("9.9.9").unwrap_err().code(), 1);
        for odd in ["01.0.0", "1.00.0", "0.4.00", "001.1.0"] {
            assert_eq!(Version::negotiate(odd).unwrap_err().code(), 1, "{odd}");
        }
        for bad in ["", "1", "1.0", "1.0.x", "a.b.c", "1..0", "-1.0.0"] {
            assert_eq!(Version::negotiate(bad).unwrap_err().code(), 6, "{bad}");
        }
    }

    #[test]
    fn ordering_follows_semver() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("0.3.1") < v("0.4.0") && v("0.4.0") < v("1.0.0") && v("1.0.0") < v("1.1.0"));
        assert!(v("0.4.0").ips_carry_version() && !v("1.0.0").ips_carry_version());
    }
}
