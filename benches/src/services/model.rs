//! The service set every dataplane is given: one TCP port per Service, a
//! ClusterIP chosen by the harness (so the three dataplanes see the same
//! addresses), and endpoints. The Kubernetes objects for Ferry and the
//! kube-proxy rulesets are both made from it.

use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

/// The namespace of every bench Service.
pub const NAMESPACE: &str = "bench";
/// The one port of every Service.
pub const PORT_NAME: &str = "http";
pub const SERVICE_PORT: u16 = 80;
/// Where the endpoints listen: `ferry-netexec`'s HTTP port (the fakes and
/// the HTTP target).
pub const TARGET_PORT: u16 = ferry_testbed::NETEXEC_HTTP_PORT;
/// Where the connect sink listens in the backend pods (the connect target).
pub const SINK_PORT: u16 = 9000;
/// The apiserver's service range; every ClusterIP below is inside it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// kube-proxy's `--cluster-cidr` (its local-traffic detector): the world's
/// pod CIDRs are inside it.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The Service the client's HTTP requests go to (backends: `ferry-netexec`).
pub const TARGET_NAME: &str = "target";
/// Its address: high in the range, apart from the fakes.
pub const TARGET_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 255, 250);
/// The Service the client's bare connects go to (backends: the bench's
/// accept sink, which keeps up with any connect rate).
pub const CONNECT_NAME: &str = "target-tcp";
pub const CONNECT_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 255, 251);

/// First ClusterIP of the fake Services (then one per Service).
const FAKE_IP_BASE: u32 = u32::from_be_bytes([10, 96, 0, 20]);
/// Fake endpoints: 10.248.0.0/14, outside every pod CIDR, routed nowhere
/// (the node's default route is the testbed's sink). Never dialed.
const FAKE_EP_BASE: u32 = u32::from_be_bytes([10, 248, 0, 0]);
/// Addresses the endpoint-change phase swaps in: 10.252.0.0/16.
const CHANGE_EP_BASE: u32 = u32::from_be_bytes([10, 252, 0, 0]);

/// A Service port's protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// As kube-proxy writes it in rules and chain names.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }

    /// As the API spells it.
    pub fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

/// One Service with one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Ready endpoints, all on `target_port`.
    pub endpoints: Vec<Ipv4Addr>,
    pub target_port: u16,
    pub protocol: Proto,
    /// Set: a NodePort Service (externalTrafficPolicy Cluster) with this
    /// node port; unset: a ClusterIP Service.
    pub node_port: Option<u16>,
}

impl Svc {
    /// kube-proxy's `ServicePortName.String()`: `ns/name:port`.
    pub fn port_name(&self) -> String {
        format!("{NAMESPACE}/{}:{PORT_NAME}", self.name)
    }

    pub fn slice_name(&self) -> String {
        format!("{}-ep", self.name)
    }
}

/// Fake Service `i`: `svc-<i>` at the `i`-th address after the base, with
/// `endpoints` distinct fake endpoints.
pub fn fake(i: usize, endpoints: usize) -> Svc {
    let idx = u32::try_from(i).unwrap_or(u32::MAX);
    let per = u32::try_from(endpoints).unwrap_or(u32::MAX);
    Svc {
        name: format!("svc-{i}"),
        ip: Ipv4Addr::from(FAKE_IP_BASE.saturating_add(idx)),
        endpoints: (0..per)
            .map(|j| Ipv4Addr::from(FAKE_EP_BASE + 1 + idx.saturating_mul(per) + j))
            .collect(),
        target_port: TARGET_PORT,
        protocol: Proto::Tcp,
        node_port: None,
    }
}

/// Fake Services `0..n` (`n` fits the /16 range and the fake endpoint
/// space, which the caller checks with [`check_sizes`]).
pub fn fakes(n: usize, endpoints: usize) -> Vec<Svc> {
    (0..n).map(|i| fake(i, endpoints)).collect()
}

/// The HTTP target Service with the real backends.
pub fn target(backends: &[Ipv4Addr]) -> Svc {
    Svc {
        name: TARGET_NAME.into(),
        ip: TARGET_IP,
        endpoints: backends.to_vec(),
        target_port: TARGET_PORT,
        protocol: Proto::Tcp,
        node_port: None,
    }
}

/// The connect target: the same backends, their accept sinks.
pub fn connect_target(backends: &[Ipv4Addr]) -> Svc {
    Svc {
        name: CONNECT_NAME.into(),
        ip: CONNECT_IP,
        endpoints: backends.to_vec(),
        target_port: SINK_PORT,
        protocol: Proto::Tcp,
        node_port: None,
    }
}

/// The `k`-th replacement endpoint address of the endpoint-change phase.
pub fn changed_endpoint(k: usize) -> Ipv4Addr {
    Ipv4Addr::from(CHANGE_EP_BASE + 1 + u32::try_from(k).unwrap_or(0) % 65_000)
}

/// Whether `services` fakes with `endpoints` each fit the address plan.
pub fn check_sizes(services: usize, endpoints: usize) -> Result<(), String> {
    let last_ip = FAKE_IP_BASE as u64 + services as u64;
    if last_ip >= u64::from(u32::from(TARGET_IP)) {
        return Err(format!(
            "{services} Services do not fit below {TARGET_IP} in {SERVICE_CIDR}"
        ));
    }
    if services as u64 * endpoints as u64 >= 1 << 18 {
        return Err(format!(
            "{services} x {endpoints} fake endpoints do not fit 10.248.0.0/14"
        ));
    }
    Ok(())
}

/// The Service object: no selector, the harness's ClusterIP (and node
/// port, for a NodePort Service).
pub fn service_object(svc: &Svc) -> serde_json::Result<Service> {
    let mut port = json!({"name": PORT_NAME, "port": SERVICE_PORT,
                          "protocol": svc.protocol.api(), "targetPort": svc.target_port});
    let mut spec = json!({"type": "ClusterIP", "clusterIP": svc.ip.to_string()});
    if let Some(np) = svc.node_port {
        port["nodePort"] = json!(np);
        spec["type"] = json!("NodePort");
        spec["externalTrafficPolicy"] = json!("Cluster");
    }
    spec["ports"] = json!([port]);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": svc.name, "namespace": NAMESPACE},
        "spec": spec,
    }))
}

/// The endpoints list of a slice, as JSON (also what a merge patch sends).
pub fn endpoints_json(svc: &Svc) -> serde_json::Value {
    json!(
        svc.endpoints
            .iter()
            .map(|ip| json!({"addresses": [ip.to_string()], "conditions": {"ready": true}}))
            .collect::<Vec<_>>()
    )
}

/// The EndpointSlice the harness writes for a Service (none of the
/// apiserver's controllers touch slices of selectorless Services).
pub fn slice_object(svc: &Svc) -> serde_json::Result<EndpointSlice> {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": svc.slice_name(), "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": svc.name},
        },
        "addressType": "IPv4",
        "ports": [{"name": PORT_NAME, "port": svc.target_port, "protocol": svc.protocol.api()}],
        "endpoints": endpoints_json(svc),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_range() {
        let a = fake(0, 2);
        let b = fake(1, 2);
        assert_eq!(a.ip, Ipv4Addr::new(10, 96, 0, 20));
        assert_eq!(b.ip, Ipv4Addr::new(10, 96, 0, 21));
        assert_eq!(
            a.endpoints,
            [Ipv4Addr::new(10, 248, 0, 1), Ipv4Addr::new(10, 248, 0, 2)]
        );
        assert_eq!(b.endpoints[0], Ipv4Addr::new(10, 248, 0, 3));
        assert!(check_sizes(30_000, 2).is_ok());
        assert!(check_sizes(10_000, 10).is_ok());
        assert!(check_sizes(70_000, 1).is_err());
        assert_eq!(a.port_name(), "bench/svc-0:http");
    }

    #[test]
    fn objects_decode() {
        let svc = fake(3, 2);
        let s = service_object(&svc).expect("service");
        assert_eq!(
            s.spec.and_then(|s| s.cluster_ip).as_deref(),
            Some("10.96.0.23")
        );
        let e = slice_object(&svc).expect("slice");
        assert_eq!(e.endpoints.len(), 2);
        assert_eq!(e.address_type, "IPv4");
    }

    #[test]
    fn nodeport_objects() {
        let mut svc = fake(3, 1);
        svc.protocol = Proto::Udp;
        svc.node_port = Some(30081);
        let s = service_object(&svc).expect("service");
        let spec = s.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Cluster"));
        let port = &spec.ports.expect("ports")[0];
        assert_eq!(port.node_port, Some(30081));
        assert_eq!(port.protocol.as_deref(), Some("UDP"));
        let e = slice_object(&svc).expect("slice");
        assert_eq!(e.ports.expect("ports")[0].protocol.as_deref(), Some("UDP"));
        // ClusterIP Services stay as they were.
        let plain = service_object(&fake(3, 1)).expect("service");
        assert_eq!(
            plain.spec.and_then(|s| s.type_).as_deref(),
            Some("ClusterIP")
        );
    }
}
