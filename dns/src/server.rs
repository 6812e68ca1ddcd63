//! The hickory-server request handler: checks a request, answers the cluster
//! zone from the index, forwards everything else, and writes the response
//! with EDNS0 and UDP truncation, counting it in CoreDNS's metrics.
//!
//! hickory-server parses the packet (a message it cannot parse past the
//! header gets FORMERR; one shorter than a header is dropped), so this only
//! sees well-formed messages, but it still trusts nothing in them.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hickory_proto::op::{Edns, Header, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecoder, BinEncoder};
use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tracing::debug;

use crate::answer::{Answer, Outcome, Zone};
use crate::forward::{ForwardError, Forwarder, QueryFlags};
use crate::metrics::{DnsMetrics, Plugin};
use crate::watch::Shared;

/// The UDP payload size this server offers (the DNS flag day's 1232, which
/// avoids IP fragmentation); a client asking for more still gets at most
/// this over UDP, and the full answer over TCP.
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// Answers every request ferry-dns receives.
#[derive(Clone)]
pub struct Handler {
    pub zone: Zone,
    pub shared: Arc<Shared>,
    pub forwarder: Arc<Forwarder>,
    pub metrics: Arc<DnsMetrics>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Handler")
    }
}

/// What a request is answered with, before encoding.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additionals: Vec<Record>,
    /// The metric's `plugin` label: who answered.
    plugin: Plugin,
}

impl Reply {
    fn error(rcode: ResponseCode) -> Self {
        Self {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            authority: Vec::new(),
            additionals: Vec::new(),
            plugin: Plugin::Server,
        }
    }

    fn zone(answer: Answer) -> Self {
        Self {
            rcode: answer.rcode,
            authoritative: true,
            answers: answer.answers,
            authority: answer.authority,
            additionals: answer.additionals,
            plugin: Plugin::Kubernetes,
        }
    }
}

/// The index of `t` in [`TYPE_LABELS`](crate::metrics::TYPE_LABELS).
fn type_index(t: RecordType) -> usize {
    match t {
        RecordType::A => 0,
        RecordType::AAAA => 1,
        RecordType::CNAME => 2,
        RecordType::DNSKEY => 3,
        RecordType::DS => 4,
        RecordType::MX => 5,
        RecordType::NSEC3 => 6,
        RecordType::NSEC => 7,
        RecordType::NS => 8,
        RecordType::PTR => 9,
        RecordType::RRSIG => 10,
        RecordType::SOA => 11,
        RecordType::SRV => 12,
        RecordType::TXT => 13,
        RecordType::IXFR => 14,
        RecordType::AXFR => 15,
        RecordType::ANY => 16,
        _ => 17,
    }
}

/// The index of `r` in [`RCODE_LABELS`](crate::metrics::RCODE_LABELS).
fn rcode_index(r: ResponseCode) -> usize {
    match r {
        ResponseCode::NoError => 0,
        ResponseCode::FormErr => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::NXDomain => 3,
        ResponseCode::NotImp => 4,
        ResponseCode::Refused => 5,
        ResponseCode::BADVERS => 6,
        _ => 7,
    }
}

impl Handler {
    /// Decides the reply for a parsed request.
    async fn reply(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            return Reply::error(ResponseCode::BADVERS);
        }
        let [query] = request.queries.queries() else {
            return Reply::error(ResponseCode::FormErr);
        };
        let query = query.original();
        let qtype = query.query_type;
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Reply::error(ResponseCode::Refused);
        }
        if query.query_class != DNSClass::IN {
            return Reply::error(ResponseCode::Refused);
        }
        let outcome = {
            let index = self.shared.index.read().unwrap_or_else(|p| p.into_inner());
            self.zone
                .answer(&index, self.shared.synced(), &query.name, qtype)
        };
        let flags = QueryFlags {
            recursion_desired: request.metadata.recursion_desired,
            checking_disabled: request.metadata.checking_disabled,
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        };
        match outcome {
            Outcome::Zone(mut answer) => {
                if let Some(target) = answer.chase.take() {
                    // The CNAME stays whatever the target's fate upstream.
                    let chased = Query::query(target, qtype);
                    if let Ok(message) = self.forwarder.forward(&chased, flags).await {
                        answer.answers.extend(message.answers);
                    }
                }
                Reply::zone(answer)
            }
            Outcome::Forward => self.forward(query, flags).await,
        }
    }

    async fn forward(&self, query: &Query, flags: QueryFlags) -> Reply {
        let lower = hickory_proto::rr::LowerName::new(&query.name);
        if self.forwarder.is_probe(&lower) {
            // Our own loop probe came back: never send it round again.
            return Reply::error(ResponseCode::ServFail);
        }
        match self.forwarder.forward(query, flags).await {
            Ok(message) => Reply {
                rcode: message.metadata.response_code,
                authoritative: message.metadata.authoritative,
                answers: message.answers,
                authority: message.authorities,
                additionals: message.additionals,
                plugin: Plugin::Forward,
            },
            Err(ForwardError::NoUpstreams) => Reply::error(ResponseCode::Refused),
            // CoreDNS's `max_concurrent`: refused at once, not queued.
            Err(ForwardError::Overloaded(_)) => Reply {
                plugin: Plugin::Forward,
                ..Reply::error(ResponseCode::Refused)
            },
            Err(error) => {
                debug!(name = %query.name, %error, "forwarding failed");
                Reply {
                    plugin: Plugin::Forward,
                    ..Reply::error(ResponseCode::ServFail)
                }
            }
        }
    }

    fn count_request(&self, request: &Request) {
        let qtype = request
            .queries
            .queries()
            .first()
            .map_or(RecordType::Unknown(0), |q| q.query_type());
        self.metrics.request(
            request.protocol() != Protocol::Udp,
            request.src().is_ipv6(),
            type_index(qtype),
            request.as_slice().len(),
            request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        );
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        self.count_request(request);
        let reply = self.reply(request).await;

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        metadata.recursion_available = true;
        // Offer our payload size, and cap UDP answers at what both sides take.
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns
        });
        // A request with several questions is FORMERR, sent without them:
        // echoed, they could overflow a UDP answer, which would then carry
        // neither them nor the rcode.
        let no_queries;
        let queries = if request.queries.len() == 1 {
            &request.queries
        } else {
            no_queries = Queries::read(&mut BinDecoder::new(&[]), 0);
            no_queries.as_ref().unwrap_or(&request.queries)
        };
        let mut builder = MessageResponseBuilder::new(queries, None);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let response = builder.build(
            metadata,
            reply.answers.iter(),
            reply.authority.iter(),
            std::iter::empty(),
            reply.additionals.iter(),
        );
        let info = match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                // The client's trouble, and one line per query if logged
                // higher: counted as SERVFAIL below.
                debug!(src = %request.src(), %error, "sending a response");
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: Default::default(),
                })
            }
        };
        self.metrics.response(
            rcode_index(info.response_code),
            reply.plugin,
            started.elapsed().as_secs_f64(),
        );
        info
    }
}

/// A response handler that keeps the encoded response instead of sending
/// it: the query path without sockets, for tests and the fuzz target.
#[derive(Clone, Debug)]
pub struct Capture {
    protocol: Protocol,
    bytes: Arc<Mutex<Option<Vec<u8>>>>,
}

impl Capture {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            bytes: Arc::default(),
        }
    }

    /// The response written, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.bytes.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // The same size rule hickory's own handle applies.
        let max = match (self.protocol, response.edns()) {
            (Protocol::Udp, Some(edns)) => edns.max_payload(),
            (Protocol::Udp, None) => 512,
            _ => u16::MAX,
        };
        let mut buf = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(max);
        let info = response.destructive_emit(&mut encoder)?;
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = Some(buf);
        Ok(info)
    }
}

impl Handler {
    /// Runs one raw packet through hickory's parsing and this handler, as
    /// the server would, returning the response bytes (`None` when the
    /// server would drop the packet).
    pub async fn answer_packet(
        &self,
        packet: &[u8],
        src: SocketAddr,
        protocol: Protocol,
    ) -> Option<Vec<u8>> {
        let request = match Request::from_bytes(packet.to_vec(), src, protocol) {
            Ok(request) => request,
            Err(_) => return malformed(packet),
        };
        if request.metadata.message_type == MessageType::Response {
            return None;
        }
        let capture = Capture::new(protocol);
        self.handle_request::<_, hickory_server::net::runtime::TokioTime>(
            &request,
            capture.clone(),
        )
        .await;
        capture.take()
    }
}

/// FORMERR for a packet whose header parses but the rest does not (what
/// hickory-server answers); nothing for one shorter than a header.
fn malformed(packet: &[u8]) -> Option<Vec<u8>> {
    use hickory_proto::serialize::binary::{BinDecodable, BinEncodable};
    let header = Header::read(&mut BinDecoder::new(packet)).ok()?;
    if header.metadata.message_type == MessageType::Response {
        return None;
    }
    let mut metadata = Metadata::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    metadata.response_code = ResponseCode::FormErr;
    let out = Header {
        metadata,
        counts: Default::default(),
    };
    out.to_bytes().ok()
}

impl Handler {
    /// A handler over `shared` with no upstreams and metrics of its own:
    /// the query path alone, for tests and the fuzz target.
    pub fn standalone(zone: Zone, shared: Arc<Shared>) -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let forwarder = Arc::new(Forwarder::new(crate::forward::ForwardSettings {
            upstreams: Vec::new(),
            ..Default::default()
        }));
        Self {
            zone,
            shared,
            forwarder,
            metrics: Arc::new(DnsMetrics::register(&mut registry, "dns://:53".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PodsMode;
    use crate::index::{ServiceKind, ServiceRecord};
    use hickory_proto::op::Message;
    use hickory_proto::rr::Name;

    fn handler() -> Handler {
        let shared = Arc::new(Shared::new(false));
        {
            let mut index = shared.index.write().expect("lock");
            index.upsert_namespace("default");
            index.upsert_service(
                "default",
                "web",
                ServiceRecord {
                    kind: ServiceKind::ClusterIp(vec!["10.96.0.10".parse().expect("ip")]),
                    ports: vec![],
                    publish_not_ready: false,
                },
            );
        }
        shared.mark_synced();
        let zone = Zone::new("cluster.local", 30, PodsMode::Insecure, None, vec![]).expect("zone");
        Handler::standalone(zone, shared)
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut msg = Message::query();
        msg.metadata.id = 7;
        msg.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        msg.to_vec().expect("encode")
    }

    const SRC: &str = "10.0.0.1:5353";

    #[tokio::test]
    async fn answers_and_refusals() {
        let h = handler();
        let src = SRC.parse().expect("addr");
        let bytes = h
            .answer_packet(
                &query("web.default.svc.cluster.local.", RecordType::A),
                src,
                Protocol::Udp,
            )
            .await
            .expect("reply");
        let reply = Message::from_vec(&bytes).expect("parse");
        assert_eq!(reply.metadata.id, 7);
        assert!(reply.metadata.authoritative);
        assert_eq!(reply.answers.len(), 1);
        // No upstreams: outside names are refused, not forwarded.
        let bytes = h
            .answer_packet(&query("example.com.", RecordType::A), src, Protocol::Udp)
            .await
            .expect("reply");
        let reply = Message::from_vec(&bytes).expect("parse");
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        let bytes = h
            .answer_packet(
                &query("cluster.local.", RecordType::IXFR),
                src,
                Protocol::Tcp,
            )
            .await
            .expect("reply");
        let reply = Message::from_vec(&bytes).expect("parse");
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        // A header and junk: FORMERR; too short: nothing.
        let mut junk = query("web.default.svc.cluster.local.", RecordType::A);
        junk.truncate(20);
        let bytes = h
            .answer_packet(&junk, src, Protocol::Udp)
            .await
            .expect("reply");
        assert_eq!(bytes[3] & 0x0f, 1, "FORMERR");
        assert!(
            h.answer_packet(&[0, 1, 2], src, Protocol::Udp)
                .await
                .is_none()
        );
    }

    /// Mutations of real queries through parsing and the handler: every
    /// one gets a well-formed reply or none, and nothing panics (the fuzz
    /// target runs the same path unbounded).
    #[tokio::test]
    async fn several_questions_are_formerr_over_udp_and_tcp() {
        let h = handler();
        let src = SRC.parse().expect("addr");
        // Two short questions, and forty long ones whose echo alone would
        // overflow a 512-byte UDP answer.
        let long = format!("{}.example.com.", "a".repeat(60));
        for count in [2, 40] {
            let mut msg = Message::query();
            msg.metadata.id = 9;
            for i in 0..count {
                let name = if i == 0 {
                    "web.default.svc.cluster.local."
                } else {
                    &long
                };
                msg.add_query(Query::query(
                    Name::from_ascii(name).expect("name"),
                    RecordType::A,
                ));
            }
            let bytes = msg.to_vec().expect("encode");
            for proto in [Protocol::Udp, Protocol::Tcp] {
                let reply = h.answer_packet(&bytes, src, proto).await.expect("reply");
                let reply = Message::from_vec(&reply).expect("parse");
                assert_eq!(reply.metadata.id, 9);
                assert_eq!(
                    reply.metadata.response_code,
                    ResponseCode::FormErr,
                    "{count} questions over {proto:?}"
                );
                assert!(reply.answers.is_empty());
            }
        }
    }

    #[tokio::test]
    async fn mutated_queries_never_panic() {
        let h = handler();
        let src = SRC.parse().expect("addr");
        let seeds = [
            query("web.default.svc.cluster.local.", RecordType::A),
            query("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
            query("10.0.96.10.in-addr.arpa.", RecordType::PTR),
            query("10-0-0-1.default.pod.cluster.local.", RecordType::AAAA),
        ];
        let mut state = 0x2545_f491_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for i in 0..20_000 {
            let mut pkt = seeds[i % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % pkt.len();
                match next() % 3 {
                    0 => pkt[at] = next() as u8,
                    1 => pkt.truncate(at.max(1)),
                    _ => pkt.insert(at, next() as u8),
                }
            }
            let proto = if i % 2 == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            if let Some(reply) = h.answer_packet(&pkt, src, proto).await {
                assert!(reply.len() >= 12);
                assert_eq!(reply[..2], pkt[..2], "the reply carries the query's id");
            }
        }
    }
}
