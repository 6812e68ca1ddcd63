//! The bounds every stored object and every write is held to, in one place:
//! the write path enforces them before anything is committed, and the
//! store's loader uses the same ones to tell a readable object from one to
//! quarantine, so nothing is ever stored that a reader cannot read back.
//!
//! Nesting depth is the bound that matters for readers: `serde_json` (and so
//! every kube-rs client) refuses documents nested deeper than 128 levels,
//! and an object travels wrapped in a list (two levels), a watch event (one)
//! or a Table row (three). [`DEFAULT_MAX_DEPTH`] leaves room for every
//! wrapper. Walks here are iterative, so a value nested deeper than the
//! thread's stack allows is measured, not recursed into.

use serde_json::Value;

use crate::error::{ApiError, Cause};
use crate::resources::Resource;

/// Deepest object accepted: below serde_json's 128 with room for a list,
/// watch event or Table wrapper around it.
pub const DEFAULT_MAX_DEPTH: usize = 100;
/// Largest stored object, as etcd's default `--max-request-bytes` (1.5 MiB).
pub const DEFAULT_MAX_OBJECT_BYTES: usize = 1536 * 1024;
/// Most operations in one JSON patch, as kube-apiserver.
pub const DEFAULT_MAX_PATCH_OPERATIONS: usize = 10_000;
/// Most bytes `copy` operations of one JSON patch may copy, as
/// kube-apiserver (3 MiB).
pub const DEFAULT_MAX_PATCH_COPY_BYTES: usize = 3 * 1024 * 1024;
/// Bytes of watch events kept for resuming watches.
pub const DEFAULT_HISTORY_BYTES: usize = 256 * 1024 * 1024;

/// Per-object and per-write bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-object-depth`: nesting of maps and lists in one object.
    pub max_depth: usize,
    /// `--max-object-size-bytes`: an object's stored JSON.
    pub max_object_bytes: usize,
    /// `--max-json-patch-operations`.
    pub max_patch_operations: usize,
    /// `--max-json-patch-copy-bytes`: bytes copied by `copy` operations.
    pub max_patch_copy_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: DEFAULT_MAX_DEPTH,
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
            max_patch_operations: DEFAULT_MAX_PATCH_OPERATIONS,
            max_patch_copy_bytes: DEFAULT_MAX_PATCH_COPY_BYTES,
        }
    }
}

/// The shape of a value: how deep it nests and roughly how many bytes its
/// JSON takes (exact for everything but escapes in strings and the spelling
/// of numbers, which it counts short).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub depth: usize,
    pub bytes: usize,
}

/// Measures `value` without recursion. `{}` and `[]` are one level deep, a
/// scalar none.
pub fn shape(value: &Value) -> Shape {
    let mut out = Shape::default();
    let mut stack: Vec<(&Value, usize)> = vec![(value, 0)];
    while let Some((v, level)) = stack.pop() {
        match v {
            Value::Object(m) => {
                out.depth = out.depth.max(level + 1);
                out.bytes += 2 + m.len().saturating_sub(1);
                for (k, child) in m {
                    out.bytes += k.len() + 3;
                    stack.push((child, level + 1));
                }
            }
            Value::Array(a) => {
                out.depth = out.depth.max(level + 1);
                out.bytes += 2 + a.len().saturating_sub(1);
                stack.extend(a.iter().map(|c| (c, level + 1)));
            }
            Value::String(s) => out.bytes += s.len() + 2,
            Value::Number(_) => out.bytes += 1,
            Value::Bool(b) => out.bytes += if *b { 4 } else { 5 },
            Value::Null => out.bytes += 4,
        }
    }
    out
}

/// The path to the first point deeper than `max`, as `a.b[0].c`, for the
/// error a client gets (cut after a few steps: the point is where to look).
fn deep_path(value: &Value, max: usize) -> String {
    let mut path = Vec::new();
    let mut cur = value;
    while path.len() < 4 {
        let next = match cur {
            Value::Object(m) => m
                .iter()
                .find(|(_, c)| shape(c).depth >= max.saturating_sub(path.len()))
                .map(|(k, c)| (k.clone(), c)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find(|(_, c)| shape(c).depth >= max.saturating_sub(path.len()))
                .map(|(i, c)| (format!("[{i}]"), c)),
            _ => None,
        };
        let Some((step, child)) = next else { break };
        path.push(step);
        cur = child;
    }
    let mut out = String::new();
    for step in path {
        if !out.is_empty() && !step.starts_with('[') {
            out.push('.');
        }
        out.push_str(&step);
    }
    out
}

impl Limits {
    /// 422 when `obj` nests deeper than allowed, naming where.
    pub fn check_depth(&self, res: &Resource, obj: &Value) -> Result<(), ApiError> {
        let depth = shape(obj).depth;
        if depth <= self.max_depth {
            return Ok(());
        }
        let name = crate::object::name(obj).to_string();
        Err(ApiError::invalid(
            res,
            &name,
            vec![Cause {
                reason: "FieldValueTooLong",
                field: deep_path(obj, self.max_depth),
                message: format!(
                    "Too deep: the object nests {depth} levels, more than the limit of {} (--max-object-depth)",
                    self.max_depth
                ),
            }],
        ))
    }

    /// 413 when an object's stored JSON is larger than allowed.
    pub fn check_size(&self, res: &Resource, name: &str, bytes: usize) -> Result<(), ApiError> {
        if bytes <= self.max_object_bytes {
            return Ok(());
        }
        Err(ApiError::too_large(format!(
            "{} \"{name}\" is too large: it would be stored as {bytes} bytes, more than the limit of {} bytes (--max-object-size-bytes)",
            res.kind, self.max_object_bytes
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nested(levels: usize) -> Value {
        let mut v = json!({});
        for _ in 1..levels {
            v = json!({ "f:a": v });
        }
        v
    }

    #[test]
    fn shape_counts_depth_and_bytes() {
        assert_eq!(shape(&json!(1)).depth, 0);
        assert_eq!(shape(&json!({})).depth, 1);
        assert_eq!(shape(&json!({"a": [1, {"b": []}]})).depth, 4);
        let v = json!({"a": "xy", "b": [true, null, {"c": false}]});
        assert_eq!(shape(&v).bytes, v.to_string().len());
        assert_eq!(shape(&nested(118)).depth, 118);
    }

    #[test]
    fn a_value_deeper_than_the_stack_is_measured() {
        // Built by hand: serde_json would refuse to parse it, and dropping
        // it recursively would overflow the stack, so it is taken apart
        // level by level below.
        let mut v = Value::Null;
        for _ in 0..200_000 {
            v = Value::Array(vec![v]);
        }
        assert_eq!(shape(&v).depth, 200_000);
        while let Value::Array(mut a) = v {
            v = a.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn errors_name_the_limit_and_the_place() {
        let limits = Limits::default();
        let res = &crate::resources::CONFIGMAPS;
        let obj =
            json!({"metadata": {"name": "deep", "managedFields": [{"fieldsV1": nested(118)}]}});
        let err = limits.check_depth(res, &obj).expect_err("too deep");
        assert_eq!(err.code, 422);
        let status = err.status().to_string();
        assert!(status.contains("--max-object-depth"), "{status}");
        assert!(
            status.contains("metadata.managedFields[0].fieldsV1"),
            "{status}"
        );
        limits
            .check_depth(res, &json!({"metadata": {"name": "flat"}}))
            .expect("shallow objects pass");
        let err = limits
            .check_size(res, "big", DEFAULT_MAX_OBJECT_BYTES + 1)
            .expect_err("too large");
        assert_eq!(err.code, 413);
        assert!(err.message.contains("--max-object-size-bytes"));
    }
}
