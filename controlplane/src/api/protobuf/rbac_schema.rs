//! The protobuf messages of rbac.authorization.k8s.io/v1 and the
//! authorization.k8s.io/v1 reviews, in the form `cargo xtask gen-api`
//! writes into `schema.rs`: field numbers and types from k8s.io/api
//! `rbac/v1/generated.proto` and `authorization/v1/generated.proto`, JSON
//! names and presence from their `types.go` struct tags. Written out here
//! until the generator's ROOTS list these groups (then this file goes and
//! `schema.rs` holds them).

use super::schema::{meta_v1_LabelSelector, meta_v1_ListMeta, meta_v1_ObjectMeta};
use super::{Label, Message, Presence, Ty, f};

/// The message of an RBAC kind or review by API group and kind.
pub fn root(group: &str, kind: &str) -> Option<&'static Message> {
    Some(match (group, kind) {
        ("rbac.authorization.k8s.io", "Role") => &rbac_v1_Role,
        ("rbac.authorization.k8s.io", "RoleList") => &rbac_v1_RoleList,
        ("rbac.authorization.k8s.io", "ClusterRole") => &rbac_v1_ClusterRole,
        ("rbac.authorization.k8s.io", "ClusterRoleList") => &rbac_v1_ClusterRoleList,
        ("rbac.authorization.k8s.io", "RoleBinding") => &rbac_v1_RoleBinding,
        ("rbac.authorization.k8s.io", "RoleBindingList") => &rbac_v1_RoleBindingList,
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => &rbac_v1_ClusterRoleBinding,
        ("rbac.authorization.k8s.io", "ClusterRoleBindingList") => &rbac_v1_ClusterRoleBindingList,
        ("authorization.k8s.io", "SelfSubjectAccessReview") => {
            &authorization_v1_SelfSubjectAccessReview
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => {
            &authorization_v1_SelfSubjectRulesReview
        }
        ("authorization.k8s.io", "SubjectAccessReview") => &authorization_v1_SubjectAccessReview,
        _ => return None,
    })
}

#[allow(non_upper_case_globals)]
static rbac_v1_PolicyRule: Message = Message {
    name: "k8s.io.api.rbac.v1.PolicyRule",
    fields: &[
        f(1, "verbs", Ty::Str, Label::Repeated, Presence::Always),
        f(
            2,
            "apiGroups",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            3,
            "resources",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            4,
            "resourceNames",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            5,
            "nonResourceURLs",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_Subject: Message = Message {
    name: "k8s.io.api.rbac.v1.Subject",
    fields: &[
        f(1, "kind", Ty::Str, Label::Single, Presence::Always),
        f(2, "apiGroup", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(3, "name", Ty::Str, Label::Single, Presence::Always),
        f(4, "namespace", Ty::Str, Label::Single, Presence::OmitEmpty),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_RoleRef: Message = Message {
    name: "k8s.io.api.rbac.v1.RoleRef",
    fields: &[
        f(1, "apiGroup", Ty::Str, Label::Single, Presence::Always),
        f(2, "kind", Ty::Str, Label::Single, Presence::Always),
        f(3, "name", Ty::Str, Label::Single, Presence::Always),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_AggregationRule: Message = Message {
    name: "k8s.io.api.rbac.v1.AggregationRule",
    fields: &[f(
        1,
        "clusterRoleSelectors",
        Ty::Msg(&meta_v1_LabelSelector),
        Label::Repeated,
        Presence::OmitEmpty,
    )],
};

#[allow(non_upper_case_globals)]
static rbac_v1_Role: Message = Message {
    name: "k8s.io.api.rbac.v1.Role",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "rules",
            Ty::Msg(&rbac_v1_PolicyRule),
            Label::Repeated,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_RoleList: Message = Message {
    name: "k8s.io.api.rbac.v1.RoleList",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ListMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "items",
            Ty::Msg(&rbac_v1_Role),
            Label::Repeated,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_ClusterRole: Message = Message {
    name: "k8s.io.api.rbac.v1.ClusterRole",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "rules",
            Ty::Msg(&rbac_v1_PolicyRule),
            Label::Repeated,
            Presence::Always,
        ),
        f(
            3,
            "aggregationRule",
            Ty::Msg(&rbac_v1_AggregationRule),
            Label::Single,
            Presence::Pointer,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_ClusterRoleList: Message = Message {
    name: "k8s.io.api.rbac.v1.ClusterRoleList",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ListMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "items",
            Ty::Msg(&rbac_v1_ClusterRole),
            Label::Repeated,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_RoleBinding: Message = Message {
    name: "k8s.io.api.rbac.v1.RoleBinding",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "subjects",
            Ty::Msg(&rbac_v1_Subject),
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            3,
            "roleRef",
            Ty::Msg(&rbac_v1_RoleRef),
            Label::Single,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_RoleBindingList: Message = Message {
    name: "k8s.io.api.rbac.v1.RoleBindingList",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ListMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "items",
            Ty::Msg(&rbac_v1_RoleBinding),
            Label::Repeated,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_ClusterRoleBinding: Message = Message {
    name: "k8s.io.api.rbac.v1.ClusterRoleBinding",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "subjects",
            Ty::Msg(&rbac_v1_Subject),
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            3,
            "roleRef",
            Ty::Msg(&rbac_v1_RoleRef),
            Label::Single,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static rbac_v1_ClusterRoleBindingList: Message = Message {
    name: "k8s.io.api.rbac.v1.ClusterRoleBindingList",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ListMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "items",
            Ty::Msg(&rbac_v1_ClusterRoleBinding),
            Label::Repeated,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_ResourceAttributes: Message = Message {
    name: "k8s.io.api.authorization.v1.ResourceAttributes",
    fields: &[
        f(1, "namespace", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(2, "verb", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(3, "group", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(4, "version", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(5, "resource", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(
            6,
            "subresource",
            Ty::Str,
            Label::Single,
            Presence::OmitEmpty,
        ),
        f(7, "name", Ty::Str, Label::Single, Presence::OmitEmpty),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_NonResourceAttributes: Message = Message {
    name: "k8s.io.api.authorization.v1.NonResourceAttributes",
    fields: &[
        f(1, "path", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(2, "verb", Ty::Str, Label::Single, Presence::OmitEmpty),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SubjectAccessReviewStatus: Message = Message {
    name: "k8s.io.api.authorization.v1.SubjectAccessReviewStatus",
    fields: &[
        f(1, "allowed", Ty::Bool, Label::Single, Presence::Always),
        f(4, "denied", Ty::Bool, Label::Single, Presence::OmitEmpty),
        f(2, "reason", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(
            3,
            "evaluationError",
            Ty::Str,
            Label::Single,
            Presence::OmitEmpty,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SelfSubjectAccessReviewSpec: Message = Message {
    name: "k8s.io.api.authorization.v1.SelfSubjectAccessReviewSpec",
    fields: &[
        f(
            1,
            "resourceAttributes",
            Ty::Msg(&authorization_v1_ResourceAttributes),
            Label::Single,
            Presence::Pointer,
        ),
        f(
            2,
            "nonResourceAttributes",
            Ty::Msg(&authorization_v1_NonResourceAttributes),
            Label::Single,
            Presence::Pointer,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SelfSubjectAccessReview: Message = Message {
    name: "k8s.io.api.authorization.v1.SelfSubjectAccessReview",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "spec",
            Ty::Msg(&authorization_v1_SelfSubjectAccessReviewSpec),
            Label::Single,
            Presence::Always,
        ),
        f(
            3,
            "status",
            Ty::Msg(&authorization_v1_SubjectAccessReviewStatus),
            Label::Single,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SubjectAccessReviewSpec: Message = Message {
    name: "k8s.io.api.authorization.v1.SubjectAccessReviewSpec",
    fields: &[
        f(
            1,
            "resourceAttributes",
            Ty::Msg(&authorization_v1_ResourceAttributes),
            Label::Single,
            Presence::Pointer,
        ),
        f(
            2,
            "nonResourceAttributes",
            Ty::Msg(&authorization_v1_NonResourceAttributes),
            Label::Single,
            Presence::Pointer,
        ),
        f(3, "user", Ty::Str, Label::Single, Presence::OmitEmpty),
        f(4, "groups", Ty::Str, Label::Repeated, Presence::OmitEmpty),
        f(6, "uid", Ty::Str, Label::Single, Presence::OmitEmpty),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SubjectAccessReview: Message = Message {
    name: "k8s.io.api.authorization.v1.SubjectAccessReview",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "spec",
            Ty::Msg(&authorization_v1_SubjectAccessReviewSpec),
            Label::Single,
            Presence::Always,
        ),
        f(
            3,
            "status",
            Ty::Msg(&authorization_v1_SubjectAccessReviewStatus),
            Label::Single,
            Presence::Always,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SelfSubjectRulesReviewSpec: Message = Message {
    name: "k8s.io.api.authorization.v1.SelfSubjectRulesReviewSpec",
    fields: &[f(
        1,
        "namespace",
        Ty::Str,
        Label::Single,
        Presence::OmitEmpty,
    )],
};

#[allow(non_upper_case_globals)]
static authorization_v1_ResourceRule: Message = Message {
    name: "k8s.io.api.authorization.v1.ResourceRule",
    fields: &[
        f(1, "verbs", Ty::Str, Label::Repeated, Presence::Always),
        f(
            2,
            "apiGroups",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            3,
            "resources",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
        f(
            4,
            "resourceNames",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_NonResourceRule: Message = Message {
    name: "k8s.io.api.authorization.v1.NonResourceRule",
    fields: &[
        f(1, "verbs", Ty::Str, Label::Repeated, Presence::Always),
        f(
            2,
            "nonResourceURLs",
            Ty::Str,
            Label::Repeated,
            Presence::OmitEmpty,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SubjectRulesReviewStatus: Message = Message {
    name: "k8s.io.api.authorization.v1.SubjectRulesReviewStatus",
    fields: &[
        f(
            1,
            "resourceRules",
            Ty::Msg(&authorization_v1_ResourceRule),
            Label::Repeated,
            Presence::Always,
        ),
        f(
            2,
            "nonResourceRules",
            Ty::Msg(&authorization_v1_NonResourceRule),
            Label::Repeated,
            Presence::Always,
        ),
        f(3, "incomplete", Ty::Bool, Label::Single, Presence::Always),
        f(
            4,
            "evaluationError",
            Ty::Str,
            Label::Single,
            Presence::OmitEmpty,
        ),
    ],
};

#[allow(non_upper_case_globals)]
static authorization_v1_SelfSubjectRulesReview: Message = Message {
    name: "k8s.io.api.authorization.v1.SelfSubjectRulesReview",
    fields: &[
        f(
            1,
            "metadata",
            Ty::Msg(&meta_v1_ObjectMeta),
            Label::Single,
            Presence::Always,
        ),
        f(
            2,
            "spec",
            Ty::Msg(&authorization_v1_SelfSubjectRulesReviewSpec),
            Label::Single,
            Presence::Always,
        ),
        f(
            3,
            "status",
            Ty::Msg(&authorization_v1_SubjectRulesReviewStatus),
            Label::Single,
            Presence::Always,
        ),
    ],
};
