//! Round trips against what kubectl v1.32 really sends.
//!
//! `testdata/*.pb` are request bodies kubectl v1.32.4 sent (captured with
//! `-v=9`, which hex-dumps them) for `kubectl create deployment|namespace|
//! configmap|secret|serviceaccount|service nodeport`, and `*.json` the same
//! command's `--dry-run=client -o json`: the JSON kubectl would have sent.
//! `pod_rich_go.json` is `kubectl run --overrides --dry-run=client -o json`
//! of a pod using most of PodSpec, i.e. Go's JSON of the typed object.

use super::*;

fn fixture(name: &str) -> (Vec<u8>, Value) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/protobuf/testdata");
    let pb = std::fs::read(dir.join(format!("{name}.pb"))).expect("pb fixture");
    let json = std::fs::read(dir.join(format!("{name}.json"))).expect("json fixture");
    (pb, serde_json::from_slice(&json).expect("json"))
}

fn kind_of(v: &Value) -> &str {
    v["kind"].as_str().expect("kind")
}

fn resource_of(kind: &str) -> &'static Resource {
    resources::RESOURCES
        .iter()
        .find(|r| r.kind == kind)
        .expect("served kind")
}

#[test]
fn kubectl_protobuf_decodes_to_the_json_kubectl_would_send() {
    for name in [
        "deployment",
        "deployment_ns",
        "namespace",
        "configmap",
        "secret",
        "serviceaccount",
        "service_create",
    ] {
        let (pb, want) = fixture(name);
        let got = decode(kind_of(&want), &pb).expect(name);
        assert_eq!(got, want, "{name}");
        // And back: our encoding decodes to the same JSON.
        let again = encode(resource_of(kind_of(&want)), &got).expect(name);
        assert_eq!(decode(kind_of(&want), &again).expect(name), want, "{name}");
    }
}

#[test]
fn replicas_zero_survives_as_a_set_pointer() {
    // `--replicas=0` is a pointer set to zero: dropping it would default to 1.
    let (pb, want) = fixture("deployment_ns");
    assert_eq!(want["spec"]["replicas"], json!(0));
    assert_eq!(
        decode("Deployment", &pb).expect("decode")["spec"]["replicas"],
        json!(0)
    );
}

#[test]
fn a_rich_pod_round_trips_exactly_in_go_json_form() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/protobuf/testdata");
    let want: Value =
        serde_json::from_slice(&std::fs::read(dir.join("pod_rich_go.json")).expect("fixture"))
            .expect("json");
    // Probes, lifecycle, env sources, volumes (inlined VolumeSource),
    // affinity, tolerations, security contexts, quantities, int-or-string.
    for p in [
        "/spec/containers/0/readinessProbe/httpGet/port",
        "/spec/containers/0/lifecycle/postStart/sleep/seconds",
        "/spec/volumes/0/emptyDir/sizeLimit",
        "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
        "/spec/tolerations/0/tolerationSeconds",
        "/spec/securityContext/supplementalGroups/1",
        "/spec/containers/0/resources/limits/memory",
        "/spec/containers/0/env/2/valueFrom/resourceFieldRef/divisor",
    ] {
        assert!(want.pointer(p).is_some(), "fixture lacks {p}");
    }
    let pb = encode(&resources::PODS, &want).expect("encode");
    assert_eq!(decode("Pod", &pb).expect("decode"), want);
}

/// Drops what Go's JSON adds for zero values, to compare hand-written
/// objects with their decoded form.
fn strip_zero(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), strip_zero(v)))
                .filter(|(_, v)| !is_zero(v) && *v != json!({}))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_zero).collect()),
        v => v.clone(),
    }
}

fn rich_objects() -> Vec<Value> {
    let template = json!({
        "metadata": {"labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}],
            "livenessProbe": {"grpc": {"port": 9000, "service": "health"}, "periodSeconds": 3}}],
            "nodeName": "n1", "hostNetwork": true, "priorityClassName": "high",
            "overhead": {"cpu": "10m"}, "schedulingGates": [{"name": "g"}]}
    });
    let meta = json!({"name": "x", "namespace": "default", "uid": "u-1", "resourceVersion": "7",
        "generation": 3, "creationTimestamp": "2024-05-01T10:00:00Z",
        "deletionTimestamp": "2024-05-01T11:00:00Z", "deletionGracePeriodSeconds": 0,
        "labels": {"app": "web"}, "finalizers": ["f1"],
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u-2", "controller": true, "blockOwnerDeletion": true}],
        "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1", "time": "2024-05-01T10:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}}}}}]});
    vec![
        json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": meta,
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]},
                "template": template, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
                "minReadySeconds": 5, "revisionHistoryLimit": 10, "paused": true, "progressDeadlineSeconds": 600},
            "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2, "unavailableReplicas": 1,
                "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2024-05-01T10:00:00Z", "lastTransitionTime": "2024-05-01T10:00:00Z", "reason": "MinimumReplicasAvailable", "message": "ok"}], "collisionCount": 1}}),
        json!({"kind": "StatefulSet", "apiVersion": "apps/v1", "metadata": {"name": "web"},
            "spec": {"serviceName": "nginx", "replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": template,
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": "std"}}],
                "podManagementPolicy": "Parallel", "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 1, "maxUnavailable": "50%"}},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"}, "ordinals": {"start": 5}}}),
        json!({"kind": "DaemonSet", "apiVersion": "apps/v1", "metadata": {"name": "ds"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template, "updateStrategy": {"type": "OnDelete"}},
            "status": {"currentNumberScheduled": 1, "numberMisscheduled": 0, "desiredNumberScheduled": 2, "numberReady": 1}}),
        json!({"kind": "ControllerRevision", "apiVersion": "apps/v1", "metadata": {"name": "cr"}, "data": {"spec": {"template": {"x": [1, 2]}}}, "revision": 4}),
        json!({"kind": "Service", "apiVersion": "v1", "metadata": {"name": "svc"},
            "spec": {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080, "protocol": "TCP", "appProtocol": "h2c"}],
                "selector": {"app": "web"}, "clusterIP": "10.96.0.5", "clusterIPs": ["10.96.0.5", "fd00::5"], "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "PreferDualStack",
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000, "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
                "allocateLoadBalancerNodePorts": false, "loadBalancerSourceRanges": ["10.0.0.0/8"], "internalTrafficPolicy": "Cluster", "trafficDistribution": "PreferClose"},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP", "ports": [{"port": 80, "protocol": "TCP"}]}]}}}),
        json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "taints": [{"key": "k", "value": "v", "effect": "NoSchedule", "timeAdded": "2024-05-01T10:00:00Z"}], "unschedulable": true},
            "status": {"capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"}, "allocatable": {"cpu": "1900m"},
                "addresses": [{"type": "InternalIP", "address": "192.168.0.2"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                "nodeInfo": {"machineID": "m", "systemUUID": "s", "bootID": "b", "kernelVersion": "6", "osImage": "o", "containerRuntimeVersion": "r", "kubeletVersion": "v1.32.0", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
                "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "2024-05-01T10:00:00Z", "reason": "KubeletReady"}]}}),
        json!({"kind": "Event", "apiVersion": "v1", "metadata": {"name": "e", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default", "uid": "u", "apiVersion": "v1", "fieldPath": "spec.containers{c}"},
            "reason": "Started", "message": "Started container c", "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2024-05-01T10:00:00Z", "lastTimestamp": "2024-05-01T10:00:05Z", "count": 2, "type": "Normal",
            "eventTime": "2024-05-01T10:00:00.123456Z", "series": {"count": 2, "lastObservedTime": "2024-05-01T10:00:05.000001Z"},
            "action": "Start", "reportingComponent": "kubelet", "reportingInstance": "n1"}),
        json!({"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"name": "s"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": "p", "namespace": "default"}, "nodeName": "n1", "zone": "z", "hints": {"forZones": [{"name": "z"}]}}],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http"}]}),
        json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": {"name": "n1", "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": "2024-05-01T10:00:00.500000Z", "leaseTransitions": 0}}),
        json!({"kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1", "metadata": {"name": "np"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}, {"namespaceSelector": {"matchLabels": {"a": "b"}}}], "ports": [{"protocol": "TCP", "port": "http", "endPort": 90}]}],
                "egress": [{"to": [{"podSelector": {"matchLabels": {"x": "y"}}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}}),
        json!({"kind": "Secret", "apiVersion": "v1", "metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dmFsdWU=", "empty": ""}, "immutable": true}),
        json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": "AAEC"}}),
        json!({"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "sa"}, "secrets": [{"name": "t"}], "imagePullSecrets": [{"name": "reg"}], "automountServiceAccountToken": false}),
        json!({"kind": "Endpoints", "apiVersion": "v1", "metadata": {"name": "e"}, "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}], "notReadyAddresses": [{"ip": "10.0.0.2"}], "ports": [{"port": 80, "name": "http", "protocol": "TCP"}]}]}),
        json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": "dev"}, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating", "conditions": [{"type": "NamespaceDeletionContentFailure", "status": "False"}]}}),
    ]
}

#[test]
fn every_field_of_rich_objects_of_every_served_kind_survives_a_round_trip() {
    let objects = rich_objects();
    let mut kinds: Vec<&str> = objects.iter().map(kind_of).collect();
    kinds.push("Pod");
    // Reviews are never listed: they have no list kind.
    for r in resources::RESOURCES.iter().filter(|r| !r.is_review()) {
        assert!(
            message(r.group, r.kind).is_some(),
            "{} has no message",
            r.kind
        );
        assert!(
            message(r.group, &r.list_kind()).is_some(),
            "{} list",
            r.kind
        );
    }
    for want in objects {
        let kind = kind_of(&want);
        let pb = encode(resource_of(kind), &want).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let got = decode(kind, &pb).unwrap_or_else(|e| panic!("{kind}: {}", e.message));
        assert_eq!(strip_zero(&got), strip_zero(&want), "{kind}");
        // Decoding is a fixed point: the Go form encodes back to itself.
        let again = encode(resource_of(kind), &got).expect("re-encode");
        assert_eq!(decode(kind, &again).expect("re-decode"), got, "{kind}");
    }
}

#[test]
fn lists_encode_with_items_and_list_metadata() {
    let list = json!({"kind": "DeploymentList", "apiVersion": "apps/v1", "metadata": {"resourceVersion": "12", "continue": "abc"},
        "items": [{"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "a"}, "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}]});
    let pb = encode(&resources::DEPLOYMENTS, &list).expect("encode");
    let (api_version, kind, raw) = envelope(&pb).expect("envelope");
    assert_eq!(
        (api_version.as_str(), kind.as_str()),
        ("apps/v1", "DeploymentList")
    );
    let m = message("apps", "DeploymentList").expect("list message");
    let got = Value::Object(decode_message(m, raw, 0).expect("decode"));
    assert_eq!(got["metadata"]["resourceVersion"], "12");
    assert_eq!(got["items"][0]["metadata"]["name"], "a");
    assert_eq!(
        got["items"][0]["spec"]["template"]["spec"]["containers"][0]["image"],
        "i"
    );
}

#[test]
fn unknown_fields_are_refused_never_dropped() {
    // A field number the table does not know: 415 naming it.
    let (mut pb, _) = fixture("namespace");
    // Append field 99 (varint 1) to the raw object: rebuild the envelope.
    let (api_version, kind, raw) = envelope(&pb).expect("envelope");
    let mut raw = raw.to_vec();
    put_key(99, 0, &mut raw);
    put_varint(1, &mut raw);
    let mut tm = Vec::new();
    put_bytes(1, api_version.as_bytes(), &mut tm);
    put_bytes(2, kind.as_bytes(), &mut tm);
    pb = MAGIC.to_vec();
    put_bytes(1, &tm, &mut pb);
    put_bytes(2, &raw, &mut pb);
    let err = decode("Namespace", &pb).expect_err("unknown field");
    assert_eq!(err.code, 415);
    assert!(
        err.message
            .contains("field 99 of k8s.io.api.core.v1.Namespace"),
        "{}",
        err.message
    );
    // A JSON field with no protobuf form: the encoder fails (JSON is served).
    let e = encode(
        &resources::PODS,
        &json!({"kind": "Pod", "apiVersion": "v1", "spec": {"bogus": 1}}),
    )
    .expect_err("unknown JSON field");
    assert!(e.to_string().contains("bogus"), "{e}");
}

#[test]
fn malformed_bodies_are_400_and_unknown_kinds_415() {
    let (pb, _) = fixture("configmap");
    for cut in [1, 3, 10] {
        let err = decode("ConfigMap", &pb[..pb.len() - cut]).expect_err("truncated");
        assert_eq!(err.code, 400);
    }
    assert_eq!(
        decode("ConfigMap", b"garbage").expect_err("magic").code,
        400
    );
    assert_eq!(decode("Binding", &pb).expect_err("kind").code, 415);
    // A wire type that does not match the field's.
    let mut raw = Vec::new();
    put_bytes(2, b"x", &mut raw); // ConfigMap.data is a map; field 4 (immutable) is bool:
    put_bytes(4, b"x", &mut raw);
    let mut body = MAGIC.to_vec();
    put_bytes(2, &raw, &mut body);
    assert_eq!(decode("ConfigMap", &body).expect_err("wire type").code, 400);
}

#[test]
fn accept_negotiation_follows_the_clients_order() {
    assert!(preferred(
        "application/vnd.kubernetes.protobuf,application/json"
    ));
    assert!(preferred("application/vnd.kubernetes.protobuf, */*"));
    assert!(!preferred(
        "application/json, application/vnd.kubernetes.protobuf"
    ));
    assert!(!preferred(
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    ));
    assert!(!preferred(
        "application/vnd.kubernetes.protobuf;stream=watch"
    ));
    assert!(!preferred(""));
}
