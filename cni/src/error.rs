//! Errors, each mapped to the CNI error code the runtime sees.
//!
//! Codes 1–99 are the spec's well-known codes and are used only as the spec
//! defines them; 100+ are Ferry's own (listed on [`Error::code`]). 999 is
//! libcni's "internal error".

use std::io;

use serde_json::json;

/// Ferry's plugin-specific codes (the spec leaves 100+ to plugins).
pub mod codes {
    /// 1: the config's `cniVersion` is not one this plugin speaks (or the
    /// command needs a newer one).
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// 2: a field of the config asks for something Ferry does not do.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// 3: the container (its network namespace) does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// 4: a `CNI_*` variable is missing or invalid.
    pub const INVALID_ENV: u32 = 4;
    /// 5: reading stdin or a state file failed.
    pub const IO: u32 = 5;
    /// 6: stdin (or a `prevResult`) is not decodable.
    pub const DECODE: u32 = 6;
    /// 7: the config decodes but is not valid.
    pub const INVALID_CONFIG: u32 = 7;
    /// 11: a transient condition; the runtime should retry later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// 50 (STATUS): the plugin cannot serve ADDs right now.
    pub const PLUGIN_NOT_AVAILABLE: u32 = 50;
    /// 100: the kernel rejected a netlink request.
    pub const NETLINK: u32 = 100;
    /// 101: an interface with the requested (or derived) name already exists.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// 102: every address of a range set is taken.
    pub const NO_ADDRESSES: u32 = 102;
    /// 103 (CHECK): a resource of the attachment is missing or different.
    pub const CHECK_FAILED: u32 = 103;
    /// 104: a route the attachment needs already exists (e.g. the pod's
    /// default route, owned by another interface); it is never replaced.
    pub const ROUTE_EXISTS: u32 = 104;
    /// 999: anything else (libcni's `ErrInternal`).
    pub const INTERNAL: u32 = 999;
}

/// Everything that can go wrong in the plugin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incompatible CNI versions: {details}")]
    IncompatibleVersion { msg: String, details: String },
    #[error("unsupported field in network configuration: {key}={value}")]
    UnsupportedField { key: String, value: String },
    #[error("{0}")]
    UnknownContainer(String),
    #[error("{0}")]
    InvalidEnv(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Decode(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    TryAgainLater(String),
    #[error("{0}")]
    PluginNotAvailable(String),
    #[error("netlink: {context}: {source}")]
    Netlink {
        context: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    InterfaceExists(String),
    #[error("{0}")]
    NoAddresses(String),
    #[error("{0}")]
    CheckFailed(String),
    #[error("{0}")]
    RouteExists(String),
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The CNI error code for this error.
    pub fn code(&self) -> u32 {
        use codes::*;
        match self {
            Error::IncompatibleVersion { .. } => INCOMPATIBLE_VERSION,
            Error::UnsupportedField { .. } => UNSUPPORTED_FIELD,
            Error::UnknownContainer(_) => UNKNOWN_CONTAINER,
            Error::InvalidEnv(_) => INVALID_ENV,
            Error::Io { .. } => IO,
            Error::Decode(_) => DECODE,
            Error::InvalidConfig(_) => INVALID_CONFIG,
            Error::TryAgainLater(_) => TRY_AGAIN_LATER,
            Error::PluginNotAvailable(_) => PLUGIN_NOT_AVAILABLE,
            Error::Netlink { .. } => NETLINK,
            Error::InterfaceExists(_) => INTERFACE_EXISTS,
            Error::NoAddresses(_) => NO_ADDRESSES,
            Error::CheckFailed(_) => CHECK_FAILED,
            Error::RouteExists(_) => ROUTE_EXISTS,
            Error::Internal(_) => INTERNAL,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn netlink(context: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            context: context.into(),
            source,
        }
    }

    /// The spec's error object: `msg` short, `details` the full chain.
    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let (msg, details) = match self {
            Error::IncompatibleVersion { msg, details } => (msg.clone(), details.clone()),
            Error::Io { context, source } => (context.clone(), source.to_string()),
            Error::Netlink { context, source } => (context.clone(), source.to_string()),
            other => (other.to_string(), String::new()),
        };
        let mut obj = json!({ "cniVersion": cni_version, "code": self.code(), "msg": msg });
        if !details.is_empty() {
            obj["details"] = json!(details);
        }
        obj
    }
}

/// The positive errno carried by a netlink error message.
pub fn netlink_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.map(|c| -c.get()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = Error::InvalidEnv("required env variables [CNI_NETNS] missing".into());
        let v = e.to_json("1.0.0");
        assert_eq!(v["code"], 4);
        assert_eq!(v["cniVersion"], "1.0.0");
        assert!(v["msg"].as_str().is_some_and(|m| m.contains("CNI_NETNS")));
        assert!(v.get("details").is_none());
        let e = Error::IncompatibleVersion {
            msg: "incompatible CNI versions".into(),
            details: "config is \"0.2.0\"".into(),
        };
        let v = e.to_json("0.2.0");
        assert_eq!(v["code"], 1);
        assert_eq!(v["msg"], "incompatible CNI versions");
        assert_eq!(v["details"], "config is \"0.2.0\"");
    }
}
