//! policy/v1 PodDisruptionBudget: kube-apiserver's validation
//! (`ValidatePodDisruptionBudgetSpec`), and the reading of its
//! `minAvailable`/`maxUnavailable` the disruption controller shares.

use serde_json::Value;

use crate::error::Cause;
use crate::selector::LabelSelector;

/// An `intstr` budget: a count, or a percentage of the expected pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(i64),
    Percent(i64),
}

impl Amount {
    /// `v` read as kube reads an IntOrString budget; the error is the
    /// detail of upstream's message.
    pub fn parse(v: &Value) -> Result<Self, &'static str> {
        match v {
            Value::Number(n) => match n.as_i64() {
                Some(i) if i >= 0 => Ok(Amount::Count(i)),
                _ => Err("must be greater than or equal to 0"),
            },
            Value::String(s) => {
                let digits = s.strip_suffix('%').ok_or(
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                )?;
                match digits.parse::<i64>() {
                    Ok(p) if (0..=100).contains(&p) && !digits.starts_with('+') => {
                        Ok(Amount::Percent(p))
                    }
                    Ok(_) => Err("must be a valid percent value (0-100)"),
                    Err(_) => Err(
                        "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                    ),
                }
            }
            _ => Err("must be an integer or a percentage"),
        }
    }

    /// The count out of `total`, a percentage rounded up (kube's
    /// `GetScaledValueFromIntOrPercent(..., roundUp=true)`).
    pub fn of(self, total: i64) -> i64 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (p * total + 99) / 100,
        }
    }
}

/// Validates a budget's spec.
pub fn budget(obj: Value, causes: &mut Vec<Cause>) -> Value {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    let min = spec.get("minAvailable").filter(|v| !v.is_null());
    let max = spec.get("maxUnavailable").filter(|v| !v.is_null());
    if min.is_some() && max.is_some() {
        causes.push(Cause::invalid(
            "spec",
            &spec,
            "minAvailable and maxUnavailable cannot be both set",
        ));
    }
    for (field, v) in [("minAvailable", min), ("maxUnavailable", max)] {
        if let Some(v) = v
            && let Err(detail) = Amount::parse(v)
        {
            causes.push(Cause::invalid(format!("spec.{field}"), v, detail));
        }
    }
    if let Some(sel) = spec.get("selector").filter(|v| !v.is_null())
        && let Err(e) = LabelSelector::from_api(sel)
    {
        causes.push(Cause::invalid("spec.selector", sel, &e));
    }
    if let Some(p) = spec
        .get("unhealthyPodEvictionPolicy")
        .and_then(Value::as_str)
        && !matches!(p, "IfHealthyBudget" | "AlwaysAllow")
    {
        causes.push(Cause::unsupported(
            "spec.unhealthyPodEvictionPolicy",
            p,
            &["AlwaysAllow", "IfHealthyBudget"],
        ));
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn causes_of(spec: Value) -> Vec<Cause> {
        let mut causes = Vec::new();
        budget(
            json!({"metadata": {"name": "b"}, "spec": spec}),
            &mut causes,
        );
        causes
    }

    #[test]
    fn a_budget_names_one_amount_in_a_valid_form() {
        assert!(
            causes_of(json!({"minAvailable": 1, "selector": {"matchLabels": {"a": "b"}}}))
                .is_empty()
        );
        assert!(causes_of(json!({"maxUnavailable": "25%"})).is_empty());
        let both = causes_of(json!({"minAvailable": 1, "maxUnavailable": 1}));
        assert_eq!(both.len(), 1);
        assert!(both[0].message.contains("cannot be both set"), "{both:?}");
        for bad in [
            json!(-1),
            json!("101%"),
            json!("ten"),
            json!("5"),
            json!(true),
        ] {
            let c = causes_of(json!({"minAvailable": bad}));
            assert_eq!(c.len(), 1, "{bad}");
            assert_eq!(c[0].field, "spec.minAvailable");
        }
        let c = causes_of(
            json!({"selector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}}),
        );
        assert_eq!(c[0].field, "spec.selector");
        let c = causes_of(json!({"unhealthyPodEvictionPolicy": "Never"}));
        assert_eq!(c[0].reason, "FieldValueNotSupported");
    }

    #[test]
    fn percentages_round_up() {
        assert_eq!(Amount::Percent(50).of(3), 2);
        assert_eq!(Amount::Percent(0).of(3), 0);
        assert_eq!(Amount::Percent(100).of(3), 3);
        assert_eq!(Amount::Count(2).of(10), 2);
    }
}
