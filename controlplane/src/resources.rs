//! The table of served kinds: what discovery advertises, how request paths
//! map to a kind, and how a kind's objects are keyed in storage.

/// A served kind in one group/version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resource {
    /// API group; empty for the legacy core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Plural lower-case name used in paths.
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    /// Subresources besides the main resource (`status`, `finalize`).
    pub subresources: &'static [&'static str],
}

impl Resource {
    /// `v1` or `group/version`, as objects carry it in `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.contains(&"status")
    }

    /// Whether the kind serves `scale` (autoscaling/v1 Scale).
    pub fn has_scale(&self) -> bool {
        self.subresources.contains(&"scale")
    }

    /// The storage key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/{}/{}", self.prefix(), ns, name),
            _ => format!("{}/{}", self.prefix(), name),
        }
    }

    /// The storage key prefix shared by all objects of this kind.
    pub fn prefix(&self) -> String {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        format!("/{group}/{}", self.plural)
    }

    /// Whether the kind is a review answered at once and never stored
    /// (authorization.k8s.io, authentication.k8s.io): it serves `create`
    /// only.
    pub fn is_review(&self) -> bool {
        matches!(self.group, "authorization.k8s.io" | "authentication.k8s.io")
    }

    /// Whether the kind is in the OpenAPI documents (see
    /// [`WITHOUT_VENDORED_SCHEMA`]).
    pub fn has_vendored_schema(&self) -> bool {
        !WITHOUT_VENDORED_SCHEMA.contains(&self.group)
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

const ALL: &[&str] = &["all"];

pub const NAMESPACES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    categories: &[],
    subresources: &["status", "finalize"],
};
pub const NODES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    short_names: &["no"],
    categories: &[],
    subresources: &["status"],
};
pub const PODS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    categories: ALL,
    // `log`, `exec` and `portforward` are proxied to the pod's node
    // (api/node_proxy.rs).
    subresources: &["status", "log", "exec", "portforward"],
};
pub const SERVICES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "services",
    singular: "service",
    kind: "Service",
    namespaced: true,
    short_names: &["svc"],
    categories: ALL,
    subresources: &["status"],
};
pub const ENDPOINTS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "endpoints",
    singular: "endpoints",
    kind: "Endpoints",
    namespaced: true,
    short_names: &["ep"],
    categories: &[],
    subresources: &[],
};
pub const CONFIGMAPS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "configmaps",
    singular: "configmap",
    kind: "ConfigMap",
    namespaced: true,
    short_names: &["cm"],
    categories: &[],
    subresources: &[],
};
pub const SERVICEACCOUNTS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "serviceaccounts",
    singular: "serviceaccount",
    kind: "ServiceAccount",
    namespaced: true,
    short_names: &["sa"],
    categories: &[],
    // `token`: TokenRequest (`crate::serviceaccount::request`).
    subresources: &["token"],
};
pub const EVENTS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "events",
    singular: "event",
    kind: "Event",
    namespaced: true,
    short_names: &["ev"],
    categories: &[],
    subresources: &[],
};
pub const ENDPOINTSLICES: Resource = Resource {
    group: "discovery.k8s.io",
    version: "v1",
    plural: "endpointslices",
    singular: "endpointslice",
    kind: "EndpointSlice",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const NETWORKPOLICIES: Resource = Resource {
    group: "networking.k8s.io",
    version: "v1",
    plural: "networkpolicies",
    singular: "networkpolicy",
    kind: "NetworkPolicy",
    namespaced: true,
    short_names: &["netpol"],
    categories: &[],
    subresources: &[],
};
pub const LEASES: Resource = Resource {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    singular: "lease",
    kind: "Lease",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

pub const SECRETS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "secrets",
    singular: "secret",
    kind: "Secret",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const DEPLOYMENTS: Resource = Resource {
    group: "apps",
    version: "v1",
    plural: "deployments",
    singular: "deployment",
    kind: "Deployment",
    namespaced: true,
    short_names: &["deploy"],
    categories: ALL,
    subresources: &["status", "scale"],
};
pub const REPLICASETS: Resource = Resource {
    group: "apps",
    version: "v1",
    plural: "replicasets",
    singular: "replicaset",
    kind: "ReplicaSet",
    namespaced: true,
    short_names: &["rs"],
    categories: ALL,
    subresources: &["status", "scale"],
};
pub const DAEMONSETS: Resource = Resource {
    group: "apps",
    version: "v1",
    plural: "daemonsets",
    singular: "daemonset",
    kind: "DaemonSet",
    namespaced: true,
    short_names: &["ds"],
    categories: ALL,
    subresources: &["status"],
};
pub const STATEFULSETS: Resource = Resource {
    group: "apps",
    version: "v1",
    plural: "statefulsets",
    singular: "statefulset",
    kind: "StatefulSet",
    namespaced: true,
    short_names: &["sts"],
    categories: ALL,
    subresources: &["status", "scale"],
};
pub const CONTROLLERREVISIONS: Resource = Resource {
    group: "apps",
    version: "v1",
    plural: "controllerrevisions",
    singular: "controllerrevision",
    kind: "ControllerRevision",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

pub const ROLES: Resource = Resource {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "roles",
    singular: "role",
    kind: "Role",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const CLUSTERROLES: Resource = Resource {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "clusterroles",
    singular: "clusterrole",
    kind: "ClusterRole",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const ROLEBINDINGS: Resource = Resource {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "rolebindings",
    singular: "rolebinding",
    kind: "RoleBinding",
    namespaced: true,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const CLUSTERROLEBINDINGS: Resource = Resource {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    kind: "ClusterRoleBinding",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

/// The authorization.k8s.io reviews: create-only, answered by the
/// authorizer (`crate::rbac::review`) and never stored.
pub const SELFSUBJECTACCESSREVIEWS: Resource = Resource {
    group: "authorization.k8s.io",
    version: "v1",
    plural: "selfsubjectaccessreviews",
    singular: "selfsubjectaccessreview",
    kind: "SelfSubjectAccessReview",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const SELFSUBJECTRULESREVIEWS: Resource = Resource {
    group: "authorization.k8s.io",
    version: "v1",
    plural: "selfsubjectrulesreviews",
    singular: "selfsubjectrulesreview",
    kind: "SelfSubjectRulesReview",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
};
pub const SUBJECTACCESSREVIEWS: Resource = Resource {
    group: "authorization.k8s.io",
    version: "v1",
    plural: "subjectaccessreviews",
    singular: "subjectaccessreview",
    kind: "SubjectAccessReview",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

/// TokenReview: create-only, answered by the authenticators
/// (`crate::serviceaccount::review`) and never stored.
pub const TOKENREVIEWS: Resource = Resource {
    group: "authentication.k8s.io",
    version: "v1",
    plural: "tokenreviews",
    singular: "tokenreview",
    kind: "TokenReview",
    namespaced: false,
    short_names: &[],
    categories: &[],
    subresources: &[],
};

/// Every served kind, core group first, in discovery order.
pub const PODDISRUPTIONBUDGETS: Resource = Resource {
    group: "policy",
    version: "v1",
    plural: "poddisruptionbudgets",
    singular: "poddisruptionbudget",
    kind: "PodDisruptionBudget",
    namespaced: true,
    short_names: &["pdb"],
    categories: &[],
    subresources: &["status"],
};

pub const RESOURCES: &[Resource] = &[
    NAMESPACES,
    NODES,
    PODS,
    SERVICES,
    ENDPOINTS,
    CONFIGMAPS,
    SERVICEACCOUNTS,
    EVENTS,
    SECRETS,
    DEPLOYMENTS,
    REPLICASETS,
    DAEMONSETS,
    STATEFULSETS,
    CONTROLLERREVISIONS,
    ENDPOINTSLICES,
    NETWORKPOLICIES,
    LEASES,
    PODDISRUPTIONBUDGETS,
    CLUSTERROLEBINDINGS,
    CLUSTERROLES,
    ROLEBINDINGS,
    ROLES,
    SELFSUBJECTACCESSREVIEWS,
    SELFSUBJECTRULESREVIEWS,
    SUBJECTACCESSREVIEWS,
    TOKENREVIEWS,
];

/// Served API groups besides core, each with its one version.
pub const GROUPS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("discovery.k8s.io", "v1"),
    ("networking.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("policy", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"),
];

/// Groups left out of the OpenAPI documents: the access and token reviews,
/// which are only ever created and answered (their schemas are vendored
/// for protobuf like every other kind's).
pub const WITHOUT_VENDORED_SCHEMA: &[&str] = &["authorization.k8s.io", "authentication.k8s.io"];

/// Finds the kind served at `group/version/plural`.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Every kind served in one group/version.
pub fn in_group_version(group: &str, version: &str) -> impl Iterator<Item = &'static Resource> {
    let (group, version) = (group.to_string(), version.to_string());
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}
