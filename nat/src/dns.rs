//! The embedded DNS server's logic: no I/O, messages parsed and built with hickory-proto.
//!
//! Contract:
//!
//! * [`Names::answer`] takes one DNS message (as received over UDP, or over TCP without
//!   its length prefix) and returns [`Answer::Reply`] with the response bytes,
//!   [`Answer::Forward`] when the question is for the upstream resolvers, or
//!   [`Answer::Ignore`] for anything that is not a well-formed standard query.
//! * Local names (from [`Names::set`], which replaces the table, or changed one record
//!   at a time with [`Names::add`] / [`Names::remove`]: the work of one endpoint, not of
//!   the network; a name several records share keeps the others' addresses, and the
//!   reverse (PTR) entries follow) are matched case-insensitively, with or without a
//!   trailing dot. A, AAAA and PTR (in-addr.arpa / ip6.arpa) are answered; several
//!   addresses come back rotated by one on every query (round-robin). A known name with no
//!   record of the asked type gets an empty NOERROR answer.
//! * NXDOMAIN for names that look like the network's but are unknown: single-label names,
//!   names under a configured suffix, and PTR names of addresses inside the network's
//!   subnets. Everything else is forwarded.
//! * Upstream answers are passed back unchanged except for the id ([`with_id`]); when no
//!   upstream answers, [`servfail`] builds the reply.
//! * [`Forwarder`] keeps the forwarded queries: which upstream server each is waiting for,
//!   until when, and which comes next. It opens no socket and reads no clock: time is
//!   passed in by the caller as milliseconds from an arbitrary origin (`now_ms`), and it
//!   answers with [`Forward`] steps (send this message to that server, or give up with a
//!   SERVFAIL) that the I/O layer carries out. Each server is tried once, in order, for
//!   `dns_timeout` (or until the I/O layer reports it unusable); then SERVFAIL.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::NameRecord;

/// TTL of local answers, in seconds (Docker's embedded DNS uses 600).
pub const LOCAL_TTL: u32 = 600;

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Send this response.
    Reply(Vec<u8>),
    /// Forward the query upstream.
    Forward,
    /// Not a query: drop it.
    Ignore,
}

/// The names of one network.
#[derive(Default)]
pub struct Names {
    by_name: FxHashMap<String, (Vec<Ipv4Addr>, Vec<Ipv6Addr>)>,
    by_addr: FxHashMap<IpAddr, Vec<String>>,
    suffixes: Vec<String>,
    subnets: Vec<IpNet>,
    rotation: usize,
}

/// The addresses of `r`, IPv4 then IPv6.
fn record_addrs(r: &NameRecord) -> impl Iterator<Item = IpAddr> + '_ {
    r.ipv4s
        .iter()
        .map(|&a| IpAddr::V4(a))
        .chain(r.ipv6s.iter().map(|&a| IpAddr::V6(a)))
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Names {
    /// An empty table; unknown names under `suffixes` or PTR names in `subnets` get
    /// NXDOMAIN.
    pub fn new(suffixes: &[String], subnets: Vec<IpNet>) -> Names {
        Names {
            suffixes: suffixes
                .iter()
                .map(|s| normalize(s.trim_start_matches('.')))
                .filter(|s| !s.is_empty())
                .collect(),
            subnets,
            ..Names::default()
        }
    }

    /// Replace every name.
    pub fn set(&mut self, records: Vec<NameRecord>) {
        self.by_name.clear();
        self.by_addr.clear();
        for r in &records {
            self.add(r);
        }
    }

    /// Add the addresses of `record` to its name (kept with the ones it has: several
    /// endpoints of one name answer round-robin), and the name to each address's
    /// reverse entry. Work: that of one record (and the addresses of its name).
    pub fn add(&mut self, record: &NameRecord) {
        let name = normalize(&record.name);
        if name.is_empty() {
            return;
        }
        for ip in record_addrs(record) {
            let names = self.by_addr.entry(ip).or_default();
            if !names.contains(&name) {
                names.push(name.clone());
            }
        }
        let e = self.by_name.entry(name).or_default();
        for &a in &record.ipv4s {
            if !e.0.contains(&a) {
                e.0.push(a);
            }
        }
        for &a in &record.ipv6s {
            if !e.1.contains(&a) {
                e.1.push(a);
            }
        }
    }

    /// Take the addresses of `record` from its name (the name goes with its last
    /// address; its other addresses stay), and the name from those addresses' reverse
    /// entries. Names or addresses not in the table are ignored.
    pub fn remove(&mut self, record: &NameRecord) {
        let name = normalize(&record.name);
        if name.is_empty() {
            return;
        }
        for ip in record_addrs(record) {
            if let Some(names) = self.by_addr.get_mut(&ip) {
                names.retain(|n| *n != name);
                if names.is_empty() {
                    self.by_addr.remove(&ip);
                }
            }
        }
        if let Some(e) = self.by_name.get_mut(&name) {
            e.0.retain(|a| !record.ipv4s.contains(a));
            e.1.retain(|a| !record.ipv6s.contains(a));
            if e.0.is_empty() && e.1.is_empty() {
                self.by_name.remove(&name);
            }
        }
    }

    fn looks_local(&self, name: &str) -> bool {
        !name.contains('.')
            || self
                .suffixes
                .iter()
                .any(|s| name == s || name.ends_with(&format!(".{s}")))
    }

    /// Answer one query.
    pub fn answer(&mut self, query: &[u8]) -> Answer {
        let Ok(msg) = Message::from_vec(query) else {
            return Answer::Ignore;
        };
        if msg.metadata.message_type != MessageType::Query {
            return Answer::Ignore;
        }
        if msg.metadata.op_code != OpCode::Query || msg.queries.len() != 1 {
            return Answer::Forward;
        }
        let Some(q) = msg.queries.first() else {
            return Answer::Ignore;
        };
        let qname = q.name().clone();
        let name = normalize(&qname.to_ascii());
        let qtype = q.query_type();
        let mut resp = Message::response(msg.metadata.id, OpCode::Query);
        resp.metadata.recursion_desired = msg.metadata.recursion_desired;
        resp.metadata.recursion_available = true;
        resp.metadata.authoritative = true;
        resp.add_query(q.clone());
        if qtype == RecordType::PTR {
            let Ok(net) = qname.parse_arpa_name() else {
                return Answer::Forward;
            };
            let full = matches!(net, IpNet::V4(n) if n.prefix_len() == 32)
                || matches!(net, IpNet::V6(n) if n.prefix_len() == 128);
            let ip = net.addr();
            match self.by_addr.get(&ip) {
                Some(names) if full => {
                    for n in names {
                        if let Ok(target) = Name::from_ascii(format!("{n}.")) {
                            resp.add_answer(Record::from_rdata(
                                qname.clone(),
                                LOCAL_TTL,
                                RData::PTR(PTR(target)),
                            ));
                        }
                    }
                }
                _ if full && self.subnets.iter().any(|s| s.contains(&ip)) => {
                    resp.metadata.response_code = ResponseCode::NXDomain;
                }
                _ => return Answer::Forward,
            }
            return encode(&resp);
        }
        let Some((v4, v6)) = self.by_name.get(&name) else {
            if self.looks_local(&name) {
                resp.metadata.response_code = ResponseCode::NXDomain;
                return encode(&resp);
            }
            return Answer::Forward;
        };
        let rot = self.rotation;
        self.rotation = self.rotation.wrapping_add(1);
        match qtype {
            RecordType::A => {
                for a in rotated(v4, rot) {
                    resp.add_answer(Record::from_rdata(qname.clone(), LOCAL_TTL, RData::A(A(a))));
                }
            }
            RecordType::AAAA => {
                for a in rotated(v6, rot) {
                    resp.add_answer(Record::from_rdata(
                        qname.clone(),
                        LOCAL_TTL,
                        RData::AAAA(AAAA(a)),
                    ));
                }
            }
            // Known name, no record of that type: NOERROR, no answer.
            _ => {}
        }
        encode(&resp)
    }
}

fn rotated<T: Copy>(v: &[T], by: usize) -> impl Iterator<Item = T> + '_ {
    let n = v.len().max(1);
    let k = by % n;
    v.iter().skip(k).chain(v.iter().take(k)).copied()
}

fn encode(m: &Message) -> Answer {
    match m.to_vec() {
        Ok(b) => Answer::Reply(b),
        Err(_) => Answer::Ignore,
    }
}

/// A SERVFAIL response to `query` (same id and question). `None` if it does not parse.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let mut resp = Message::error_msg(
        msg.metadata.id,
        msg.metadata.op_code,
        ResponseCode::ServFail,
    );
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.add_queries(msg.queries.iter().cloned());
    resp.to_vec().ok()
}

/// The id of a DNS message (its first two bytes), if long enough to be one.
pub fn id_of(msg: &[u8]) -> Option<u16> {
    msg.first_chunk::<2>().map(|b| u16::from_be_bytes(*b))
}

/// A copy of `msg` with its id replaced (the only change made to forwarded messages).
pub fn with_id(msg: &[u8], id: u16) -> Vec<u8> {
    let mut v = msg.to_vec();
    if let Some(b) = v.first_chunk_mut::<2>() {
        *b = id.to_be_bytes();
    }
    v
}

/// What the I/O layer does for a forwarded query.
#[derive(Debug, PartialEq, Eq)]
pub enum Forward<C> {
    /// Send `msg` to `server` for query `id`. Whatever was sent for `id` before is given
    /// up: an answer from an earlier server is no longer awaited.
    Send {
        /// The forwarded query.
        id: u64,
        /// The upstream server.
        server: SocketAddr,
        /// The query with its upstream id.
        msg: Vec<u8>,
    },
    /// No server answered: query `id` is over. Send `reply` (a SERVFAIL; `None` if the
    /// query does not parse) to `client`.
    Fail {
        /// The forwarded query.
        id: u64,
        /// Who asked.
        client: C,
        /// The SERVFAIL response.
        reply: Option<Vec<u8>>,
    },
}

/// A query waiting for an upstream answer.
struct Forwarded<C> {
    client: C,
    /// The client's query (its original id).
    query: Vec<u8>,
    upstream_id: u16,
    /// Index of the next server to try.
    next: usize,
    /// When the current server's time is up.
    deadline_ms: u64,
}

/// The forwarded queries of one network: retries and timeouts, no I/O, no clock.
pub struct Forwarder<C> {
    servers: Vec<SocketAddr>,
    timeout_ms: u64,
    queries: FxHashMap<u64, Forwarded<C>>,
    next_id: u64,
}

impl<C> Forwarder<C> {
    /// A forwarder to `servers`, tried in order, waiting `timeout` for each.
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Forwarder<C> {
        // Rounded up: a server is never given less than `timeout`.
        let timeout_ms = u64::try_from(timeout.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        Forwarder {
            servers,
            timeout_ms,
            queries: FxHashMap::default(),
            next_id: 0,
        }
    }

    /// Forward `query` from `client` at `now_ms`, under the id `upstream_id` upstream (the
    /// caller picks it at random). The first step: a send to the first server, or a
    /// SERVFAIL when there is none.
    pub fn start(
        &mut self,
        client: C,
        query: Vec<u8>,
        upstream_id: u16,
        now_ms: u64,
    ) -> Forward<C> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let Some(&server) = self.servers.first() else {
            return Forward::Fail {
                id,
                reply: servfail(&query),
                client,
            };
        };
        let msg = with_id(&query, upstream_id);
        self.queries.insert(
            id,
            Forwarded {
                client,
                query,
                upstream_id,
                next: 1,
                deadline_ms: now_ms.saturating_add(self.timeout_ms),
            },
        );
        Forward::Send { id, server, msg }
    }

    /// The current server of query `id` cannot be used (the send failed, or an ICMP
    /// error came back) or has had its time: move on to the next server at `now_ms`,
    /// or give up. `None` if `id` is not waiting.
    pub fn next_server(&mut self, id: u64, now_ms: u64) -> Option<Forward<C>> {
        let q = self.queries.get_mut(&id)?;
        if let Some(&server) = self.servers.get(q.next) {
            q.next += 1;
            q.deadline_ms = now_ms.saturating_add(self.timeout_ms);
            return Some(Forward::Send {
                id,
                server,
                msg: with_id(&q.query, q.upstream_id),
            });
        }
        let q = self.queries.remove(&id)?;
        Some(Forward::Fail {
            id,
            reply: servfail(&q.query),
            client: q.client,
        })
    }

    /// A message came back from the current server of query `id`. If it answers the
    /// query (same upstream id), the query is over: its client and the answer with the
    /// client's id. Otherwise `None`, and the query keeps waiting.
    pub fn answer(&mut self, id: u64, resp: &[u8]) -> Option<(C, Vec<u8>)> {
        let q = self.queries.get(&id)?;
        if id_of(resp) != Some(q.upstream_id) {
            return None;
        }
        let q = self.queries.remove(&id)?;
        let orig = id_of(&q.query).unwrap_or(0);
        Some((q.client, with_id(resp, orig)))
    }

    /// Every query whose server has had its time at `now_ms` moves on: the steps to
    /// carry out, in query order.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Forward<C>> {
        let mut due: Vec<u64> = self
            .queries
            .iter()
            .filter(|(_, q)| q.deadline_ms <= now_ms)
            .map(|(&id, _)| id)
            .collect();
        due.sort_unstable();
        due.into_iter()
            .filter_map(|id| self.next_server(id, now_ms))
            .collect()
    }

    /// The earliest deadline of a waiting query, if any (for the caller's poll timeout).
    pub fn next_deadline(&self) -> Option<u64> {
        self.queries.values().map(|q| q.deadline_ms).min()
    }

    /// Number of queries waiting for an upstream answer.
    pub fn waiting(&self) -> usize {
        self.queries.len()
    }
}

#[cfg(test)]
#[path = "tests/dns.rs"]
mod tests;
