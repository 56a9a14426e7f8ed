//! The embedded DNS server's logic: no I/O, messages parsed and built with hickory-proto.
//!
//! Contract:
//!
//! * [`Names::answer`] takes one DNS message (as received over UDP, or over TCP without
//!   its length prefix) and returns [`Answer::Reply`] with the response bytes,
//!   [`Answer::Forward`] when the question is for the upstream resolvers, or
//!   [`Answer::Ignore`] for anything that is not a well-formed standard query.
//! * Local names (from [`Names::set`]) are matched case-insensitively, with or without a
//!   trailing dot. A, AAAA and PTR (in-addr.arpa / ip6.arpa) are answered; several
//!   addresses come back rotated by one on every query (round-robin). A known name with no
//!   record of the asked type gets an empty NOERROR answer.
//! * NXDOMAIN for names that look like the network's but are unknown: single-label names,
//!   names under a configured suffix, and PTR names of addresses inside the network's
//!   subnets. Everything else is forwarded.
//! * Upstream answers are passed back unchanged except for the id ([`with_id`]); when no
//!   upstream answers, [`servfail`] builds the reply.

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
        for r in records {
            let name = normalize(&r.name);
            if name.is_empty() {
                continue;
            }
            for ip in r
                .ipv4s
                .iter()
                .map(|&a| IpAddr::V4(a))
                .chain(r.ipv6s.iter().map(|&a| IpAddr::V6(a)))
            {
                let names = self.by_addr.entry(ip).or_default();
                if !names.contains(&name) {
                    names.push(name.clone());
                }
            }
            let e = self.by_name.entry(name).or_default();
            for a in r.ipv4s {
                if !e.0.contains(&a) {
                    e.0.push(a);
                }
            }
            for a in r.ipv6s {
                if !e.1.contains(&a) {
                    e.1.push(a);
                }
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

#[cfg(test)]
#[path = "tests/dns.rs"]
mod tests;
