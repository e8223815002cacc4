//! Text that comes from outside (etcd, the command line) and goes to a person: node names
//! are checked, and everything printed from etcd is escaped, so a record in etcd can
//! neither forge lines in `status` nor drive the operator's terminal.

use std::{borrow::Cow, fmt::Write};

/// Longest node name: a DNS-1123 subdomain, as Kubernetes requires of node names.
pub const NODE_NAME_MAX: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node name {shown}: {why}")]
pub struct NodeNameError {
    shown: String,
    why: &'static str,
}

/// A DNS-1123 subdomain: 1 to 253 characters of `a-z`, `0-9`, `-` and `.`, starting and
/// ending with a letter or digit. Kubernetes node names are of this form.
pub fn check_node_name(name: &str) -> Result<(), NodeNameError> {
    let fail = |why| {
        Err(NodeNameError {
            shown: format!("\"{}\"", escape(name)),
            why,
        })
    };
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.is_empty() {
        return fail("is empty");
    }
    if name.len() > NODE_NAME_MAX {
        return fail("is longer than 253 characters");
    }
    if !name.chars().all(|c| alnum(c) || c == '-' || c == '.') {
        return fail("may hold only a-z, 0-9, '-' and '.'");
    }
    if !name.starts_with(alnum) || !name.ends_with(alnum) {
        return fail("must start and end with a letter or digit");
    }
    Ok(())
}

/// clap value parser for `--node-name`.
pub fn parse_node_name(s: &str) -> Result<String, NodeNameError> {
    check_node_name(s).map(|()| s.to_owned())
}

/// `s` with every control character (C0, DEL, C1: ESC and CSI among them), and the Unicode
/// bidirectional and line/paragraph separators, written as `\u{..}` (`\n`, `\r`, `\t` and
/// `\\` as such). Borrowed when there is nothing to escape, which is the usual case.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Serialised JSON with the characters serde_json leaves raw (DEL, C1 controls such as the
/// one-byte CSI, bidi and line separators) written as `\uXXXX`. Still the same JSON: such
/// characters can only occur inside strings, where any character may be escaped so.
pub fn escape_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        // Below 0x20 serde_json has escaped already (and pretty-printing's newlines stay).
        if needs_escape(c) && !matches!(c, '\0'..='\x1f' | '\\') {
            let _ = write!(out, "\\u{:04x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        for good in [
            "node-0",
            "a",
            "ip-10-0-0-1.ec2.internal",
            "0",
            &"a".repeat(253),
        ] {
            assert!(check_node_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "Node",
            "a b",
            "a_b",
            "a\nb",
            "a\x1b[2Jb",
            "a/b",
            "é",
            &"a".repeat(254),
        ] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
        let e = check_node_name("x\x1b[31m\n").unwrap_err().to_string();
        assert!(!e.contains('\x1b') && !e.contains('\n'), "{e}");
    }

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert!(matches!(escape("node-a 198.18.1.0/24"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb"), "a\\nb");
        assert_eq!(escape("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("\u{7f}"), "\\u{7f}");
        assert_eq!(
            escape("a\\nb"),
            "a\\\\nb",
            "a literal backslash can't fake an escape"
        );
        assert_eq!(escape("\u{202e}abc"), "\\u{202e}abc");
        let json = serde_json::to_string(&"a\u{9b}b\u{7f}\u{202e}\n\\").unwrap();
        let safe = escape_json(&json);
        assert!(
            safe.chars().all(|c| !needs_escape(c) || c == '\\'),
            "{safe}"
        );
        assert_eq!(
            serde_json::from_str::<String>(&safe).unwrap(),
            "a\u{9b}b\u{7f}\u{202e}\n\\"
        );
        for c in (0u32..0x20).chain(0x7f..0xa0) {
            let s = char::from_u32(c).unwrap().to_string();
            assert!(escape(&s).chars().all(|c| !c.is_control()), "{c:#x}");
        }
    }
}
