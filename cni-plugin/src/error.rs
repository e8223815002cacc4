//! The plugin's errors, and the one place they become CNI error codes.

use std::io;

/// Everything that can go wrong in one plugin call.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("incompatible CNI versions")]
    IncompatibleVersion(String),
    #[error("{0}")]
    VersionNotAllowed(String),
    #[error("required env variables [{0}] missing")]
    MissingEnv(String),
    #[error("{msg}")]
    InvalidEnv { msg: String, details: String },
    #[error("unknown CNI_COMMAND: {0}")]
    UnknownCommand(String),
    #[error("read stdin: {0}")]
    Stdin(#[source] io::Error),
    #[error("error unmarshall network config: {0}")]
    Decode(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    TryAgain(String),
    #[error("{0}")]
    NotAvailable(String),
    #[error("{0}")]
    Ipam(#[from] hostgw_ipam::Error),
    #[error("{context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Check(String),
    /// Several failures of a best-effort verb (DEL, GC), reported together.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    List(Vec<Error>),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The CNI error code (spec §Error codes; 999 is the reference plugins' catch-all).
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion(_) | Error::VersionNotAllowed(_) => 1,
            Error::MissingEnv(_) | Error::InvalidEnv { .. } | Error::UnknownCommand(_) => 4,
            Error::Stdin(_) => 5,
            Error::Decode(_) => 6,
            Error::Config(_) => 7,
            Error::TryAgain(_) => 11,
            Error::NotAvailable(_) => 50,
            Error::Ipam(e) if e.is_transient() => 11,
            Error::Ipam(e) if e.is_config() => 7,
            Error::Ipam(e) if e.is_io() => 5,
            Error::Io { .. } => 5,
            Error::List(errors) => list_code(errors),
            Error::Ipam(_) | Error::Netlink { .. } | Error::Check(_) | Error::Internal(_) => 999,
        }
    }

    /// The spec's `details`: what a person needs beyond `msg`.
    pub fn details(&self) -> Option<String> {
        match self {
            Error::IncompatibleVersion(d) => Some(d.clone()),
            Error::InvalidEnv { details, .. } => Some(details.clone()),
            _ => None,
        }
    }

    /// The error object printed on stdout.
    pub fn to_json(&self, cni_version: Option<&str>) -> serde_json::Value {
        let mut v = serde_json::json!({ "code": self.code(), "msg": self.to_string() });
        if let Some(d) = self.details() {
            v["details"] = d.into();
        }
        if let Some(cv) = cni_version {
            v["cniVersion"] = cv.into();
        }
        v
    }

    pub fn netlink(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
        let context = context.into();
        move |source| Error::Netlink { context, source }
    }

    pub fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

/// One code for several errors: theirs when they agree, else "try again" when the first
/// says so (a retry may fix the rest), else 999.
fn list_code(errors: &[Error]) -> u32 {
    let first = errors.first().map_or(999, Error::code);
    if errors.iter().all(|e| e.code() == first) || first == 11 {
        first
    } else {
        999
    }
}

/// The errno inside a netlink error, if the kernel sent one.
pub fn netlink_errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_spec_table() {
        assert_eq!(Error::IncompatibleVersion(String::new()).code(), 1);
        assert_eq!(Error::MissingEnv("CNI_NETNS".into()).code(), 4);
        assert_eq!(Error::Stdin(io::Error::other("x")).code(), 5);
        assert_eq!(Error::Decode("x".into()).code(), 6);
        assert_eq!(Error::Config("x".into()).code(), 7);
        assert_eq!(Error::TryAgain("x".into()).code(), 11);
        assert_eq!(Error::NotAvailable("x".into()).code(), 50);
        assert_eq!(Error::Internal("x".into()).code(), 999);
    }

    #[test]
    fn json_carries_details_only_when_there_are_some() {
        let j = Error::MissingEnv("CNI_NETNS,CNI_IFNAME".into()).to_json(Some("1.0.0"));
        assert_eq!(j["code"], 4);
        assert_eq!(
            j["msg"],
            "required env variables [CNI_NETNS,CNI_IFNAME] missing"
        );
        assert_eq!(j["cniVersion"], "1.0.0");
        assert!(j.get("details").is_none());
        let j = Error::IncompatibleVersion("config is \"9.9.9\"".into()).to_json(None);
        assert_eq!(j["details"], "config is \"9.9.9\"");
        assert!(j.get("cniVersion").is_none());
    }
}
