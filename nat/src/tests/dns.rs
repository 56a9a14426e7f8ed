//! Unit tests for [`crate::dns`].

use super::*;
use hickory_proto::op::Query;

fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), t));
    m.to_vec().expect("encode")
}

fn reply(a: Answer) -> Message {
    match a {
        Answer::Reply(b) => Message::from_vec(&b).expect("decode"),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn names() -> Names {
    let mut n = Names::new(
        &["tapnet.internal".to_string()],
        vec![
            "172.17.0.0/16".parse().expect("net"),
            "fd00::/64".parse().expect("net"),
        ],
    );
    n.set(vec![
        NameRecord {
            name: "web".into(),
            ipv4s: vec![Ipv4Addr::new(172, 17, 0, 2)],
            ipv6s: vec!["fd00::2".parse().expect("v6")],
        },
        NameRecord {
            name: "Pool.".into(),
            ipv4s: vec![
                Ipv4Addr::new(172, 17, 0, 3),
                Ipv4Addr::new(172, 17, 0, 4),
                Ipv4Addr::new(172, 17, 0, 5),
            ],
            ipv6s: vec![],
        },
    ]);
    n
}

fn a_answers(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(A(a)) => Some(a),
            _ => None,
        })
        .collect()
}

#[test]
fn a_and_aaaa_for_local_names_case_insensitive() {
    let mut n = names();
    let m = reply(n.answer(&query("WEB.", RecordType::A, 7)));
    assert_eq!(m.metadata.id, 7);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.metadata.message_type, MessageType::Response);
    assert_eq!(a_answers(&m), vec![Ipv4Addr::new(172, 17, 0, 2)]);
    let m = reply(n.answer(&query("web", RecordType::AAAA, 8)));
    let v6: Vec<_> = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::AAAA(AAAA(a)) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(v6, vec!["fd00::2".parse::<Ipv6Addr>().expect("v6")]);
    // Known name, no AAAA: NOERROR and no answer.
    let m = reply(n.answer(&query("pool", RecordType::AAAA, 9)));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn several_answers_rotate() {
    let mut n = names();
    let firsts: Vec<Ipv4Addr> = (0..3)
        .map(|i| a_answers(&reply(n.answer(&query("pool", RecordType::A, i))))[0])
        .collect();
    assert_eq!(
        firsts,
        vec![
            Ipv4Addr::new(172, 17, 0, 3),
            Ipv4Addr::new(172, 17, 0, 4),
            Ipv4Addr::new(172, 17, 0, 5)
        ]
    );
    let all = a_answers(&reply(n.answer(&query("pool", RecordType::A, 9))));
    assert_eq!(all.len(), 3);
}

#[test]
fn ptr_for_v4_and_v6() {
    let mut n = names();
    let m = reply(n.answer(&query("2.0.17.172.in-addr.arpa.", RecordType::PTR, 1)));
    let ptrs: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(PTR(t)) => Some(t.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(ptrs, vec!["web.".to_string()]);
    let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let m = reply(n.answer(&query(v6, RecordType::PTR, 2)));
    assert_eq!(m.answers.len(), 1);
    // Unknown address in the subnet: NXDOMAIN; outside: forwarded.
    let m = reply(n.answer(&query("99.0.17.172.in-addr.arpa.", RecordType::PTR, 3)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        n.answer(&query("8.8.8.8.in-addr.arpa.", RecordType::PTR, 4)),
        Answer::Forward
    );
}

#[test]
fn nxdomain_for_local_looking_names_forward_for_the_rest() {
    let mut n = names();
    let m = reply(n.answer(&query("nosuch", RecordType::A, 1)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.queries.len(), 1);
    let m = reply(n.answer(&query("x.tapnet.internal.", RecordType::A, 2)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        n.answer(&query("example.com", RecordType::A, 3)),
        Answer::Forward
    );
    assert_eq!(n.answer(&[1, 2, 3]), Answer::Ignore);
}

#[test]
fn servfail_and_id_rewrite() {
    let q = query("example.com.", RecordType::A, 0x4242);
    let m = Message::from_vec(&servfail(&q).expect("servfail")).expect("decode");
    assert_eq!(m.metadata.id, 0x4242);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.queries.len(), 1);
    let r = with_id(&q, 7);
    assert_eq!(id_of(&r), Some(7));
    assert_eq!(&r[2..], &q[2..]);
    assert!(servfail(&[0]).is_none());
}

const UP1: &str = "192.0.2.1:53";
const UP2: &str = "192.0.2.2:53";

fn forwarder(servers: &[&str]) -> Forwarder<&'static str> {
    Forwarder::new(
        servers.iter().map(|s| s.parse().expect("addr")).collect(),
        Duration::from_secs(2),
    )
}

#[test]
fn forwarded_query_retries_the_next_upstream_then_servfails_on_a_fake_clock() {
    let mut f = forwarder(&[UP1, UP2]);
    let q = query("example.com.", RecordType::A, 0x1234);
    // t = 10 s: sent to the first server under the upstream id.
    let Forward::Send { id, server, msg } = f.start("client", q.clone(), 0xbeef, 10_000) else {
        panic!("no send");
    };
    assert_eq!(server, UP1.parse().expect("addr"));
    assert_eq!(msg, with_id(&q, 0xbeef));
    assert_eq!(f.next_deadline(), Some(12_000));
    // Not yet: nothing moves a millisecond before the timeout.
    assert!(f.expire(11_999).is_empty());
    assert_eq!(f.waiting(), 1);
    // Timeout: the same message to the second server, with a fresh deadline.
    assert_eq!(
        f.expire(12_000),
        vec![Forward::Send {
            id,
            server: UP2.parse().expect("addr"),
            msg: with_id(&q, 0xbeef),
        }]
    );
    assert_eq!(f.next_deadline(), Some(14_000));
    assert!(f.expire(13_999).is_empty());
    // The last server times out too: SERVFAIL to the client, under its own id.
    let steps = f.expire(14_500);
    let [Forward::Fail {
        id: failed,
        client,
        reply,
    }] = &steps[..]
    else {
        panic!("expected a SERVFAIL, got {steps:?}");
    };
    assert_eq!((*failed, *client), (id, "client"));
    let m = Message::from_vec(reply.as_deref().expect("reply")).expect("decode");
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(f.waiting(), 0);
    assert_eq!(f.next_deadline(), None);
    assert!(f.expire(u64::MAX).is_empty());
}

#[test]
fn forwarded_query_answer_unusable_server_and_no_server() {
    let mut f = forwarder(&[UP1, UP2]);
    let q = query("example.com.", RecordType::A, 0x0707);
    let Forward::Send { id, .. } = f.start("a", q.clone(), 0x5151, 0) else {
        panic!("no send");
    };
    // The first server cannot be used (ICMP unreachable at t = 5 ms): the second is
    // tried at once, with its full timeout from then.
    assert!(matches!(
        f.next_server(id, 5),
        Some(Forward::Send { server, .. }) if server == UP2.parse().expect("addr")
    ));
    assert_eq!(f.next_deadline(), Some(2_005));
    // A message under another id is not the answer.
    let mut resp = Message::from_vec(&q).expect("decode");
    resp.metadata.message_type = MessageType::Response;
    let resp = resp.to_vec().expect("encode");
    assert_eq!(f.answer(id, &with_id(&resp, 0x5150)), None);
    assert_eq!(f.waiting(), 1);
    // The answer goes back to the client under its id; nothing is left to time out.
    let (client, back) = f.answer(id, &with_id(&resp, 0x5151)).expect("answered");
    assert_eq!(client, "a");
    assert_eq!(back, with_id(&resp, 0x0707));
    assert!(f.expire(u64::MAX).is_empty());
    assert_eq!(f.next_server(id, 10), None);

    // No upstream at all: SERVFAIL straight away.
    let mut none = forwarder(&[]);
    let step = none.start("b", q, 1, 0);
    assert!(
        matches!(
            step,
            Forward::Fail {
                client: "b",
                reply: Some(_),
                ..
            }
        ),
        "{step:?}"
    );
    assert_eq!(none.waiting(), 0);
}

fn ptr_names(n: &mut Names, q: &str) -> Vec<String> {
    reply(n.answer(&query(q, RecordType::PTR, 5)))
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(PTR(t)) => Some(t.to_ascii()),
            _ => None,
        })
        .collect()
}

#[test]
fn records_added_and_removed_one_at_a_time() {
    let mut n = names();
    let rec = |name: &str, last: u8| NameRecord {
        name: name.into(),
        ipv4s: vec![Ipv4Addr::new(172, 17, 0, last)],
        ipv6s: vec![],
    };
    // A second endpoint named "web": both answer (round robin), PTR of each is "web".
    n.add(&rec("WEB.", 9));
    let mut all = a_answers(&reply(n.answer(&query("web", RecordType::A, 1))));
    all.sort();
    assert_eq!(
        all,
        vec![Ipv4Addr::new(172, 17, 0, 2), Ipv4Addr::new(172, 17, 0, 9)]
    );
    assert_eq!(ptr_names(&mut n, "9.0.17.172.in-addr.arpa."), vec!["web."]);
    // An alias on the same address: the reverse entry has both names.
    n.add(&rec("db", 9));
    let mut p = ptr_names(&mut n, "9.0.17.172.in-addr.arpa.");
    p.sort();
    assert_eq!(p, vec!["db.", "web."]);

    // The first "web" goes: the other stays, and its v6 address goes with it.
    n.remove(&NameRecord {
        name: "web".into(),
        ipv4s: vec![Ipv4Addr::new(172, 17, 0, 2)],
        ipv6s: vec!["fd00::2".parse().expect("v6")],
    });
    assert_eq!(
        a_answers(&reply(n.answer(&query("web", RecordType::A, 2)))),
        vec![Ipv4Addr::new(172, 17, 0, 9)]
    );
    let m = reply(n.answer(&query("2.0.17.172.in-addr.arpa.", RecordType::PTR, 3)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "PTR gone");
    let m = reply(n.answer(&query("web", RecordType::AAAA, 4)));
    assert!(m.answers.is_empty());

    // The last "web" goes: NXDOMAIN; "db" on the same address stays, PTR too.
    n.remove(&rec("web", 9));
    let m = reply(n.answer(&query("web", RecordType::A, 5)));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ptr_names(&mut n, "9.0.17.172.in-addr.arpa."), vec!["db."]);
    assert_eq!(
        a_answers(&reply(n.answer(&query("db", RecordType::A, 6)))),
        vec![Ipv4Addr::new(172, 17, 0, 9)]
    );
    // Unknown names and addresses: nothing changes; "pool" untouched throughout.
    n.remove(&rec("nobody", 77));
    n.remove(&rec("pool", 77));
    assert_eq!(
        a_answers(&reply(n.answer(&query("pool", RecordType::A, 7)))).len(),
        3
    );
}
