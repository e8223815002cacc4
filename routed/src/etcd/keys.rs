//! The key layout under the prefix.

#[derive(Debug, Clone)]
pub struct Keys {
    pub prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    /// Everything under the prefix: the one range the watcher lists and watches.
    pub fn prefix_dir(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn subnet(&self, name: &str) -> String {
        format!("{}{name}", self.subnets())
    }

    /// The key's name under `subnets/`, if it is one.
    pub fn name<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(&self.subnets())
    }
}
