//! The node ports that source-translated flows from outside take.
//!
//! A NodePort flow to a backend on another node leaves the entry node from
//! the node's own address; its replies come back to `node:port` and the
//! programs find the flow by that port. A port the node's own sockets could
//! pick would take their replies too: a local connection to the same
//! backend from that port hangs (the programs hand its SYN-ACK to the
//! outside client). So the range (`--nat-port-range`, default 61000-65535)
//! must stay outside the kernel's ephemeral range (`ip_local_port_range`,
//! 32768-60999 by default). Where a user's ranges overlap, the agent does as
//! Cilium does for its NodePort range: it adds the NAT range to
//! `ip_local_reserved_ports`, so the kernel never picks those ports for a
//! socket of its own.
//!
//! Owns only the range and those two sysctls of the node's network
//! namespace; it writes nothing when the ranges do not overlap.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ferry_ebpf_common::{NAT_PORT_MAX_DEFAULT, NAT_PORT_MIN_DEFAULT};
use thiserror::Error;

/// An inclusive port range, `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatPorts {
    pub min: u16,
    pub max: u16,
}

impl Default for NatPorts {
    fn default() -> Self {
        Self {
            min: NAT_PORT_MIN_DEFAULT,
            max: NAT_PORT_MAX_DEFAULT,
        }
    }
}

impl fmt::Display for NatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

#[derive(Debug, Error)]
pub enum NatPortsError {
    #[error("{0:?} is not a port range: expected MIN-MAX, e.g. 61000-65535")]
    Syntax(String),
    #[error(
        "{0}: the range must lie in 1024-65535 with MIN <= MAX and hold at least 1024 ports \
         (a flow from outside to one backend takes one port per client connection)"
    )]
    Bounds(NatPorts),
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not a port range")]
    Sysctl { path: PathBuf, text: String },
    #[error("reserving the NAT ports in {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Fewest ports a range may hold.
const MIN_SPAN: u32 = 1024;

impl FromStr for NatPorts {
    type Err = NatPortsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || NatPortsError::Syntax(s.to_owned());
        let (min, max) = s.trim().split_once('-').ok_or_else(syntax)?;
        let range = NatPorts {
            min: min.trim().parse().map_err(|_| syntax())?,
            max: max.trim().parse().map_err(|_| syntax())?,
        };
        if range.min < 1024 || range.max < range.min || range.ports() < MIN_SPAN {
            return Err(NatPortsError::Bounds(range));
        }
        Ok(range)
    }
}

impl NatPorts {
    /// How many ports the range holds.
    pub fn ports(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    fn overlaps(&self, lo: u16, hi: u16) -> bool {
        self.min <= hi && lo <= self.max
    }

    /// Keeps the kernel from picking these ports for the node's own sockets
    /// (see the module's doc), in the calling thread's network namespace.
    /// Returns whether it had to add a reservation.
    pub fn keep_from_local_sockets(&self) -> Result<bool, NatPortsError> {
        self.keep_from_local_sockets_in(Path::new("/proc/sys/net/ipv4"))
    }

    fn keep_from_local_sockets_in(&self, dir: &Path) -> Result<bool, NatPortsError> {
        let range_path = dir.join("ip_local_port_range");
        let text = read(&range_path)?;
        let mut words = text.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(lo)), Some(Ok(hi))) = (words.next(), words.next()) else {
            return Err(NatPortsError::Sysctl {
                path: range_path,
                text,
            });
        };
        if !self.overlaps(lo, hi) {
            return Ok(false);
        }
        let reserved_path = dir.join("ip_local_reserved_ports");
        let reserved = read(&reserved_path)?;
        if reserved_covers(&reserved, *self) {
            return Ok(false);
        }
        let mut entries: Vec<&str> = reserved
            .trim()
            .split(',')
            .filter(|e| !e.is_empty())
            .collect();
        let own = self.to_string();
        entries.push(&own);
        std::fs::write(&reserved_path, entries.join(",")).map_err(|source| {
            NatPortsError::Write {
                path: reserved_path,
                source,
            }
        })?;
        Ok(true)
    }
}

fn read(path: &Path) -> Result<String, NatPortsError> {
    std::fs::read_to_string(path).map_err(|source| NatPortsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Whether `ip_local_reserved_ports` (`8080,61000-65535`) holds every port
/// of `range` in one of its entries.
fn reserved_covers(reserved: &str, range: NatPorts) -> bool {
    reserved.trim().split(',').any(|entry| {
        let (lo, hi) = entry.split_once('-').unwrap_or((entry, entry));
        matches!(
            (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()),
            (Ok(lo), Ok(hi)) if lo <= range.min && range.max <= hi
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_bounds_ranges() {
        assert_eq!(
            "61000-65535".parse::<NatPorts>().unwrap(),
            NatPorts::default()
        );
        assert_eq!(
            " 20000 - 29999 ".parse::<NatPorts>().unwrap(),
            NatPorts {
                min: 20000,
                max: 29999
            }
        );
        for bad in ["", "61000", "a-b", "61000-70000", "-1-5"] {
            assert!(
                matches!(bad.parse::<NatPorts>(), Err(NatPortsError::Syntax(_))),
                "{bad}"
            );
        }
        for bad in ["100-5000", "65535-61000", "61000-61100"] {
            let err = bad.parse::<NatPorts>().unwrap_err();
            assert!(matches!(err, NatPortsError::Bounds(_)), "{bad}: {err}");
            assert!(err.to_string().contains("1024"), "{err}");
        }
    }

    fn sysctls(range: &str, reserved: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ip_local_port_range"), range).unwrap();
        std::fs::write(dir.path().join("ip_local_reserved_ports"), reserved).unwrap();
        dir
    }

    fn reserved(dir: &tempfile::TempDir) -> String {
        std::fs::read_to_string(dir.path().join("ip_local_reserved_ports")).unwrap()
    }

    #[test]
    fn reserves_only_an_overlapping_range_and_only_once() {
        // The kernel's default ranges do not meet: nothing is written.
        let dir = sysctls("32768\t60999\n", "\n");
        let nat = NatPorts::default();
        assert!(!nat.keep_from_local_sockets_in(dir.path()).unwrap());
        assert_eq!(reserved(&dir), "\n");

        // A widened ephemeral range does: the NAT range is appended to what
        // was reserved, and a second start finds it there.
        let dir = sysctls("1024\t65535\n", "8080,9000-9100\n");
        assert!(nat.keep_from_local_sockets_in(dir.path()).unwrap());
        assert_eq!(reserved(&dir), "8080,9000-9100,61000-65535");
        assert!(!nat.keep_from_local_sockets_in(dir.path()).unwrap());
        assert_eq!(reserved(&dir), "8080,9000-9100,61000-65535");

        // A wider reservation already covers it.
        let dir = sysctls("1024 65535", "60000-65535");
        assert!(!nat.keep_from_local_sockets_in(dir.path()).unwrap());

        let dir = sysctls("garbage", "");
        assert!(matches!(
            nat.keep_from_local_sockets_in(dir.path()),
            Err(NatPortsError::Sysctl { .. })
        ));
    }
}
