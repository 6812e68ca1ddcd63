//! Admission: decoding into the kind's schema, defaulting and validation as
//! kube-apiserver does for the served kinds, and allocation of Service IPs
//! and ports. Everything here is pure computation on the object; the
//! registry decides when it runs and commits the result.

pub mod disruption;
pub mod external_ips;
pub mod meta;
pub mod networking;
pub mod rbac;
pub mod service;
pub mod serviceaccount;
pub mod workloads;

use k8s_openapi::api::apps::v1::{
    ControllerRevision, DaemonSet, Deployment, ReplicaSet, StatefulSet,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{
    ConfigMap, Endpoints, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::config::ClusterConfig;
use crate::error::{ApiError, Cause};
use crate::object;
use crate::resources::Resource;
pub use service::ServiceAllocators;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Update,
}

/// What admission may read and allocate from.
#[derive(Debug)]
pub struct Context<'a> {
    pub config: &'a ClusterConfig,
    pub allocs: &'a mut ServiceAllocators,
}

/// Decodes into the kind's schema; unknown fields are dropped, as the real
/// apiserver prunes them for built-in kinds.
fn decode<T: DeserializeOwned>(res: &Resource, value: Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            res.kind, res.version, res.kind
        ))
    })
}

fn encode<T: Serialize>(obj: &T) -> Result<Value, ApiError> {
    serde_json::to_value(obj).map_err(|e| ApiError::internal(e.to_string()))
}

fn roundtrip<T: DeserializeOwned + Serialize>(
    res: &Resource,
    value: Value,
) -> Result<Value, ApiError> {
    encode(&decode::<T>(res, value)?)
}

/// Decodes `value` as the kind of `res` and encodes it back: the object as
/// the schema sees it.
pub fn normalize(res: &Resource, value: Value) -> Result<Value, ApiError> {
    match res.kind {
        "Namespace" => roundtrip::<Namespace>(res, value),
        "Node" => roundtrip::<Node>(res, value),
        "Pod" => roundtrip::<Pod>(res, value),
        "Service" => roundtrip::<Service>(res, value),
        "Endpoints" => roundtrip::<Endpoints>(res, value),
        "ConfigMap" => roundtrip::<ConfigMap>(res, value),
        "ServiceAccount" => roundtrip::<ServiceAccount>(res, value),
        "Event" => roundtrip::<Event>(res, value),
        "EndpointSlice" => roundtrip::<EndpointSlice>(res, value),
        "NetworkPolicy" => roundtrip::<NetworkPolicy>(res, value),
        "Lease" => roundtrip::<Lease>(res, value),
        "Secret" => roundtrip::<Secret>(res, value),
        "Deployment" => roundtrip::<Deployment>(res, value),
        "ReplicaSet" => roundtrip::<ReplicaSet>(res, value),
        "DaemonSet" => roundtrip::<DaemonSet>(res, value),
        "StatefulSet" => roundtrip::<StatefulSet>(res, value),
        "ControllerRevision" => roundtrip::<ControllerRevision>(res, value),
        "Role" => roundtrip::<Role>(res, value),
        "ClusterRole" => roundtrip::<ClusterRole>(res, value),
        "RoleBinding" => roundtrip::<RoleBinding>(res, value),
        "ClusterRoleBinding" => roundtrip::<ClusterRoleBinding>(res, value),
        "PodDisruptionBudget" => roundtrip::<PodDisruptionBudget>(res, value),
        _ => Ok(value),
    }
}

/// Defaults and validates `obj` (already normalized) for `op`; `old` is the
/// stored object on update.
pub fn admit(
    res: &Resource,
    op: Op,
    obj: Value,
    old: Option<&Value>,
    ctx: &mut Context<'_>,
) -> Result<Value, ApiError> {
    let name = object::name(&obj).to_string();
    let invalid = |causes: Vec<Cause>| ApiError::invalid(res, &name, causes);
    let mut causes = meta::validate(res, &obj);
    let obj = match res.kind {
        "Service" => {
            let svc: Service = decode(res, obj)?;
            let old: Option<Service> = old.map(|o| decode(res, o.clone())).transpose()?;
            if !causes.is_empty() {
                return Err(invalid(causes));
            }
            let svc =
                service::admit(op, svc, old.as_ref(), ctx.config, ctx.allocs).map_err(invalid)?;
            encode(&svc)?
        }
        "Namespace" => namespace(obj),
        "Pod" => pod(op, obj, &mut causes),
        "Deployment" => workloads::deployment(obj, old, &mut causes),
        "ReplicaSet" => workloads::replica_set(obj, old, &mut causes),
        "DaemonSet" => workloads::daemon_set(obj, old, &mut causes),
        "StatefulSet" => workloads::stateful_set(obj, old, &mut causes),
        "ControllerRevision" => workloads::controller_revision(obj, &mut causes),
        "Secret" => workloads::secret(obj, old, &mut causes),
        "Role" | "ClusterRole" => rbac::role(obj, res.namespaced, &mut causes),
        "RoleBinding" | "ClusterRoleBinding" => {
            rbac::binding(obj, res.namespaced, old, &mut causes)
        }
        "PodDisruptionBudget" => disruption::budget(obj, &mut causes),
        "NetworkPolicy" => {
            let mut np: NetworkPolicy = decode(res, obj)?;
            causes.extend(networking::admit_network_policy(&mut np));
            encode(&np)?
        }
        "EndpointSlice" => {
            let mut slice: EndpointSlice = decode(res, obj)?;
            causes.extend(networking::admit_endpoint_slice(&mut slice));
            encode(&slice)?
        }
        _ => obj,
    };
    if causes.is_empty() {
        Ok(obj)
    } else {
        Err(invalid(causes))
    }
}

fn namespace(mut obj: Value) -> Value {
    let name = object::name(&obj).to_string();
    if let Some(m) = object::metadata_mut(&mut obj) {
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
    if obj.pointer("/spec/finalizers").is_none() {
        obj["spec"] = json!({ "finalizers": ["kubernetes"] });
    }
    if object::deletion_timestamp(&obj).is_none() && obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({ "phase": "Active" });
    }
    obj
}

/// Pod defaults kube-apiserver applies that clients read back, and the
/// structural checks on containers.
fn pod(op: Op, mut obj: Value, causes: &mut Vec<Cause>) -> Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    // Set on pods only (SetDefaults_Pod, the ServiceAccount admission), not
    // on the templates of workloads; `serviceAccount` mirrors the name, as
    // the v1 conversion writes it.
    let account = serviceaccount::account_of(&obj);
    let spec = &mut obj["spec"];
    spec["serviceAccountName"] = json!(account);
    spec["serviceAccount"] = json!(account);
    if spec.get("enableServiceLinks").is_none() {
        spec["enableServiceLinks"] = json!(true);
    }
    workloads::pod_spec(spec, "spec", causes);
    if op == Op::Create && obj.pointer("/status/phase").is_none() {
        obj["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
    }
    obj
}
