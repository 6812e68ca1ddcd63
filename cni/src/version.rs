//! CNI spec versions: which ones the plugin speaks and what each allows.

use std::fmt;

use crate::error::{Error, Result};

/// The versions a config may ask for; results are produced in exactly the
/// version the config names.
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version, used for output when the config's version
/// is unknown (e.g. an error before stdin could be decoded).
pub const LATEST: &str = "1.1.0";

/// A parsed `major.minor.patch` spec version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    pub const V0_3_0: Version = Version(0, 3, 0);
    pub const V0_4_0: Version = Version(0, 4, 0);
    pub const V1_0_0: Version = Version(1, 0, 0);
    pub const V1_1_0: Version = Version(1, 1, 0);

    /// Parses `X.Y.Z` (a SemVer 2.0 core version; no pre-release tags, which
    /// no CNI version has).
    pub fn parse(s: &str) -> Option<Version> {
        let mut parts = s.split('.');
        let mut next = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty()
                || !p.bytes().all(|b| b.is_ascii_digit())
                || (p.len() > 1 && p.starts_with('0'))
            {
                return None;
            }
            p.parse().ok()
        };
        let v = Version(next()?, next()?, next()?);
        if parts.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// Results of 0.3.x and 0.4.0 carry `ips[].version`; 1.0.0 dropped it.
    pub fn has_ip_version_field(self) -> bool {
        self < Version::V1_0_0
    }

    /// 1.1.0 added interface `mtu` and route `mtu`, `advmss`, `priority`,
    /// `table` and `scope`.
    pub fn has_1_1_fields(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The config's `cniVersion`, checked against [`SUPPORTED`]. A missing
/// version means 0.1.0 (as libcni decodes it), which is not supported: code 1.
/// A string that is not a version at all is a decoding failure: code 6.
pub fn negotiate(config_version: Option<&str>) -> Result<Version> {
    let raw = config_version.filter(|s| !s.is_empty()).unwrap_or("0.1.0");
    let Some(v) = Version::parse(raw) else {
        return Err(Error::Decode(format!(
            "cannot decode cniVersion {raw:?} as a version"
        )));
    };
    if !SUPPORTED.contains(&raw) {
        return Err(incompatible(raw));
    }
    Ok(v)
}

/// Error 1 for a version outside [`SUPPORTED`].
pub fn incompatible(raw: &str) -> Error {
    Error::IncompatibleVersion {
        msg: "incompatible CNI versions".into(),
        details: format!("config is {raw:?}, plugin supports {:?}", SUPPORTED),
    }
}

/// Error 1 for a command the config's version predates (CHECK before 0.4.0,
/// GC and STATUS before 1.1.0).
pub fn require(v: Version, min: Version, command: &str) -> Result<()> {
    if v < min {
        return Err(Error::IncompatibleVersion {
            msg: format!("config version does not allow {command}"),
            details: format!("{command} needs cniVersion {min} or later, config is {v}"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_order() {
        assert_eq!(Version::parse("1.1.0"), Some(Version::V1_1_0));
        assert_eq!(Version::parse("0.3.1"), Some(Version(0, 3, 1)));
        for bad in [
            "", "1", "1.0", "1.0.0.0", "a.b.c", "01.0.0", "1.0.-1", "1..0",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad}");
        }
        assert!(Version::V0_3_0 < Version(0, 3, 1));
        assert!(Version(0, 3, 1) < Version::V0_4_0);
        assert!(Version::V0_4_0.has_ip_version_field());
        assert!(!Version::V1_0_0.has_ip_version_field());
        assert!(Version::V1_1_0.has_1_1_fields());
    }

    #[test]
    fn negotiation() {
        for v in SUPPORTED {
            assert_eq!(
                negotiate(Some(v)).ok().map(|v| v.to_string()),
                Some(v.to_string())
            );
        }
        assert_eq!(negotiate(None).err().map(|e| e.code()), Some(1));
        assert_eq!(negotiate(Some("0.2.0")).err().map(|e| e.code()), Some(1));
        assert_eq!(negotiate(Some("9.9.9")).err().map(|e| e.code()), Some(1));
        assert_eq!(negotiate(Some("latest")).err().map(|e| e.code()), Some(6));
        assert_eq!(
            require(Version(0, 3, 1), Version::V0_4_0, "CHECK")
                .err()
                .map(|e| e.code()),
            Some(1)
        );
        assert!(require(Version::V1_1_0, Version::V1_1_0, "GC").is_ok());
    }
}
