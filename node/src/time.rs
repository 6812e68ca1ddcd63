//! Timestamps as the API writes them.

use jiff::{Timestamp, Unit};

/// Now, RFC 3339 to the second (`metav1.Time`).
pub fn now() -> String {
    at(Timestamp::now())
}

/// `ts`, RFC 3339 to the second.
pub fn at(ts: Timestamp) -> String {
    ts.round(Unit::Second)
        .unwrap_or(ts)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Now, RFC 3339 to the microsecond (`metav1.MicroTime`, the Lease's).
pub fn now_micro() -> String {
    let ts = Timestamp::now();
    format!(
        "{}.{:06}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        ts.subsec_microsecond()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        let s = super::now();
        assert_eq!(s.len(), "2025-01-01T00:00:00Z".len(), "{s}");
        let m = super::now_micro();
        assert_eq!(m.len(), "2025-01-01T00:00:00.000000Z".len(), "{m}");
    }
}
