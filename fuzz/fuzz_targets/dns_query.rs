//! `dns_query`: DNS messages into the gateway's embedded DNS (`tapnet_nat::dns`): the
//! queries sandboxes send (`Names::answer`, `servfail`) and the answers upstream servers
//! send back (`Forwarder::answer`), with the forwarder's timeouts.
//!
//! Input: records: tag & 3 = 0: a query (answered; when forwarded, it is started on the
//! forwarder); 1: an upstream answer for the oldest forwarded query; 2: time passes
//! (body[0] × 100 ms) and the forwarder expires what is due; 3: a record is added to
//! (tag bit 2 clear) or removed from the name table: name = the body, addresses from
//! its length.
//!
//! Asserted (besides "no panic"): a reply parses, is a response with the query's id and
//! its question, answers only the asked name with only addresses the table holds for
//! it; SERVFAILs parse and keep the id; the forwarder sends the query unchanged but for
//! the upstream id, hands back an upstream answer unchanged but for the client's id,
//! and never keeps more queries than were started.
#![no_main]

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::{RData, RecordType};
use libfuzzer_sys::fuzz_target;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tapnet_fuzz::Input;
use tapnet_nat::dns::{self, Answer, Forward, Forwarder, Names};
use tapnet_nat::NameRecord;

fn records() -> Vec<NameRecord> {
    vec![
        NameRecord {
            name: "web".into(),
            ipv4s: vec![Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)],
            ipv6s: vec!["fd00::10".parse().expect("ip")],
        },
        NameRecord {
            name: "db.".into(),
            ipv4s: vec![Ipv4Addr::new(10, 0, 0, 12)],
            ipv6s: vec![],
        },
        NameRecord {
            name: "Cache".into(),
            ipv4s: vec![],
            ipv6s: vec!["fd00::13".parse().expect("ip")],
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mut names = Names::new(
        &["tapnet.internal".to_string()],
        vec![
            "10.0.0.0/24".parse().expect("net"),
            "fd00::/64".parse().expect("net"),
        ],
    );
    let mut table = records();
    names.set(table.clone());
    let servers: Vec<SocketAddr> = vec![
        "192.0.2.53:53".parse().expect("addr"),
        "[2001:db8::53]:53".parse().expect("addr"),
    ];
    let mut fwd: Forwarder<u32> = Forwarder::new(servers.clone(), Duration::from_millis(500));
    // Forwarded queries: (id, upstream id, client id, the query).
    let mut waiting: VecDeque<(u64, u16, Vec<u8>)> = VecDeque::new();
    let mut now: u64 = 0;
    let mut started = 0usize;
    while let Some((tag, body)) = input.record() {
        match tag & 3 {
            0 => {
                let forward = query(&mut names, &table, body);
                if let Some(sf) = dns::servfail(body) {
                    let m = Message::from_vec(&sf).expect("SERVFAIL parses");
                    assert_eq!(Some(m.metadata.id), dns::id_of(body));
                }
                if !forward {
                    continue;
                }
                // Forwarded, as the gateway runtime does when `answer` says so.
                let upstream_id = u16::from(tag).wrapping_mul(257);
                match fwd.start(started as u32, body.to_vec(), upstream_id, now) {
                    Forward::Send { id, server, msg } => {
                        assert_eq!(server, servers[0]);
                        assert_eq!(msg, dns::with_id(body, upstream_id));
                        waiting.push_back((id, upstream_id, body.to_vec()));
                    }
                    Forward::Fail { .. } => panic!("first step with servers is a send"),
                }
                started += 1;
            }
            1 => {
                let Some(&(id, upstream_id, ref q)) = waiting.front() else {
                    continue;
                };
                let q = q.clone();
                match fwd.answer(id, body) {
                    Some((_client, resp)) => {
                        assert_eq!(dns::id_of(body), Some(upstream_id));
                        assert_eq!(resp.len(), body.len());
                        assert_eq!(resp.get(2..), body.get(2..));
                        assert_eq!(dns::id_of(&resp), dns::id_of(&q));
                        waiting.pop_front();
                    }
                    None => {
                        // `waiting` mirrors the forwarder exactly (sends keep a query,
                        // fails end it): an answer with its upstream id must be taken.
                        assert_ne!(dns::id_of(body), Some(upstream_id), "answer refused");
                    }
                }
            }
            2 => {
                now += u64::from(body.first().copied().unwrap_or(0)) * 100;
                for step in fwd.expire(now) {
                    match step {
                        Forward::Send { id, server, msg } => {
                            assert_eq!(server, servers[1]);
                            let q = waiting.iter().find(|w| w.0 == id).expect("known query");
                            assert_eq!(msg, dns::with_id(&q.2, q.1));
                        }
                        Forward::Fail { id, reply, .. } => {
                            waiting.retain(|w| w.0 != id);
                            if let Some(r) = reply {
                                Message::from_vec(&r).expect("SERVFAIL parses");
                            }
                        }
                    }
                }
            }
            _ => {
                let name = String::from_utf8_lossy(body).into_owned();
                let n = body.len() as u8;
                let r = NameRecord {
                    name,
                    ipv4s: vec![Ipv4Addr::new(10, 0, 0, n)],
                    ipv6s: vec![Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n))],
                };
                if tag & 4 == 0 {
                    names.add(&r);
                    table.push(r);
                } else {
                    names.remove(&r);
                    // Keep the model simple: a removal may leave others' addresses;
                    // the table model only shrinks by the exact record.
                    table.retain(|t| t != &r);
                }
            }
        }
        assert!(fwd.waiting() <= started);
        assert_eq!(fwd.waiting(), waiting.len());
    }
});

/// Answer `q` and check the reply against the name table; true if it is forwarded.
fn query(names: &mut Names, table: &[NameRecord], q: &[u8]) -> bool {
    let r = match names.answer(q) {
        Answer::Reply(r) => r,
        Answer::Forward => {
            Message::from_vec(q).expect("a forwarded query parses");
            return true;
        }
        Answer::Ignore => return false,
    };
    let asked = Message::from_vec(q).expect("a query that got a reply parses");
    let m = Message::from_vec(&r).expect("reply parses");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(m.metadata.id, asked.metadata.id);
    assert_eq!(m.queries, asked.queries, "reply's question");
    let Some(question) = asked.queries.first() else {
        panic!("a reply to a query without a question");
    };
    let qname = question
        .name()
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    for rec in &m.answers {
        assert_eq!(rec.name, *question.name(), "answer for another name");
        let known = |ip: IpAddr| {
            table.iter().any(|t| {
                t.name.trim_end_matches('.').eq_ignore_ascii_case(&qname)
                    && (t.ipv4s.iter().any(|&a| IpAddr::V4(a) == ip)
                        || t.ipv6s.iter().any(|&a| IpAddr::V6(a) == ip))
            })
        };
        match &rec.data {
            RData::A(a) => {
                assert_eq!(question.query_type(), RecordType::A);
                assert!(known(IpAddr::V4(a.0)), "A {} not in the table", a.0);
            }
            RData::AAAA(a) => {
                assert_eq!(question.query_type(), RecordType::AAAA);
                assert!(known(IpAddr::V6(a.0)), "AAAA {} not in the table", a.0);
            }
            RData::PTR(_) => assert_eq!(question.query_type(), RecordType::PTR),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    false
}
