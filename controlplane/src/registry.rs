//! The API verbs with kube-apiserver's semantics on top of the object store:
//! create, update, patch and delete, with metadata rules, subresources,
//! finalizers, optimistic concurrency, dry-run and admission.

use std::sync::{Arc, Mutex, MutexGuard};

use rand::Rng;
use serde_json::{Value, json};

use crate::admission::{self, Context, Op, ServiceAllocators};
use crate::config::ClusterConfig;
use crate::error::ApiError;
use crate::managed;
use crate::object;
use crate::patch::{self, PatchType};
use crate::resources::{self, NAMESPACES, Resource};
use crate::store::{Entry, Mutation, Store};

/// A check of the requester's right to store this object, run on the
/// admitted object (with the stored one on update) inside the write, so no
/// other write can come between the check and the commit: escalation
/// prevention and NodeRestriction (`crate::rbac`).
type GuardFn = dyn Fn(&Resource, &Value, Option<&Value>) -> Result<(), ApiError> + Send + Sync;

#[derive(Clone)]
pub struct WriteGuard(Arc<GuardFn>);

impl WriteGuard {
    pub fn new(
        f: impl Fn(&Resource, &Value, Option<&Value>) -> Result<(), ApiError> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    fn check(&self, res: &Resource, obj: &Value, old: Option<&Value>) -> Result<(), ApiError> {
        (self.0)(res, obj, old)
    }
}

impl std::fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteGuard")
    }
}

/// Options every write takes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    /// Who makes the change, for managedFields; required for apply.
    pub field_manager: Option<String>,
    /// Server-side apply: take fields from other managers.
    pub force: bool,
    /// The requester's right to store the result; None for the server's
    /// own writes and for `system:masters`.
    pub guard: Option<WriteGuard>,
}

impl WriteOptions {
    fn manager(&self) -> &str {
        self.field_manager.as_deref().unwrap_or("unknown")
    }
}

/// Options of a delete, from the query and the DeleteOptions body.
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub dry_run: bool,
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_resource_version: Option<String>,
}

/// A write to the `scale` subresource.
#[derive(Debug, Clone)]
pub enum ScaleChange<'a> {
    /// PUT of a whole Scale.
    Replace(Value),
    /// PATCH of the Scale.
    Patch(PatchType, &'a [u8]),
}

/// The autoscaling/v1 Scale of a workload object.
fn scale_of(obj: &Value) -> Value {
    let meta = object::metadata(obj);
    let field = |f: &str| meta.and_then(|m| m.get(f)).cloned().unwrap_or(Value::Null);
    let selector = obj
        .pointer("/spec/selector")
        .map(crate::api::table::label_selector_string)
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": field("name"), "namespace": field("namespace"), "uid": field("uid"),
            "resourceVersion": field("resourceVersion"), "creationTimestamp": field("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {
            "replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0),
            "selector": selector,
        },
    })
}

pub struct Registry {
    pub store: Store,
    pub config: ClusterConfig,
    allocs: Mutex<ServiceAllocators>,
    /// Whether pods get the ServiceAccount admission (the server's;
    /// off in [`Registry::in_memory`], which runs no controllers).
    service_accounts: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Kinds whose metadata.generation tracks spec changes.
fn tracks_generation(res: &Resource) -> bool {
    matches!(
        res.kind,
        "NetworkPolicy"
            | "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "PodDisruptionBudget"
    )
}

/// Whether an update from `old` to `new` is a new generation: a change of
/// spec, and for a Deployment of its annotations too (they are copied to
/// its ReplicaSets), as kube-apiserver's strategies decide.
fn new_generation(res: &Resource, old: &Value, new: &Value) -> bool {
    tracks_generation(res)
        && (new.get("spec") != old.get("spec")
            || (res.kind == "Deployment"
                && new.pointer("/metadata/annotations") != old.pointer("/metadata/annotations")))
}

/// Kinds whose status subresource also takes the request's labels and
/// annotations (the workload controllers write revision annotations with
/// their status, as kube-apiserver's status strategies allow).
fn status_carries_metadata(res: &Resource) -> bool {
    res.group == "apps"
}

/// Kinds a PUT may create, as kube-apiserver allows.
fn create_on_update(res: &Resource) -> bool {
    matches!(res.kind, "Endpoints" | "Event" | "Lease")
}

/// A name `generateName` makes: the prefix and five random characters from
/// the alphabet apimachinery uses (no vowels, no confusable digits).
fn generated_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    let mut keep = prefix.len().min(58);
    while !prefix.is_char_boundary(keep) {
        keep -= 1;
    }
    format!("{}{suffix}", &prefix[..keep])
}

fn check_type_meta(res: &Resource, body: &Value) -> Result<(), ApiError> {
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or(res.kind);
    let api_version = body.get("apiVersion").and_then(Value::as_str);
    if kind != res.kind || api_version.is_some_and(|v| v != res.api_version()) {
        return Err(ApiError::bad_request(format!(
            "the API version in the data ({}) does not match the expected API version ({})",
            api_version.unwrap_or(""),
            res.api_version()
        )));
    }
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    Ok(())
}

fn with_type_meta(res: &Resource, mut obj: Value) -> Value {
    if let Value::Object(m) = &mut obj {
        m.insert("apiVersion".into(), json!(res.api_version()));
        m.insert("kind".into(), json!(res.kind));
    }
    obj
}

/// Metadata fields the server owns: an update keeps the stored values.
const SYSTEM_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
];

/// Builds the object an update stores from the client's `new` and the
/// stored `old`, for the main resource or a subresource.
fn merge_update(res: &Resource, sub: Option<&str>, old: &Value, mut new: Value) -> Value {
    match sub {
        Some("status") => {
            let mut out = old.clone();
            if status_carries_metadata(res)
                && let (Some(src), Some(dst)) =
                    (object::metadata(&new), object::metadata_mut(&mut out))
            {
                for field in ["labels", "annotations"] {
                    match src.get(field) {
                        Some(v) => dst.insert(field.to_string(), v.clone()),
                        None => dst.remove(field),
                    };
                }
            }
            out["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            if out["status"].is_null()
                && let Value::Object(m) = &mut out
            {
                m.remove("status");
            }
            out
        }
        Some("finalize") => {
            let mut out = old.clone();
            out["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or_else(|| json!([]));
            out
        }
        _ => {
            if let (Some(old_meta), Some(new_meta)) =
                (object::metadata(old), object::metadata_mut(&mut new))
            {
                for field in SYSTEM_METADATA {
                    match old_meta.get(*field) {
                        Some(v) => new_meta.insert((*field).to_string(), v.clone()),
                        None => new_meta.remove(*field),
                    };
                }
            }
            if res.has_status() {
                match old.get("status") {
                    Some(st) => new["status"] = st.clone(),
                    None => {
                        if let Value::Object(m) = &mut new {
                            m.remove("status");
                        }
                    }
                }
            }
            new
        }
    }
}

/// The grace period a pod's deletion waits, as a kubelet would take to stop
/// it: None when it goes at once (unscheduled, finished, grace 0, or a
/// second delete that does not shorten the first).
fn pod_grace(res: &Resource, pod: &Value, opts: &DeleteOptions) -> Option<i64> {
    if res.kind != "Pod"
        || pod
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        || matches!(
            pod.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        )
    {
        return None;
    }
    let grace = opts
        .grace_period_seconds
        .or_else(|| {
            pod.pointer("/spec/terminationGracePeriodSeconds")
                .and_then(Value::as_i64)
        })
        .unwrap_or(30);
    let current = pod
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64);
    match current {
        _ if grace <= 0 => None,
        Some(c) if grace >= c => Some(c),
        _ => Some(grace),
    }
}

/// True when an object marked for deletion has nothing left holding it.
fn ready_to_remove(res: &Resource, obj: &Value) -> bool {
    // A pod in its grace period stays until the period ends (its
    // deletionGracePeriodSeconds is above 0 until then).
    let graceful = obj
        .pointer("/metadata/deletionGracePeriodSeconds")
        .and_then(Value::as_i64)
        .is_some_and(|g| g > 0);
    object::deletion_timestamp(obj).is_some()
        && !graceful
        && object::finalizers(obj).is_empty()
        && !(res.kind == "Namespace"
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty()))
}

/// An endpoints field as admission stores it, for comparing with what the
/// reconciler wants: defaults the server fills in (an empty condition, a
/// serving or terminating flag) are dropped.
fn normalized_endpoints(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(items) = v.as_array_mut() {
        for item in items {
            if let Some(c) = item.get_mut("conditions").and_then(Value::as_object_mut) {
                c.retain(|k, _| k == "ready");
            }
        }
    }
    v
}

/// Namespaces kube-apiserver's NamespaceLifecycle admission never lets go.
const IMMORTAL_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public"];

/// The same object, ignoring the resource version.
fn unchanged(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        object::clear_resource_version(&mut v);
        v
    };
    strip(a) == strip(b)
}

impl Registry {
    /// Wraps `store`, seeding the allocators from the stored Services.
    pub fn new(store: Store, config: ClusterConfig) -> Result<Self, ApiError> {
        let mut allocs = ServiceAllocators::new(&config);
        for svc in &store.list(&resources::SERVICES, None, |_| true)? {
            allocs.seed(svc);
        }
        Ok(Self {
            store,
            config,
            allocs: Mutex::new(allocs),
            service_accounts: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A registry on a private in-memory store with default limits and
    /// cluster settings and a short watch history, bootstrapped: for tests
    /// and fuzz targets that drive the verbs without a server.
    pub fn in_memory() -> Result<Self, ApiError> {
        let fail = |e: &dyn std::fmt::Display| ApiError::internal(e.to_string());
        let backend = crate::storage::sqlite::SqliteBackend::open(std::path::Path::new(":memory:"))
            .map_err(|e| fail(&e))?;
        // A short history: nothing watches, and fuzz runs write millions.
        let history = crate::store::History {
            events: 1000,
            bytes: 16 * 1024 * 1024,
        };
        let store = Store::open(Box::new(backend), history, crate::limits::Limits::default())
            .map_err(|e| fail(&e))?;
        let registry = Self::new(store, ClusterConfig::default())?;
        registry.bootstrap(None)?;
        Ok(registry)
    }

    /// Turns the ServiceAccount admission of pods on
    /// ([`admission::serviceaccount`]).
    pub fn enable_service_account_admission(&self) {
        self.service_accounts
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The ServiceAccount a pod being created runs as; `default`, which
    /// the `serviceaccount` controller makes right after its namespace, is
    /// waited for a little (10 tries, 100-200 ms apart, as upstream).
    fn pod_service_account(&self, ns: &str, pod: &Value) -> Result<Arc<Value>, ApiError> {
        let account = admission::serviceaccount::account_of(pod);
        let tries = if account == admission::serviceaccount::DEFAULT_SERVICE_ACCOUNT {
            10
        } else {
            1
        };
        let pause = std::time::Duration::from_millis(rand::rng().random_range(100..200));
        for i in 0..tries {
            if i > 0 {
                std::thread::sleep(pause);
            }
            if let Some(sa) = self.store.get(&resources::SERVICEACCOUNTS, ns, &account)? {
                return Ok(sa);
            }
        }
        Err(ApiError::forbidden(
            &resources::PODS,
            object::name(pod),
            format!(
                "{} is forbidden: error looking up service account {ns}/{account}: serviceaccount {account:?} not found",
                match object::name(pod) {
                    "" => "pods".to_owned(),
                    n => format!("pods {n:?}"),
                }
            ),
        ))
    }

    /// The allocators; after a panic in an earlier write, the lock is
    /// recovered and that write's journal rolled back.
    fn allocs(&self) -> Result<MutexGuard<'_, ServiceAllocators>, ApiError> {
        Ok(self.allocs.lock().unwrap_or_else(|poisoned| {
            let mut guard = poisoned.into_inner();
            guard.rollback();
            guard
        }))
    }

    /// Creates the namespaces every cluster has and the `kubernetes`
    /// Service when missing, and, given the address the apiserver is reached
    /// at, keeps the Service's Endpoints and EndpointSlice pointing at it.
    /// Cheap when everything is in place: it runs again whenever a system
    /// object goes, and periodically.
    pub fn bootstrap(&self, apiserver: Option<std::net::SocketAddr>) -> Result<(), ApiError> {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            if self.store.entry(&NAMESPACES, "", ns)?.is_none() {
                self.create(
                    &NAMESPACES,
                    "",
                    json!({"metadata": {"name": ns}}),
                    &WriteOptions::default(),
                )?;
            }
        }
        if self
            .store
            .entry(&resources::SERVICES, "default", "kubernetes")?
            .is_none()
        {
            let allocs = self.allocs()?;
            let families: Vec<&str> = self
                .config
                .service_cidrs
                .iter()
                .map(crate::config::family_of)
                .collect();
            let ips: Vec<String> = families
                .iter()
                .filter_map(|f| allocs.first_ip(f))
                .map(|ip| ip.to_string())
                .collect();
            drop(allocs);
            let svc = json!({
                "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                "spec": {
                    "clusterIP": ips.first(), "clusterIPs": ips, "ipFamilies": families,
                    "ipFamilyPolicy": if families.len() > 1 { "RequireDualStack" } else { "SingleStack" },
                    "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]
                }
            });
            self.create(
                &resources::SERVICES,
                "default",
                svc,
                &WriteOptions::default(),
            )?;
        }
        if let Some(addr) = apiserver {
            self.reconcile_apiserver_endpoints(addr)?;
        }
        Ok(())
    }

    /// The `kubernetes` Service's Endpoints and EndpointSlice, as
    /// kube-apiserver's endpoint reconciler writes them: one ready address,
    /// port `https`.
    fn reconcile_apiserver_endpoints(&self, addr: std::net::SocketAddr) -> Result<(), ApiError> {
        let ip = addr.ip().to_string();
        let port = json!({"name": "https", "port": addr.port(), "protocol": "TCP"});
        let endpoints = json!({
            "metadata": {"name": "kubernetes", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": ip}], "ports": [port]}]
        });
        let slice = json!({
            "metadata": {"name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": if addr.is_ipv4() { "IPv4" } else { "IPv6" },
            "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
            "ports": [port]
        });
        for (res, wanted, fields) in [
            (&resources::ENDPOINTS, endpoints, &["subsets"][..]),
            (
                &resources::ENDPOINTSLICES,
                slice,
                &["addressType", "endpoints", "ports"][..],
            ),
        ] {
            let current = self.store.get(res, "default", "kubernetes")?;
            let labels_kept = |cur: &Value| {
                wanted["metadata"]["labels"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| object::label(cur, k) == v.as_str())
            };
            match current {
                None => {
                    self.create(res, "default", wanted, &WriteOptions::default())?;
                }
                Some(cur)
                    if fields.iter().any(|f| {
                        cur.get(*f).map(normalized_endpoints)
                            != wanted.get(*f).map(normalized_endpoints)
                    }) || !labels_kept(&cur) =>
                {
                    tracing::info!(
                        kind = res.kind,
                        "restoring the kubernetes Service's endpoints"
                    );
                    let mut next = wanted;
                    next["metadata"]["resourceVersion"] =
                        json!(object::resource_version(&cur).to_string());
                    self.update(
                        res,
                        "default",
                        "kubernetes",
                        None,
                        next,
                        &WriteOptions::default(),
                    )?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Runs a mutation with the allocators held, committing or rolling back
    /// their journal with the write.
    fn write(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        dry_run: bool,
        decide: impl FnOnce(Option<&Value>, &mut Context<'_>) -> Result<Mutation, ApiError>,
    ) -> Result<Option<Arc<Entry>>, ApiError> {
        let mut allocs = self.allocs()?;
        let result = {
            let mut ctx = Context {
                config: &self.config,
                allocs: &mut allocs,
            };
            self.store
                .mutate(res, ns, name, dry_run, |cur| decide(cur, &mut ctx))
        };
        match &result {
            Ok(stored) if !dry_run => {
                allocs.commit();
                // However a Service went (a delete, or an update that removed
                // its last finalizer), what it held goes back.
                if res.kind == "Service"
                    && let Some(last) = stored
                    && self.store.entry(res, ns, name)?.is_none()
                {
                    allocs.release_service(&last.value()?);
                }
            }
            _ => allocs.rollback(),
        }
        result.map_err(ApiError::from)
    }

    fn check_namespace(&self, res: &Resource, ns: &str) -> Result<(), ApiError> {
        if !res.namespaced {
            return Ok(());
        }
        match self.store.get(&NAMESPACES, "", ns)? {
            None => Err(ApiError::not_found(&NAMESPACES, ns)),
            Some(n) if object::deletion_timestamp(&n).is_some() => Err(ApiError::forbidden(
                res,
                "",
                format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    pub fn create(
        &self,
        res: &'static Resource,
        ns: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Arc<Entry>, ApiError> {
        check_type_meta(res, &body)?;
        let mut obj = admission::normalize(res, body)?;
        let body_ns = object::namespace(&obj).to_string();
        if res.namespaced && !body_ns.is_empty() && body_ns != ns {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        self.check_namespace(res, ns)?;
        let generate = object::metadata(&obj)
            .and_then(|m| m.get("generateName"))
            .and_then(Value::as_str)
            .map(String::from);
        if object::metadata(&obj)
            .and_then(|m| m.get("resourceVersion"))
            .is_some()
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        let Some(meta) = object::metadata_mut(&mut obj) else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        if res.namespaced {
            meta.insert("namespace".into(), json!(ns));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(object::now()));
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            meta.remove(f);
        }
        if tracks_generation(res) {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        // Status set by a client on create is dropped for kinds whose status
        // the system owns.
        if (matches!(res.kind, "Pod" | "Service") || res.group == "apps")
            && let Value::Object(m) = &mut obj
        {
            m.remove("status");
        }
        if res.kind == "Pod"
            && self
                .service_accounts
                .load(std::sync::atomic::Ordering::Relaxed)
            && !admission::serviceaccount::is_mirror(&obj)
        {
            let sa = self.pod_service_account(ns, &obj)?;
            let volume = generated_name(admission::serviceaccount::VOLUME_PREFIX);
            admission::serviceaccount::admit_pod(&mut obj, &sa, &volume);
        }
        let attempts = if generate.is_some() { 3 } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            let mut candidate = obj.clone();
            if let (Some(prefix), Some(meta)) = (&generate, object::metadata_mut(&mut candidate))
                && meta
                    .get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
            {
                meta.insert("name".into(), json!(generated_name(prefix)));
            }
            let name = object::name(&candidate).to_string();
            if name.is_empty() {
                return Err(ApiError::invalid(
                    res,
                    "",
                    vec![crate::error::Cause::required("metadata.name")],
                ));
            }
            let result = self.write(res, ns, &name, opts.dry_run, |cur, ctx| {
                if cur.is_some() {
                    return Err(ApiError::already_exists(res, &name));
                }
                let mut admitted =
                    admission::admit(res, Op::Create, with_type_meta(res, candidate), None, ctx)?;
                if let Some(guard) = &opts.guard {
                    guard.check(res, &admitted, None)?;
                }
                managed::track_update(
                    res.kind,
                    &res.api_version(),
                    None,
                    &mut admitted,
                    opts.manager(),
                    None,
                );
                Ok(Mutation::Put(admitted))
            });
            match result {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => return Err(ApiError::internal("create stored nothing")),
                Err(e) if e.reason == "AlreadyExists" && generate.is_some() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| ApiError::internal("could not generate a unique name")))
    }

    /// Replaces the object (or a subresource of it) with `body`.
    pub fn update(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<(Arc<Entry>, bool), ApiError> {
        check_type_meta(res, &body)?;
        if object::name(&body) != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let body = admission::normalize(res, body)?;
        if self.store.get(res, ns, name)?.is_none() && create_on_update(res) && sub.is_none() {
            let mut body = body;
            object::clear_resource_version(&mut body);
            return self.create(res, ns, body, opts).map(|v| (v, true));
        }
        let wanted_rv = object::resource_version(&body);
        let obj = self.write(res, ns, name, opts.dry_run, |cur, ctx| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(res, name));
            };
            if wanted_rv != 0 && wanted_rv != object::resource_version(cur) {
                return Err(ApiError::conflict(
                    res,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            self.decide_update(res, sub, cur, body, opts, ctx)
        })?;
        obj.map(|v| (v, false))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// The common tail of update and patch: merge with the stored object,
    /// admit, and decide between keeping, storing and removing.
    fn decide_update(
        &self,
        res: &'static Resource,
        sub: Option<&str>,
        cur: &Value,
        new: Value,
        opts: &WriteOptions,
        ctx: &mut Context<'_>,
    ) -> Result<Mutation, ApiError> {
        let merged = merge_update(res, sub, cur, with_type_meta(res, new));
        let mut admitted = admission::admit(res, Op::Update, merged, Some(cur), ctx)?;
        if let Some(guard) = &opts.guard {
            guard.check(res, &admitted, Some(cur))?;
        }
        // Compared after defaulting, so a write that only spells out
        // defaults is not a new generation.
        if sub.is_none() && new_generation(res, cur, &admitted) {
            let generation = cur
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(1);
            if let Some(m) = object::metadata_mut(&mut admitted) {
                m.insert("generation".into(), json!(generation + 1));
            }
        }
        managed::track_update(
            res.kind,
            &res.api_version(),
            Some(cur),
            &mut admitted,
            opts.manager(),
            sub,
        );
        if ready_to_remove(res, &admitted) {
            return Ok(Mutation::Delete);
        }
        if unchanged(&admitted, cur) {
            return Ok(Mutation::Keep);
        }
        Ok(Mutation::Put(admitted))
    }

    pub fn patch(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        (ty, body): (PatchType, &[u8]),
        opts: &WriteOptions,
    ) -> Result<Arc<Entry>, ApiError> {
        let obj = self.write(res, ns, name, opts.dry_run, |cur, ctx| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(res, name));
            };
            let patched = patch::apply(res.kind, cur, ty, body, self.store.limits())?;
            check_type_meta(res, &patched)?;
            if object::name(&patched) != name {
                return Err(ApiError::bad_request("metadata.name may not be changed by a patch"));
            }
            let wanted_rv = object::resource_version(&patched);
            if wanted_rv != 0 && wanted_rv != object::resource_version(cur) {
                return Err(ApiError::conflict(
                    res,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let patched = admission::normalize(res, patched)?;
            self.decide_update(res, sub, cur, patched, opts, ctx)
        })?;
        obj.ok_or_else(|| ApiError::not_found(res, name))
    }

    /// Server-side apply of the configuration in `body`: creates the object
    /// when missing, otherwise merges it with field ownership and conflicts.
    pub fn apply(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        sub: Option<&str>,
        body: &[u8],
        opts: &WriteOptions,
    ) -> Result<(Arc<Entry>, bool), ApiError> {
        let Some(manager) = opts.field_manager.as_deref().filter(|m| !m.is_empty()) else {
            return Err(ApiError::invalid(
                &resources::NAMESPACES,
                "",
                vec![crate::error::Cause::required("fieldManager")],
            )
            .with_message("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
        };
        let applied: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "error decoding the apply configuration (send it as JSON): {e}"
            ))
        })?;
        check_type_meta(res, &applied)?;
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply configuration",
            ));
        }
        if object::name(&applied) != name {
            return Err(ApiError::bad_request(
                "the name of the object does not match the name on the URL",
            ));
        }
        let applied = admission::normalize(res, applied)?;
        let apiv = res.api_version();
        if sub.is_none() && self.store.get(res, ns, name)?.is_none() {
            let created =
                managed::apply(res.kind, &apiv, None, &applied, manager, opts.force, None)?;
            match self.create(res, ns, created, opts) {
                Ok(v) => return Ok((v, true)),
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        let obj = self.write(res, ns, name, opts.dry_run, |cur, ctx| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(res, name));
            };
            let merged = managed::apply(
                res.kind,
                &apiv,
                Some(cur),
                &applied,
                manager,
                opts.force,
                sub,
            )?;
            let merged = admission::normalize(res, merged)?;
            self.decide_update(res, sub, cur, merged, opts, ctx)
        })?;
        obj.map(|v| (v, false))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// The `scale` subresource of an object: an autoscaling/v1 Scale
    /// with the object's identity, `spec.replicas`, the observed
    /// `status.replicas` and the selector as a string.
    pub fn scale(&self, res: &'static Resource, ns: &str, name: &str) -> Result<Value, ApiError> {
        let obj = self
            .store
            .get(res, ns, name)?
            .ok_or_else(|| ApiError::not_found(res, name))?;
        Ok(scale_of(&obj))
    }

    /// Writes a Scale (PUT) or a patch of one (PATCH) through to the
    /// object's `spec.replicas`; returns the Scale after the write.
    pub fn update_scale(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        change: ScaleChange<'_>,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        if !res.has_scale() {
            return Err(ApiError::path_not_found());
        }
        let entry = self.write(res, ns, name, opts.dry_run, |cur, ctx| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(res, name));
            };
            let current = scale_of(cur);
            let wanted = match change {
                ScaleChange::Replace(ref body) => body.clone(),
                ScaleChange::Patch(ty, body) => {
                    patch::apply("Scale", &current, ty, body, self.store.limits())?
                }
            };
            if wanted.get("kind").and_then(Value::as_str).is_some_and(|k| k != "Scale") {
                return Err(ApiError::bad_request("the body of a scale request must be an autoscaling/v1 Scale"));
            }
            if object::name(&wanted) != name {
                return Err(ApiError::bad_request(
                    "the name of the object does not match the name on the URL",
                ));
            }
            let wanted_rv = object::resource_version(&wanted);
            if wanted_rv != 0 && wanted_rv != object::resource_version(cur) {
                return Err(ApiError::conflict(
                    res,
                    name,
                    "the object has been modified; please apply your changes to the latest version and try again",
                ));
            }
            let replicas = match wanted.pointer("/spec/replicas") {
                None | Some(Value::Null) => 0,
                Some(v) => v.as_i64().filter(|n| i32::try_from(*n).is_ok()).ok_or_else(|| {
                    ApiError::bad_request(format!("Scale.spec.replicas must be an integer, not {v}"))
                })?,
            };
            if replicas < 0 {
                return Err(ApiError::invalid(
                    res,
                    name,
                    vec![crate::error::Cause::invalid("spec.replicas", replicas, "must be greater than or equal to 0")],
                ));
            }
            let mut next = cur.clone();
            next["spec"]["replicas"] = json!(replicas);
            self.decide_update(res, None, cur, next, opts, ctx)
        })?;
        let entry = entry.ok_or_else(|| ApiError::not_found(res, name))?;
        Ok(scale_of(&entry.value()?))
    }

    /// Deletes the object, or marks it for deletion while finalizers (or a
    /// namespace's contents) hold it. Returns the last state.
    pub fn delete(
        &self,
        res: &'static Resource,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Arc<Entry>, ApiError> {
        if res.kind == "Namespace" && IMMORTAL_NAMESPACES.contains(&name) {
            return Err(ApiError::forbidden(
                res,
                name,
                format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
            ));
        }
        let removed = self.write(res, ns, name, opts.dry_run, |cur, _ctx| {
            let Some(cur) = cur else {
                return Err(ApiError::not_found(res, name));
            };
            if let Some(uid) = &opts.precondition_uid
                && uid != object::uid(cur)
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", object::uid(cur)),
                ));
            }
            if let Some(rv) = &opts.precondition_resource_version
                && rv.parse::<u64>().ok() != Some(object::resource_version(cur))
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        object::resource_version(cur)
                    ),
                ));
            }
            let mut next = cur.clone();
            let mut finalizers = object::finalizers(cur);
            match opts.propagation_policy.as_deref() {
                Some("Foreground") if !finalizers.iter().any(|f| f == "foregroundDeletion") => {
                    finalizers.push("foregroundDeletion".into());
                }
                Some("Orphan") if !finalizers.iter().any(|f| f == "orphan") => {
                    finalizers.push("orphan".into());
                }
                _ => {}
            }
            let held = !finalizers.is_empty()
                || (res.kind == "Namespace"
                    && cur
                        .pointer("/spec/finalizers")
                        .and_then(Value::as_array)
                        .is_some_and(|f| !f.is_empty()));
            if !held {
                let current_grace = cur.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_i64);
                return Ok(match pod_grace(res, cur, opts) {
                    Some(grace) if object::deletion_timestamp(cur).is_some() && current_grace == Some(grace) => Mutation::Keep,
                    Some(grace) => {
                        if let Some(m) = object::metadata_mut(&mut next) {
                            m.insert("deletionTimestamp".into(), json!(object::seconds_from_now(grace)));
                            m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                        }
                        Mutation::Put(next)
                    }
                    None => Mutation::Delete,
                });
            }
            if object::deletion_timestamp(cur).is_some() {
                return Ok(Mutation::Keep);
            }
            if let Some(m) = object::metadata_mut(&mut next) {
                m.insert("deletionTimestamp".into(), json!(object::now()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                m.insert("finalizers".into(), json!(finalizers));
            }
            if res.kind == "Namespace" {
                next["status"]["phase"] = json!("Terminating");
            }
            Ok(Mutation::Put(next))
        })?;
        let last = removed.ok_or_else(|| ApiError::not_found(res, name))?;
        Ok(last)
    }
}
