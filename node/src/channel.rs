//! The channel protocol of `kubectl exec` over WebSocket (kubelet's
//! `v4.channel.k8s.io` and `v5.channel.k8s.io`): every binary message
//! starts with a channel byte — 0 stdin, 1 stdout, 2 stderr, 3 error (a
//! `metav1.Status` in JSON when the command ends), 4 resize (`{"Width":
//! .., "Height": ..}`) — and v5 adds 255, close: `[255, n]` closes
//! channel `n` (the client's end of stdin).

use serde_json::{Value, json};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
pub const CLOSE: u8 = 255;

/// A negotiated subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }
}

/// The first protocol of the client's list (`Sec-WebSocket-Protocol`, in
/// its order of preference) that is served, as Go's websocket server picks.
pub fn negotiate(offered: &str) -> Option<Protocol> {
    offered.split(',').map(str::trim).find_map(|p| match p {
        "v5.channel.k8s.io" => Some(Protocol::V5),
        "v4.channel.k8s.io" => Some(Protocol::V4),
        _ => None,
    })
}

/// What a message from the client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    Stdin(&'a [u8]),
    Resize {
        width: u16,
        height: u16,
    },
    CloseStdin,
    /// Empty, or for a channel this side does not read (ignored, as
    /// kubelet does).
    Ignored,
}

/// Reads one binary message from the client.
pub fn decode(protocol: Protocol, msg: &[u8]) -> Result<Inbound<'_>, String> {
    let Some((&channel, data)) = msg.split_first() else {
        return Ok(Inbound::Ignored);
    };
    match channel {
        STDIN => Ok(Inbound::Stdin(data)),
        RESIZE => {
            let v: Value = serde_json::from_slice(data)
                .map_err(|e| format!("a resize message that is not JSON: {e}"))?;
            let dim = |k: &str| {
                v.get(k)
                    .and_then(Value::as_u64)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(|| format!("a resize message without a valid {k}"))
            };
            Ok(Inbound::Resize {
                width: dim("Width")?,
                height: dim("Height")?,
            })
        }
        CLOSE if protocol == Protocol::V5 => match data.first() {
            Some(&STDIN) => Ok(Inbound::CloseStdin),
            _ => Ok(Inbound::Ignored),
        },
        _ => Ok(Inbound::Ignored),
    }
}

/// A message on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 1);
    out.push(channel);
    out.extend_from_slice(data);
    out
}

/// How the command ended, as the error channel tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// Killed by a signal (the number).
    Signaled(i32),
    /// It could not be run at all.
    Failed(String),
}

/// The `metav1.Status` the kubelet writes on the error channel:
/// `Success`, or `Failure` with reason `NonZeroExitCode` and a cause
/// `ExitCode` holding the code (what kubectl turns into its own exit code
/// and "command terminated with exit code N").
pub fn status(outcome: &Outcome) -> Value {
    let non_zero = |code: i32, how: String| {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: {how}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => non_zero(*code, format!("exit status {code}")),
        // As a shell reports it: 128 + the signal.
        Outcome::Signaled(sig) => non_zero(128 + sig, format!("signal {sig}")),
        Outcome::Failed(msg) => json!({
            "metadata": {},
            "status": "Failure",
            "message": msg,
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_first_served_protocol_wins() {
        assert_eq!(
            negotiate("v5.channel.k8s.io, v4.channel.k8s.io, v3.channel.k8s.io"),
            Some(Protocol::V5)
        );
        assert_eq!(
            negotiate("v3.channel.k8s.io,v4.channel.k8s.io"),
            Some(Protocol::V4)
        );
        assert_eq!(negotiate("channel.k8s.io, base64.channel.k8s.io"), None);
        assert_eq!(negotiate(""), None);
    }

    #[test]
    fn client_messages_decode_by_channel() {
        let v5 = Protocol::V5;
        assert_eq!(decode(v5, b"\x00hello"), Ok(Inbound::Stdin(b"hello")));
        assert_eq!(decode(v5, b""), Ok(Inbound::Ignored));
        assert_eq!(
            decode(v5, b"\x04{\"Width\":120,\"Height\":40}"),
            Ok(Inbound::Resize {
                width: 120,
                height: 40
            })
        );
        assert!(decode(v5, b"\x04{\"Width\":-1,\"Height\":40}").is_err());
        assert!(decode(v5, b"\x04not json").is_err());
        assert_eq!(decode(v5, &[CLOSE, STDIN]), Ok(Inbound::CloseStdin));
        assert_eq!(decode(v5, &[CLOSE, STDOUT]), Ok(Inbound::Ignored));
        // v4 has no close channel.
        assert_eq!(decode(Protocol::V4, &[CLOSE, STDIN]), Ok(Inbound::Ignored));
        assert_eq!(decode(v5, b"\x01output?"), Ok(Inbound::Ignored));
    }

    #[test]
    fn frames_carry_their_channel_first() {
        assert_eq!(frame(STDOUT, b"hi\n"), b"\x01hi\n");
        assert_eq!(frame(ERROR, b""), vec![3]);
    }

    #[test]
    fn the_exit_code_travels_as_kubelet_writes_it() {
        assert_eq!(
            status(&Outcome::Exited(0)),
            json!({"metadata": {}, "status": "Success"})
        );
        let s = status(&Outcome::Exited(3));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        let s = status(&Outcome::Signaled(9));
        assert_eq!(s["details"]["causes"][0]["message"], "137");
        let s = status(&Outcome::Failed("no such container".into()));
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["message"], "no such container");
        assert!(s["reason"] != "NonZeroExitCode");
    }
}
