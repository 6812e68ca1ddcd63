//! Any bytes, as a UDP and as a TCP query, through hickory-server's parsing
//! and ferry-dns's handler over a small cluster: it must never panic.
//! Run: `cargo xtask fuzz [SECONDS]` (or `cargo +nightly fuzz run query` in
//! dns/).

#![no_main]

use std::sync::{Arc, OnceLock};

use ferry_dns::answer::Zone;
use ferry_dns::config::PodsMode;
use ferry_dns::index::{EndpointRecord, PortRecord, ServiceKind, ServiceRecord, SliceRecord};
use ferry_dns::server::Handler;
use ferry_dns::watch::Shared;
use hickory_server::net::xfer::Protocol;
use libfuzzer_sys::fuzz_target;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    handler: Handler,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let shared = Arc::new(Shared::new(false));
        {
            let mut index = shared.index.write().unwrap_or_else(|p| p.into_inner());
            index.upsert_namespace("default");
            let http = PortRecord {
                name: "http".into(),
                protocol: "tcp",
                port: 80,
            };
            index.upsert_service(
                "default",
                "web",
                ServiceRecord {
                    kind: ServiceKind::ClusterIp(vec![
                        "10.96.0.10"
                            .parse()
                            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                    ]),
                    ports: vec![http.clone()],
                    publish_not_ready: false,
                },
            );
            index.upsert_service(
                "default",
                "db",
                ServiceRecord {
                    kind: ServiceKind::Headless,
                    ports: vec![http.clone()],
                    publish_not_ready: false,
                },
            );
            index.upsert_slice(
                "default",
                "db-1",
                Some("db"),
                SliceRecord {
                    ports: vec![http],
                    endpoints: vec![EndpointRecord {
                        addresses: vec![std::net::Ipv4Addr::new(10, 0, 0, 1).into()],
                        hostname: Some("db-0".into()),
                        ready: true,
                    }],
                },
            );
            index.upsert_service(
                "default",
                "alias",
                ServiceRecord {
                    kind: ServiceKind::ExternalName("web.default.svc.cluster.local".into()),
                    ports: vec![],
                    publish_not_ready: false,
                },
            );
        }
        shared.mark_synced();
        let zone = match Zone::new("cluster.local", 30, PodsMode::Verified, None, vec![]) {
            Ok(zone) => zone,
            Err(e) => panic!("fixture zone: {e}"),
        };
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        };
        Fixture {
            runtime,
            handler: Handler::standalone(zone, shared),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let src = std::net::SocketAddr::from(([10, 0, 0, 2], 5353));
    for proto in [Protocol::Udp, Protocol::Tcp] {
        f.runtime
            .block_on(f.handler.answer_packet(data, src, proto));
    }
});
