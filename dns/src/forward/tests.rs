//! Tests against fake upstreams on 127.0.0.1 ephemeral ports.

// A failed unwrap in a test is the test failing, which is what it should do.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::upstream::check_response;
use super::*;

fn name(s: &str) -> Name {
    Name::from_str(s).unwrap()
}

fn query(s: &str) -> Query {
    Query::query(name(s), RecordType::A)
}

fn rd() -> QueryFlags {
    QueryFlags {
        recursion_desired: true,
        ..QueryFlags::default()
    }
}

fn settings(upstreams: Vec<SocketAddr>) -> ForwardSettings {
    ForwardSettings {
        upstreams,
        timeout: Duration::from_millis(400),
        ..ForwardSettings::default()
    }
}

/// The response skeleton for `req`: same id and question, RA set.
fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.metadata.response_code = rcode;
    resp.add_queries(req.queries.iter().cloned());
    resp
}

fn a_answer(req: &Message, ttl: u32, count: u8) -> Message {
    let mut resp = response_to(req, ResponseCode::NoError);
    for i in 0..count {
        resp.add_answer(Record::from_rdata(
            req.queries[0].name.clone(),
            ttl,
            RData::A(A(Ipv4Addr::new(192, 0, 2, i + 1))),
        ));
    }
    resp
}

fn soa_record(ttl: u32, minimum: u32) -> Record {
    Record::from_rdata(
        name("example."),
        ttl,
        RData::SOA(SOA::new(
            name("ns.example."),
            name("hostmaster.example."),
            1,
            3600,
            600,
            86400,
            minimum,
        )),
    )
}

type Handler = dyn Fn(&Message) -> Vec<Vec<u8>> + Send + Sync;

/// A fake UDP upstream: every parsed query goes to `handler`, whose datagrams
/// are sent back in order. Returns its address and the count of queries.
async fn udp_upstream(handler: Arc<Handler>) -> (SocketAddr, Arc<AtomicUsize>) {
    spawn_udp(UdpSocket::bind("127.0.0.1:0").await.unwrap(), handler)
}

fn spawn_udp(socket: UdpSocket, handler: Arc<Handler>) -> (SocketAddr, Arc<AtomicUsize>) {
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(req) = Message::from_vec(&buf[..len]) else {
                continue;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            for datagram in handler(&req) {
                let _ = socket.send_to(&datagram, peer).await;
            }
        }
    });
    (addr, count)
}

/// A fake TCP upstream on `listener` answering with `handler`.
async fn tcp_upstream(
    listener: TcpListener,
    handler: Arc<dyn Fn(&Message) -> Message + Send + Sync>,
) -> Arc<AtomicUsize> {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            seen.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await.unwrap();
                let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                stream.read_exact(&mut buf).await.unwrap();
                let req = Message::from_vec(&buf).unwrap();
                let resp = handler(&req).to_vec().unwrap();
                let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&resp);
                stream.write_all(&framed).await.unwrap();
            });
        }
    });
    count
}

fn answering(ttl: u32) -> Arc<Handler> {
    Arc::new(move |req| vec![a_answer(req, ttl, 1).to_vec().unwrap()])
}

#[tokio::test]
async fn second_identical_query_is_a_cache_hit_with_ttl_counting_down() {
    let (addr, count) = udp_upstream(answering(5)).await;
    let fwd = Forwarder::new(settings(vec![addr]));

    let first = fwd.forward(&query("www.example.com."), rd()).await.unwrap();
    assert_eq!(first.metadata.response_code, ResponseCode::NoError);
    assert_eq!(first.answers.len(), 1);
    assert_eq!(first.answers[0].ttl, 5);
    assert!(first.edns.is_none(), "OPT must be stripped");
    assert_eq!(count.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Different case, same key.
    let second = fwd.forward(&query("WWW.Example.COM."), rd()).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1, "served from the cache");
    assert_eq!(second.answers[0].ttl, 4, "TTL counted down by the age");
    assert_eq!(second.answers[0].data, first.answers[0].data);
    assert!(second.queries[0].name.eq_case(&name("WWW.Example.COM.")));

    // The DO bit is part of the key.
    let dnssec = QueryFlags {
        dnssec_ok: true,
        ..rd()
    };
    fwd.forward(&query("www.example.com."), dnssec)
        .await
        .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn ttl_is_capped_by_max_ttl_and_entries_expire() {
    let (addr, count) = udp_upstream(answering(3600)).await;
    let fwd = Forwarder::new(ForwardSettings {
        cache_max_ttl: Duration::from_secs(1),
        ..settings(vec![addr])
    });
    let first = fwd.forward(&query("capped.example."), rd()).await.unwrap();
    assert_eq!(first.answers[0].ttl, 1, "capped like CoreDNS's cache");
    fwd.forward(&query("capped.example."), rd()).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fwd.forward(&query("capped.example."), rd()).await.unwrap();
    assert_eq!(
        count.load(Ordering::SeqCst),
        2,
        "expired entry went upstream"
    );
}

#[tokio::test]
async fn lru_evicts_at_capacity_and_zero_disables() {
    let (addr, count) = udp_upstream(answering(300)).await;
    let fwd = Forwarder::new(ForwardSettings {
        cache_capacity: 1,
        ..settings(vec![addr])
    });
    fwd.forward(&query("one.example."), rd()).await.unwrap();
    fwd.forward(&query("two.example."), rd()).await.unwrap();
    fwd.forward(&query("one.example."), rd()).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3, "one. was evicted by two.");

    let (addr, count) = udp_upstream(answering(300)).await;
    let fwd = Forwarder::new(ForwardSettings {
        cache_capacity: 0,
        ..settings(vec![addr])
    });
    fwd.forward(&query("one.example."), rd()).await.unwrap();
    fwd.forward(&query("one.example."), rd()).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    // UDP and TCP on the same port, as a real resolver listens.
    let (udp, listener) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)).await {
            break (udp, listener);
        }
    };
    let truncated: Arc<Handler> = Arc::new(|req| {
        let mut resp = response_to(req, ResponseCode::NoError);
        resp.metadata.truncation = true;
        vec![resp.to_vec().unwrap()]
    });
    let (addr, udp_count) = spawn_udp(udp, truncated);
    let tcp_count = tcp_upstream(listener, Arc::new(|req| a_answer(req, 60, 3))).await;

    let fwd = Forwarder::new(settings(vec![addr]));
    let resp = fwd.forward(&query("big.example."), rd()).await.unwrap();
    assert!(!resp.metadata.truncation);
    assert_eq!(resp.answers.len(), 3);
    assert_eq!(udp_count.load(Ordering::SeqCst), 1);
    assert_eq!(tcp_count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn silent_upstream_times_out_and_fails_over() {
    let (silent, silent_count) = udp_upstream(Arc::new(|_| Vec::new())).await;
    let (good, good_count) = udp_upstream(answering(60)).await;
    let fwd = Forwarder::new(settings(vec![silent, good]));
    let started = std::time::Instant::now();
    let resp = fwd
        .forward(&query("failover.example."), rd())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(resp.answers.len(), 1);
    assert_eq!(silent_count.load(Ordering::SeqCst), 1);
    assert_eq!(good_count.load(Ordering::SeqCst), 1);

    // Only silent upstreams: the last error comes back.
    let fwd = Forwarder::new(settings(vec![silent]));
    let err = fwd
        .forward(&query("failover.example."), rd())
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::AllFailed { .. }), "{err}");
}

#[tokio::test]
async fn nxdomain_with_soa_is_negatively_cached() {
    let handler: Arc<Handler> = Arc::new(|req| {
        let mut resp = response_to(req, ResponseCode::NXDomain);
        if req.queries[0].name != name("nosoa.example.") {
            resp.add_authority(soa_record(60, 10));
        }
        vec![resp.to_vec().unwrap()]
    });
    let (addr, count) = udp_upstream(handler).await;
    let fwd = Forwarder::new(settings(vec![addr]));
    let mut registry = Registry::default();
    fwd.register_metrics(&mut registry);

    let first = fwd.forward(&query("missing.example."), rd()).await.unwrap();
    assert_eq!(first.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(first.authorities.len(), 1);
    assert_eq!(first.authorities[0].ttl, 10, "min(SOA TTL, minimum)");
    let second = fwd.forward(&query("missing.example."), rd()).await.unwrap();
    assert_eq!(second.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(count.load(Ordering::SeqCst), 1, "denial served from cache");

    // Without an SOA a denial is not cached.
    fwd.forward(&query("nosoa.example."), rd()).await.unwrap();
    fwd.forward(&query("nosoa.example."), rd()).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3);

    let text = metrics_text(&registry);
    assert!(
        text.contains(
            r#"coredns_cache_hits_total{server="dns://:53",type="denial",zones=".",view=""} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"coredns_cache_entries{server="dns://:53",type="denial",zones=".",view=""} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn nodata_is_capped_by_max_denial_ttl() {
    let handler: Arc<Handler> = Arc::new(|req| {
        let mut resp = response_to(req, ResponseCode::NoError);
        resp.add_authority(soa_record(3600, 3600));
        vec![resp.to_vec().unwrap()]
    });
    let (addr, count) = udp_upstream(handler).await;
    let fwd = Forwarder::new(settings(vec![addr]));
    let resp = fwd.forward(&query("nodata.example."), rd()).await.unwrap();
    assert!(resp.answers.is_empty());
    assert_eq!(resp.authorities[0].ttl, 30);
    fwd.forward(&query("nodata.example."), rd()).await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_id_and_garbage_are_ignored_until_the_right_answer() {
    let handler: Arc<Handler> = Arc::new(|req| {
        let mut wrong = a_answer(req, 60, 1);
        wrong.metadata.id = req.metadata.id.wrapping_add(1);
        wrong.answers[0].data = RData::A(A(Ipv4Addr::new(203, 0, 113, 66)));
        let mut other_question = a_answer(req, 60, 1);
        other_question.queries[0].name = name("evil.example.");
        vec![
            wrong.to_vec().unwrap(),
            b"\xde\xad\xbe\xef garbage".to_vec(),
            other_question.to_vec().unwrap(),
            a_answer(req, 60, 1).to_vec().unwrap(),
        ]
    });
    let (addr, _) = udp_upstream(handler).await;
    let fwd = Forwarder::new(settings(vec![addr]));
    let resp = fwd.forward(&query("right.example."), rd()).await.unwrap();
    assert_eq!(resp.answers.len(), 1);
    assert_eq!(
        resp.answers[0].data,
        RData::A(A(Ipv4Addr::new(192, 0, 2, 1)))
    );
}

#[tokio::test]
async fn garbage_only_upstream_fails_over() {
    let garbage: Arc<Handler> = Arc::new(|req| {
        let mut bytes = a_answer(req, 60, 1).to_vec().unwrap();
        bytes.truncate(bytes.len() - 3);
        vec![vec![0xff; 40], bytes, Vec::new()]
    });
    let (bad, _) = udp_upstream(garbage).await;
    let (good, good_count) = udp_upstream(answering(60)).await;
    let fwd = Forwarder::new(settings(vec![bad, good]));
    let resp = fwd.forward(&query("garbage.example."), rd()).await.unwrap();
    assert_eq!(resp.answers.len(), 1);
    assert_eq!(good_count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn servfail_fails_over_and_all_servfail_returns_the_answer_uncached() {
    let servfail: Arc<Handler> =
        Arc::new(|req| vec![response_to(req, ResponseCode::ServFail).to_vec().unwrap()]);
    let (bad, bad_count) = udp_upstream(servfail.clone()).await;
    let (good, _) = udp_upstream(answering(60)).await;
    let fwd = Forwarder::new(settings(vec![bad, good]));
    let resp = fwd.forward(&query("sf.example."), rd()).await.unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(bad_count.load(Ordering::SeqCst), 1);

    let (bad2, bad2_count) = udp_upstream(servfail).await;
    let fwd = Forwarder::new(settings(vec![bad, bad2]));
    let resp = fwd.forward(&query("sf2.example."), rd()).await.unwrap();
    assert_eq!(resp.metadata.response_code, ResponseCode::ServFail);
    fwd.forward(&query("sf2.example."), rd()).await.unwrap();
    assert_eq!(
        bad2_count.load(Ordering::SeqCst),
        2,
        "SERVFAIL is never cached"
    );
}

#[test]
fn forwarder_and_its_future_can_be_shared_across_tasks() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send<T: Send>(_: &T) {}
    let fwd = Forwarder::new(settings(Vec::new()));
    send_sync(&fwd);
    let q = query("x.example.");
    send(&fwd.forward(&q, rd()));
    send(&Arc::new(Forwarder::new(settings(Vec::new()))).probe_for_loops());
}

#[tokio::test]
async fn no_upstreams_is_an_error() {
    let fwd = Forwarder::new(settings(Vec::new()));
    let err = fwd.forward(&query("x.example."), rd()).await.unwrap_err();
    assert!(matches!(err, ForwardError::NoUpstreams));
}

#[tokio::test]
async fn upstream_that_forwards_back_to_us_is_detected_as_a_loop() {
    // The "server": answers SERVFAIL to probes (as the real server does) and
    // otherwise NXDOMAIN; it needs the forwarder, which needs the upstream's
    // address, so the forwarder is handed over once built.
    let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let fwd = Arc::new(Forwarder::new(settings(vec![upstream_addr])));

    let server_fwd = fwd.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, peer) = server.recv_from(&mut buf).await.unwrap();
            let req = Message::from_vec(&buf[..len]).unwrap();
            let name = LowerName::new(&req.queries[0].name);
            let rcode = if server_fwd.is_probe(&name) {
                ResponseCode::ServFail
            } else {
                ResponseCode::NXDomain
            };
            let resp = response_to(&req, rcode).to_vec().unwrap();
            server.send_to(&resp, peer).await.unwrap();
        }
    });
    // The misconfigured upstream: relays every query to the server and the
    // server's answer back.
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        loop {
            let (len, client) = upstream.recv_from(&mut buf).await.unwrap();
            let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            relay.send_to(&buf[..len], server_addr).await.unwrap();
            let mut answer = vec![0u8; 65535];
            let len = relay.recv(&mut answer).await.unwrap();
            upstream.send_to(&answer[..len], client).await.unwrap();
        }
    });

    assert!(!fwd.looped());
    let mut registry = Registry::default();
    fwd.register_metrics(&mut registry);
    fwd.clone().probe_for_loops().await;
    assert!(fwd.looped());
    assert!(metrics_text(&registry).contains("ferry_dns_forward_loop_detected 1"));

    let started = std::time::Instant::now();
    let err = fwd
        .forward(&query("anything.example."), rd())
        .await
        .unwrap_err();
    assert!(matches!(err, ForwardError::Looped), "{err}");
    assert!(started.elapsed() < Duration::from_millis(50), "fails fast");

    assert!(!fwd.is_probe(&LowerName::new(&name("anything.example."))));
}

#[tokio::test]
async fn healthy_upstream_is_not_a_loop() {
    let handler: Arc<Handler> =
        Arc::new(|req| vec![response_to(req, ResponseCode::NXDomain).to_vec().unwrap()]);
    let (addr, count) = udp_upstream(handler).await;
    let fwd = Arc::new(Forwarder::new(settings(vec![addr])));
    fwd.clone().probe_for_loops().await;
    assert!(!fwd.looped());
    assert_eq!(count.load(Ordering::SeqCst), PROBE_ROUNDS as usize);
    fwd.forward(&query("fine.example."), rd()).await.unwrap();
}

fn metrics_text(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).unwrap();
    text
}

#[tokio::test]
async fn metrics_use_coredns_names_and_labels() {
    let (addr, _) = udp_upstream(answering(60)).await;
    let fwd = Forwarder::new(settings(vec![addr]));
    let mut registry = Registry::default();
    fwd.register_metrics(&mut registry);
    fwd.forward(&query("m.example."), rd()).await.unwrap();
    fwd.forward(&query("m.example."), rd()).await.unwrap();

    let text = metrics_text(&registry);
    let to = addr.to_string();
    for line in [
        r#"coredns_cache_hits_total{server="dns://:53",type="success",zones=".",view=""} 1"#
            .to_owned(),
        r#"coredns_cache_hits_total{server="dns://:53",type="denial",zones=".",view=""} 0"#
            .to_owned(),
        r#"coredns_cache_misses_total{server="dns://:53",zones=".",view=""} 1"#.to_owned(),
        r#"coredns_cache_requests_total{server="dns://:53",zones=".",view=""} 2"#.to_owned(),
        r#"coredns_cache_entries{server="dns://:53",type="success",zones=".",view=""} 1"#
            .to_owned(),
        r#"coredns_cache_entries{server="dns://:53",type="denial",zones=".",view=""} 0"#.to_owned(),
        format!(
            r#"coredns_proxy_request_duration_seconds_count{{proxy_name="forward",to="{to}",rcode="NOERROR"}} 1"#
        ),
        format!(
            r#"coredns_proxy_request_duration_seconds_bucket{{le="0.00025",proxy_name="forward",to="{to}",rcode="NOERROR"}}"#
        ),
        format!(
            r#"coredns_proxy_conn_cache_misses_total{{proxy_name="forward",to="{to}",proto="udp"}} 1"#
        ),
        format!(r#"coredns_forward_requests_total{{to="{to}"}} 1"#),
        format!(r#"coredns_forward_responses_total{{to="{to}",rcode="NOERROR"}} 1"#),
        "# TYPE coredns_proxy_request_duration_seconds histogram".to_owned(),
        "ferry_dns_forward_loop_detected 0".to_owned(),
    ] {
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    assert!(!text.contains("_total_total"), "{text}");
    assert!(!text.contains(".."), "help texts end in one period: {text}");
}

#[test]
fn hostile_bytes_never_panic_the_parser() {
    use rand::Rng;
    let q = query("fuzz.example.");
    let mut req = Message::new(7, MessageType::Query, OpCode::Query);
    req.add_query(q.clone());
    let mut valid = a_answer(&req, 60, 2);
    valid.add_authority(soa_record(60, 10));
    let valid = valid.to_vec().unwrap();
    assert!(check_response(&valid, 7, &q).is_ok());

    let mut rng = rand::rng();
    for _ in 0..20_000 {
        let mut bytes = valid.clone();
        match rng.random_range(0..3) {
            0 => {
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] = rng.random();
                }
            }
            1 => bytes.truncate(rng.random_range(0..bytes.len())),
            _ => {
                let len = rng.random_range(0..600);
                bytes = (0..len).map(|_| rng.random()).collect();
            }
        }
        let _ = check_response(&bytes, 7, &q);
    }
}

#[test]
fn rcode_labels_match_coredns() {
    use super::metrics::rcode_label;
    assert_eq!(rcode_label(ResponseCode::NoError), "NOERROR");
    assert_eq!(rcode_label(ResponseCode::NXDomain), "NXDOMAIN");
    assert_eq!(rcode_label(ResponseCode::ServFail), "SERVFAIL");
    assert_eq!(rcode_label(ResponseCode::Refused), "REFUSED");
    assert_eq!(rcode_label(ResponseCode::Unknown(3000)), "3000");
}
