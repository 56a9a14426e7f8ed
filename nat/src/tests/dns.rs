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
