//! Who holds a reservation, and how that is written in a reservation file.

use serde::{Deserialize, Serialize};

use crate::{Error, error::Result};

/// A container's interface: the CNI key of a reservation. Serialises like an entry of
/// `cni.dev/valid-attachments` (`{"containerID": …, "ifname": …}`).
///
/// An empty `ifname` stands for a legacy file written before host-local stored the
/// interface name (content `<containerID>` only).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

const LINE_BREAK: &str = "\r\n";

// === impl Attachment ===

impl Attachment {
    pub fn new(container_id: impl Into<String>, ifname: impl Into<String>) -> Attachment {
        Attachment {
            container_id: container_id.into(),
            ifname: ifname.into(),
        }
    }

    /// Whether this came from a legacy id-only reservation file.
    pub fn is_legacy(&self) -> bool {
        self.ifname.is_empty()
    }

    /// host-local trims the container id both when it writes and when it compares, so
    /// `" abc "` and `"abc"` are the same attachment.
    pub(crate) fn normalized(&self) -> Attachment {
        Attachment::new(self.container_id.trim(), self.ifname.clone())
    }

    /// Refuses what would make the file ambiguous to read back.
    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |s: &str| s.contains(['\r', '\n']);
        if self.container_id.trim().is_empty() || bad(&self.container_id) || bad(&self.ifname) {
            return Err(Error::InvalidAttachment(self.clone()));
        }
        Ok(())
    }

    /// File content: `<containerID>\r\n<ifname>`, no trailing newline.
    pub(crate) fn encode(&self) -> String {
        format!("{}{LINE_BREAK}{}", self.container_id.trim(), self.ifname)
    }

    /// Reads any content: host-local compares the trimmed content, so do we. Content
    /// without a CRLF is a legacy id-only file; an empty file (host-local's crash
    /// leftover, issue #498) reads as an attachment with an empty id that nothing
    /// matches, so GC can free it.
    pub(crate) fn decode(content: &[u8]) -> Attachment {
        let text = String::from_utf8_lossy(content);
        let text = text.trim();
        match text.split_once(LINE_BREAK) {
            Some((id, ifname)) => Attachment::new(id.trim(), ifname),
            None => Attachment::new(text, ""),
        }
    }

    /// Whether a reservation held by `holder` belongs to `self` (normalised): the same
    /// (id, ifname), or a legacy file of the same container when `legacy` is allowed.
    pub(crate) fn owns(&self, holder: &Attachment, legacy: bool) -> bool {
        !holder.container_id.is_empty()
            && holder.container_id == self.container_id
            && (holder.ifname == self.ifname || (legacy && holder.is_legacy()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trim() {
        let a = Attachment::new("  abc \t", "eth0");
        assert_eq!(a.encode(), "abc\r\neth0");
        assert_eq!(
            Attachment::decode(b"abc\r\neth0"),
            Attachment::new("abc", "eth0")
        );
        assert_eq!(
            Attachment::decode(b" abc\r\neth0\n"),
            Attachment::new("abc", "eth0")
        );
    }

    #[test]
    fn legacy_and_empty() {
        let legacy = Attachment::decode(b"abc\n");
        assert!(legacy.is_legacy());
        assert_eq!(legacy.container_id, "abc");
        let empty = Attachment::decode(b"");
        assert_eq!(empty, Attachment::new("", ""));
        assert!(!Attachment::new("abc", "eth0").owns(&empty, true));
    }

    #[test]
    fn owns() {
        let me = Attachment::new("abc", "eth0");
        assert!(me.owns(&Attachment::new("abc", "eth0"), false));
        assert!(!me.owns(&Attachment::new("abc", "eth1"), true));
        assert!(!me.owns(&Attachment::new("abc", ""), false));
        assert!(me.owns(&Attachment::new("abc", ""), true));
    }

    #[test]
    fn validate() {
        assert!(Attachment::new("abc", "eth0").validate().is_ok());
        assert!(Attachment::new(" ", "eth0").validate().is_err());
        assert!(Attachment::new("a\r\nb", "eth0").validate().is_err());
        assert!(Attachment::new("abc", "eth\n0").validate().is_err());
    }

    #[test]
    fn json_shape() {
        let a: Attachment =
            serde_json::from_str(r#"{"containerID":"abc","ifname":"eth0"}"#).unwrap();
        assert_eq!(a, Attachment::new("abc", "eth0"));
    }
}
