//! Decoding of `application/vnd.kubernetes.protobuf` request bodies into
//! JSON, for the kinds kubectl's typed clients send that way
//! (`kubectl create namespace|configmap|secret|serviceaccount|service ...`).
//!
//! The envelope is the 4-byte magic `k8s\0` followed by a `runtime.Unknown`
//! whose `raw` field holds the object message. Each message is decoded by a
//! small table of field numbers and JSON names taken from the Kubernetes
//! `generated.proto` definitions. Responses are always JSON: kubectl accepts
//! it alongside protobuf.

use base64::Engine;
use serde_json::{Map, Value, json};

use crate::error::ApiError;

const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    Int,
    Bool,
    Msg(&'static [Field]),
    /// map<string,string>
    StrMap,
    /// map<string,bytes>, base64 in JSON
    BytesMap,
    IntOrString,
    Time,
    /// Raw JSON bytes (FieldsV1).
    RawJson,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    num: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

const fn f(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: false,
    }
}

const fn r(num: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        num,
        name,
        ty,
        repeated: true,
    }
}

const OWNER_REFERENCE: &[Field] = &[
    f(5, "apiVersion", Ty::Str),
    f(1, "kind", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(6, "controller", Ty::Bool),
    f(7, "blockOwnerDeletion", Ty::Bool),
];
const MANAGED_FIELDS: &[Field] = &[
    f(1, "manager", Ty::Str),
    f(2, "operation", Ty::Str),
    f(3, "apiVersion", Ty::Str),
    f(4, "time", Ty::Time),
    f(6, "fieldsType", Ty::Str),
    f(7, "fieldsV1", Ty::RawJson),
    f(8, "subresource", Ty::Str),
];
const OBJECT_META: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "generateName", Ty::Str),
    f(3, "namespace", Ty::Str),
    f(5, "uid", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "generation", Ty::Int),
    f(8, "creationTimestamp", Ty::Time),
    f(9, "deletionTimestamp", Ty::Time),
    f(10, "deletionGracePeriodSeconds", Ty::Int),
    f(11, "labels", Ty::StrMap),
    f(12, "annotations", Ty::StrMap),
    r(13, "ownerReferences", Ty::Msg(OWNER_REFERENCE)),
    r(14, "finalizers", Ty::Str),
    r(17, "managedFields", Ty::Msg(MANAGED_FIELDS)),
];
const CONDITION: &[Field] = &[
    f(1, "type", Ty::Str),
    f(2, "status", Ty::Str),
    f(3, "observedGeneration", Ty::Int),
    f(4, "lastTransitionTime", Ty::Time),
    f(5, "reason", Ty::Str),
    f(6, "message", Ty::Str),
];
const NAMESPACE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(&[r(1, "finalizers", Ty::Str)])),
    f(
        3,
        "status",
        Ty::Msg(&[
            f(1, "phase", Ty::Str),
            r(2, "conditions", Ty::Msg(CONDITION)),
        ]),
    ),
];
const CONFIG_MAP: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "data", Ty::StrMap),
    f(3, "binaryData", Ty::BytesMap),
    f(4, "immutable", Ty::Bool),
];
const SECRET: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(5, "immutable", Ty::Bool),
    f(2, "data", Ty::BytesMap),
    f(4, "stringData", Ty::StrMap),
    f(3, "type", Ty::Str),
];
const OBJECT_REFERENCE: &[Field] = &[
    f(1, "kind", Ty::Str),
    f(2, "namespace", Ty::Str),
    f(3, "name", Ty::Str),
    f(4, "uid", Ty::Str),
    f(5, "apiVersion", Ty::Str),
    f(6, "resourceVersion", Ty::Str),
    f(7, "fieldPath", Ty::Str),
];
const SERVICE_ACCOUNT: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    r(2, "secrets", Ty::Msg(OBJECT_REFERENCE)),
    r(3, "imagePullSecrets", Ty::Msg(&[f(1, "name", Ty::Str)])),
    f(4, "automountServiceAccountToken", Ty::Bool),
];
const SERVICE_PORT: &[Field] = &[
    f(1, "name", Ty::Str),
    f(2, "protocol", Ty::Str),
    f(6, "appProtocol", Ty::Str),
    f(3, "port", Ty::Int),
    f(4, "targetPort", Ty::IntOrString),
    f(5, "nodePort", Ty::Int),
];
const SERVICE_SPEC: &[Field] = &[
    r(1, "ports", Ty::Msg(SERVICE_PORT)),
    f(2, "selector", Ty::StrMap),
    f(3, "clusterIP", Ty::Str),
    r(18, "clusterIPs", Ty::Str),
    f(4, "type", Ty::Str),
    r(5, "externalIPs", Ty::Str),
    f(7, "sessionAffinity", Ty::Str),
    f(8, "loadBalancerIP", Ty::Str),
    r(9, "loadBalancerSourceRanges", Ty::Str),
    f(10, "externalName", Ty::Str),
    f(11, "externalTrafficPolicy", Ty::Str),
    f(12, "healthCheckNodePort", Ty::Int),
    f(13, "publishNotReadyAddresses", Ty::Bool),
    f(
        14,
        "sessionAffinityConfig",
        Ty::Msg(&[f(
            1,
            "clientIP",
            Ty::Msg(&[f(1, "timeoutSeconds", Ty::Int)]),
        )]),
    ),
    r(19, "ipFamilies", Ty::Str),
    f(17, "ipFamilyPolicy", Ty::Str),
    f(20, "allocateLoadBalancerNodePorts", Ty::Bool),
    f(21, "loadBalancerClass", Ty::Str),
    f(22, "internalTrafficPolicy", Ty::Str),
    f(23, "trafficDistribution", Ty::Str),
];
const LB_INGRESS: &[Field] = &[
    f(1, "ip", Ty::Str),
    f(2, "hostname", Ty::Str),
    f(3, "ipMode", Ty::Str),
    r(
        4,
        "ports",
        Ty::Msg(&[
            f(1, "port", Ty::Int),
            f(2, "protocol", Ty::Str),
            f(3, "error", Ty::Str),
        ]),
    ),
];
const SERVICE: &[Field] = &[
    f(1, "metadata", Ty::Msg(OBJECT_META)),
    f(2, "spec", Ty::Msg(SERVICE_SPEC)),
    f(
        3,
        "status",
        Ty::Msg(&[
            f(
                1,
                "loadBalancer",
                Ty::Msg(&[r(1, "ingress", Ty::Msg(LB_INGRESS))]),
            ),
            r(2, "conditions", Ty::Msg(CONDITION)),
        ]),
    ),
];

fn schema(kind: &str) -> Option<&'static [Field]> {
    match kind {
        "Namespace" => Some(NAMESPACE),
        "ConfigMap" => Some(CONFIG_MAP),
        "Secret" => Some(SECRET),
        "ServiceAccount" => Some(SERVICE_ACCOUNT),
        "Service" => Some(SERVICE),
        _ => None,
    }
}

fn malformed() -> ApiError {
    ApiError::bad_request("the protobuf request body is malformed")
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    buf: &'a [u8],
}

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self.buf.split_first().ok_or_else(malformed)?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(malformed())
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ApiError> {
        if n > self.buf.len() {
            return Err(malformed());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value); fixed-width values are skipped.
    fn next(&mut self) -> Result<Option<(u64, Wire<'a>)>, ApiError> {
        loop {
            if self.buf.is_empty() {
                return Ok(None);
            }
            let key = self.varint()?;
            let (num, wire) = (key >> 3, key & 7);
            match wire {
                0 => return Ok(Some((num, Wire::Varint(self.varint()?)))),
                2 => {
                    let len = usize::try_from(self.varint()?).map_err(|_| malformed())?;
                    return Ok(Some((num, Wire::Bytes(self.take(len)?))));
                }
                1 => drop(self.take(8)?),
                5 => drop(self.take(4)?),
                _ => return Err(malformed()),
            }
        }
    }
}

fn utf8(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| malformed())
}

fn map_entry(data: &[u8], bytes_value: bool) -> Result<(String, Value), ApiError> {
    let mut rd = Reader { buf: data };
    let (mut k, mut v) = (String::new(), json!(""));
    while let Some((num, w)) = rd.next()? {
        match (num, w) {
            (1, Wire::Bytes(b)) => k = utf8(b)?,
            (2, Wire::Bytes(b)) if bytes_value => {
                v = json!(base64::engine::general_purpose::STANDARD.encode(b))
            }
            (2, Wire::Bytes(b)) => v = json!(utf8(b)?),
            _ => {}
        }
    }
    Ok((k, v))
}

/// Decodes a signed varint field as Go's int32/int64 (two's complement).
fn signed(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn value(ty: Ty, w: Wire<'_>, depth: usize) -> Result<Option<Value>, ApiError> {
    Ok(match (ty, w) {
        (Ty::Str, Wire::Bytes(b)) => Some(json!(utf8(b)?)).filter(|v| v != ""),
        (Ty::Int, Wire::Varint(v)) => Some(json!(signed(v))).filter(|v| v != 0),
        (Ty::Bool, Wire::Varint(v)) => Some(json!(v != 0)),
        (Ty::Msg(fields), Wire::Bytes(b)) => Some(message(fields, b, depth + 1)?),
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let mut rd = Reader { buf: b };
            let (mut kind, mut int, mut s) = (0, 0, String::new());
            while let Some((num, w)) = rd.next()? {
                match (num, w) {
                    (1, Wire::Varint(v)) => kind = v,
                    (2, Wire::Varint(v)) => int = signed(v),
                    (3, Wire::Bytes(x)) => s = utf8(x)?,
                    _ => {}
                }
            }
            Some(if kind == 1 { json!(s) } else { json!(int) })
        }
        (Ty::Time, Wire::Bytes(b)) => {
            let mut rd = Reader { buf: b };
            let mut secs = 0;
            while let Some((num, w)) = rd.next()? {
                if let (1, Wire::Varint(v)) = (num, w) {
                    secs = signed(v);
                }
            }
            let ts = jiff::Timestamp::from_second(secs).map_err(|_| malformed())?;
            Some(json!(ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()))
        }
        (Ty::RawJson, Wire::Bytes(b)) => {
            let mut rd = Reader { buf: b };
            let mut raw = json!({});
            while let Some((num, w)) = rd.next()? {
                if let (1, Wire::Bytes(x)) = (num, w) {
                    raw = serde_json::from_slice(x).map_err(|_| malformed())?;
                }
            }
            Some(raw)
        }
        _ => return Err(malformed()),
    })
}

fn message(fields: &[Field], data: &[u8], depth: usize) -> Result<Value, ApiError> {
    if depth > 32 {
        return Err(malformed());
    }
    let mut out = Map::new();
    let mut rd = Reader { buf: data };
    while let Some((num, w)) = rd.next()? {
        let Some(field) = fields.iter().find(|f| f.num == num) else {
            continue;
        };
        match field.ty {
            Ty::StrMap | Ty::BytesMap => {
                let Wire::Bytes(b) = w else {
                    return Err(malformed());
                };
                let (k, v) = map_entry(b, matches!(field.ty, Ty::BytesMap))?;
                let slot = out.entry(field.name).or_insert_with(|| json!({}));
                if let Some(m) = slot.as_object_mut() {
                    m.insert(k, v);
                }
            }
            _ if field.repeated => {
                // Repeated scalars of a proto2 schema arrive unpacked; strings
                // keep empty values inside lists.
                let item = match (field.ty, w) {
                    (Ty::Str, Wire::Bytes(b)) => Some(json!(utf8(b)?)),
                    (ty, w) => value(ty, w, depth)?,
                };
                if let Some(item) = item {
                    let slot = out.entry(field.name).or_insert_with(|| json!([]));
                    if let Some(a) = slot.as_array_mut() {
                        a.push(item);
                    }
                }
            }
            ty => {
                if let Some(v) = value(ty, w, depth)? {
                    out.insert(field.name.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// Decodes a protobuf-encoded object of `kind` into its JSON form.
pub fn decode(kind: &str, body: &[u8]) -> Result<Value, ApiError> {
    let fields = schema(kind)
        .ok_or_else(|| ApiError::unsupported_media_type("application/vnd.kubernetes.protobuf"))?;
    let envelope = body.strip_prefix(MAGIC).ok_or_else(malformed)?;
    let mut rd = Reader { buf: envelope };
    let (mut api_version, mut got_kind, mut raw) = (String::new(), String::new(), None);
    while let Some((num, w)) = rd.next()? {
        match (num, w) {
            (1, Wire::Bytes(tm)) => {
                let mut t = Reader { buf: tm };
                while let Some((n, w)) = t.next()? {
                    match (n, w) {
                        (1, Wire::Bytes(b)) => api_version = utf8(b)?,
                        (2, Wire::Bytes(b)) => got_kind = utf8(b)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let raw = raw.ok_or_else(malformed)?;
    let mut obj = message(fields, raw, 0)?;
    if !got_kind.is_empty() {
        obj["kind"] = json!(got_kind);
    }
    if !api_version.is_empty() {
        obj["apiVersion"] = json!(api_version);
    }
    Ok(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn bytes_field(num: u64, data: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(data.len() as u64, out);
        out.extend_from_slice(data);
    }

    #[test]
    fn decodes_a_service() {
        let mut port = Vec::new();
        varint(3 << 3, &mut port);
        varint(80, &mut port);
        let mut tp = Vec::new();
        varint(2 << 3, &mut tp);
        varint(8080, &mut tp);
        bytes_field(4, &tp, &mut port);
        let mut spec = Vec::new();
        bytes_field(1, &port, &mut spec);
        let mut sel = Vec::new();
        bytes_field(1, b"app", &mut sel);
        bytes_field(2, b"web", &mut sel);
        bytes_field(2, &sel, &mut spec);
        bytes_field(4, b"NodePort", &mut spec);
        let mut meta = Vec::new();
        bytes_field(1, b"web", &mut meta);
        let mut svc = Vec::new();
        bytes_field(1, &meta, &mut svc);
        bytes_field(2, &spec, &mut svc);
        let mut tm = Vec::new();
        bytes_field(1, b"v1", &mut tm);
        bytes_field(2, b"Service", &mut tm);
        let mut env = MAGIC.to_vec();
        bytes_field(1, &tm, &mut env);
        bytes_field(2, &svc, &mut env);
        let v = decode("Service", &env).expect("decode");
        assert_eq!(
            v,
            json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "web"}, "type": "NodePort"}, "kind": "Service", "apiVersion": "v1"})
        );
        assert!(decode("Service", &env[..env.len() - 3]).is_err());
        assert!(decode("Service", b"garbage").is_err());
    }
}
