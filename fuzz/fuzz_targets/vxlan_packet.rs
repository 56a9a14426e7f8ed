//! `vxlan_packet`: datagrams from the underlay into the VXLAN receive path, the steps
//! `VxlanSocket`'s dispatcher and `VxlanPort::recv` take, without the sockets: the
//! batch split into runs of one VNI (`demux::split_runs`), each datagram opened
//! (encrypted networks, `KeyRing::open`), decapsulated (`header::decap`), its VNI and
//! local-only MACs checked, TCP segments merged (`Coalescer`), the source learned
//! (`VtepTable::learn`); also ARP/NDP suppression (`NeighTable::answer`) of frames from
//! local endpoints, and seal/open with fuzz-chosen nonces (the replay window).
//!
//! Input: a config byte (bit 0: encrypted network; bit 1: the gateway's MAC is
//! local-only), then records: tag & 3 = 0: a received batch (body: u16 LE stride, then
//! the datagrams `stride` apart); 1: a frame sealed by the ring and opened again;
//! 2: a frame from a local endpoint to the suppression table; 3: a datagram sealed with
//! the nonce in its first 12 bytes, then opened (twice when tag bit 2 is set).
//!
//! Asserted (besides "no panic"): runs are disjoint, in order, inside the batch and
//! datagram-aligned, and runs + malformed account for every datagram; what the port
//! hands the switch passes the switch's `check_vnet_hdr`, and a merged super-frame
//! segments (`tapnet_wire` GSO, as the gateway or a tap would) back into as many
//! segments as were merged; learned entries stay within the table's limit; seal then
//! open gives back the datagram, and opening it again is a replay; the replay window
//! admits exactly what a model of it (top counter, 128 behind, each once) admits;
//! suppression replies are ARP replies (42 bytes) or neighbour advertisements (86
//! bytes) to the asker.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ring::aead::{LessSafeKey, UnboundKey, AES_256_GCM};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use tapnet_fuzz::{Input, GW_MAC, VXLAN_KEY, VXLAN_KEY_ID, VXLAN_VNI};
use tapnet_switch::core::{check_vnet_hdr, MacAddr};
use tapnet_switch::runtime::RECV_BUF_LEN;
use tapnet_switch::VNET_HDR_LEN;
use tapnet_vxlan::coalesce::Coalescer;
use tapnet_vxlan::crypt::{self, KeyMaterial, KeyRing, KeySet};
use tapnet_vxlan::demux::split_runs;
use tapnet_vxlan::header::{self, Vni};
use tapnet_vxlan::suppress::{NeighTable, ARP_REPLY_LEN, NA_LEN};
use tapnet_vxlan::table::{TableConfig, VtepTable};
use tapnet_wire::vnet::ZERO_HDR;

const MAX_LEARNED: usize = 8;

struct Port {
    vni: Vni,
    ring: Option<KeyRing>,
    local_only: Vec<[u8; 6]>,
    table: VtepTable,
    from: SocketAddr,
    buf: Vec<u8>,
    now: u64,
}

fn keyset() -> KeySet {
    KeySet {
        keys: vec![KeyMaterial {
            id: VXLAN_KEY_ID,
            key: VXLAN_KEY,
        }],
        send: Some(VXLAN_KEY_ID),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.byte();
    let vni = Vni::new(VXLAN_VNI).expect("vni");
    let mut port = Port {
        vni,
        ring: (cfg & 1 != 0).then(|| KeyRing::new(&keyset())),
        local_only: if cfg & 2 != 0 { vec![GW_MAC] } else { vec![] },
        table: VtepTable::new(TableConfig {
            max_learned_per_vni: MAX_LEARNED,
            ageing_ms: 1000,
        }),
        from: "192.0.2.2:4789".parse().expect("addr"),
        buf: vec![0u8; RECV_BUF_LEN],
        now: 0,
    };
    let mut opener = KeyRing::new(&keyset());
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &VXLAN_KEY).expect("key"));
    // The replay model: per salt, the top counter and the counters seen.
    let mut model: HashMap<[u8; 6], (u64, HashSet<u64>)> = HashMap::new();
    let mut neigh = NeighTable::new();
    neigh.insert(
        vni,
        "10.0.0.20".parse().expect("ip"),
        MacAddr([2, 0, 0, 0, 0, 0x20]),
    );
    neigh.insert(
        vni,
        "fd00::20".parse().expect("ip"),
        MacAddr([2, 0, 0, 0, 0, 0x21]),
    );
    while let Some((tag, body)) = input.record() {
        port.now += 100;
        match tag & 3 {
            0 => {
                let stride = usize::from(u16::from_le_bytes([
                    body.first().copied().unwrap_or(0),
                    body.get(1).copied().unwrap_or(0),
                ]));
                let batch = body.get(2..).unwrap_or_default();
                let stride = if stride == 0 {
                    batch.len().max(1)
                } else {
                    stride
                };
                receive(&mut port, batch, stride);
            }
            1 => {
                let mut buf = body.to_vec();
                let len = buf.len();
                buf.resize(len + crypt::OVERHEAD, 0);
                let Ok(n) = opener.seal(&mut buf, len) else {
                    assert!(len < header::VXLAN_HDR_LEN, "seal refused {len} bytes");
                    continue;
                };
                assert_eq!(n, len + crypt::OVERHEAD);
                let sealed = buf.clone();
                let m = opener.open(&mut buf, n).expect("open what was sealed");
                assert_eq!(&buf[..m], body);
                let mut again = sealed;
                assert_eq!(opener.open(&mut again, n), Err(crypt::Error::Replay));
            }
            2 => {
                let mut out = [0u8; 128];
                if let Some(n) = neigh.answer(vni, body, &mut out) {
                    // An ARP reply goes to the request's sender hardware address, a
                    // neighbour advertisement to the solicitation's Ethernet source.
                    let asker = if n == ARP_REPLY_LEN {
                        &body[22..28]
                    } else {
                        assert_eq!(n, NA_LEN, "reply of {n} bytes");
                        &body[6..12]
                    };
                    assert_eq!(&out[..6], asker, "reply not to the asker");
                    assert_eq!(out[0] & 1, 0, "reply to a group address");
                }
            }
            _ => {
                let Some((nonce, rest)) = body.split_first_chunk::<12>() else {
                    continue;
                };
                let mut buf = rest.to_vec();
                let len = buf.len();
                buf.resize(len + crypt::OVERHEAD, 0);
                let Ok(n) = crypt::seal(&key, VXLAN_KEY_ID, *nonce, &mut buf, len) else {
                    continue;
                };
                let mut salt = [0u8; 6];
                salt.copy_from_slice(&nonce[..6]);
                let mut c = [0u8; 8];
                c[2..].copy_from_slice(&nonce[6..]);
                let seq = u64::from_be_bytes(c);
                let times = if tag & 4 != 0 { 2 } else { 1 };
                for _ in 0..times {
                    let mut b = buf.clone();
                    let got = opener.open(&mut b, n);
                    let want = admit(&mut model, salt, seq);
                    match got {
                        Ok(m) => {
                            assert!(want, "replayed counter {seq} admitted");
                            assert_eq!(&b[..m], rest);
                        }
                        Err(e) => {
                            assert_eq!(e, crypt::Error::Replay);
                            assert!(!want, "fresh counter {seq} refused");
                        }
                    }
                }
            }
        }
    }
});

/// The replay window's model.
fn admit(model: &mut HashMap<[u8; 6], (u64, HashSet<u64>)>, salt: [u8; 6], seq: u64) -> bool {
    let Some((top, seen)) = model.get_mut(&salt) else {
        // The ring forgets every window when it holds too many (`MAX_SENDERS`).
        if model.len() >= crypt::MAX_SENDERS - 1 {
            model.clear();
        }
        model.insert(salt, (seq, HashSet::from([seq])));
        return true;
    };
    if seq > *top {
        *top = seq;
        seen.insert(seq);
        return true;
    }
    if *top - seq >= crypt::REPLAY_WINDOW || seen.contains(&seq) {
        return false;
    }
    seen.insert(seq);
    true
}

/// A received batch through the dispatcher's split and the port's receive loop.
fn receive(port: &mut Port, batch: &[u8], stride: usize) {
    if batch.is_empty() || u16::try_from(stride).is_err() {
        return;
    }
    let mut runs = Vec::new();
    let malformed = split_runs(batch, stride, &mut runs);
    let mut counted = malformed;
    let mut last_end = 0;
    for &(_, start, end) in &runs {
        assert!(start >= last_end && start < end && end <= batch.len());
        assert_eq!(start % stride, 0, "run not datagram-aligned");
        assert!(end % stride == 0 || end == batch.len());
        counted += (end - start).div_ceil(stride) as u64;
        last_end = end;
    }
    assert_eq!(
        counted,
        batch.len().div_ceil(stride) as u64,
        "datagrams lost"
    );
    for &(vni, start, end) in &runs {
        if vni != port.vni {
            continue;
        }
        let mut run = batch[start..end].to_vec();
        let datagrams: Vec<(usize, usize)> = (0..run.len())
            .step_by(stride)
            .map(|a| (a, (a + stride).min(run.len())))
            .collect();
        // Open every datagram first (the port opens each once, right before use).
        let mut clear: Vec<Option<(usize, usize)>> = Vec::new();
        for &(a, e) in &datagrams {
            match &mut port.ring {
                None => clear.push(Some((a, e))),
                Some(ring) => {
                    let d = &mut run[a..e];
                    let n = d.len();
                    clear.push(ring.open(d, n).ok().map(|m| (a, a + m)));
                }
            }
        }
        let mut i = 0;
        while i < clear.len() {
            let Some((a, e)) = clear[i] else {
                i += 1;
                continue;
            };
            i += 1;
            let inner = match header::decap(&run[a..e]) {
                Ok((v, inner)) if v == port.vni => inner,
                _ => continue,
            };
            let local = port
                .local_only
                .iter()
                .any(|m| inner.get(..6) == Some(&m[..]) || inner.get(6..12) == Some(&m[..]));
            if local {
                continue;
            }
            let Some(out) = port.buf.get_mut(VNET_HDR_LEN..VNET_HDR_LEN + inner.len()) else {
                continue;
            };
            out.copy_from_slice(inner);
            let src = inner.get(6..12).map(|s| {
                let mut m = [0u8; 6];
                m.copy_from_slice(s);
                MacAddr(m)
            });
            let mut len = VNET_HDR_LEN + inner.len();
            let mut merged = 1;
            if let Some(mut c) = Coalescer::start(&port.buf, inner.len()) {
                while let Some(&d) = clear.get(i) {
                    let Some((a, e)) = d else {
                        // Failed to open: dropped, the merge goes on (as the port's).
                        i += 1;
                        continue;
                    };
                    let Ok((v, next)) = header::decap(&run[a..e]) else {
                        break;
                    };
                    if v != port.vni || !c.append(&mut port.buf, next) {
                        break;
                    }
                    i += 1;
                }
                merged = c.segments();
                len = c.finish(&mut port.buf);
            } else {
                port.buf[..VNET_HDR_LEN].copy_from_slice(&ZERO_HDR);
            }
            let dg = &port.buf[..len];
            check_vnet_hdr(&dg[..VNET_HDR_LEN], len - VNET_HDR_LEN)
                .expect("the switch refuses what the tunnel port hands it");
            if merged > 1 {
                let mut segs = Vec::new();
                tapnet_nat::vnet::ingest(dg, &mut segs).expect("merged frame segments");
                assert_eq!(segs.len(), merged, "segments out != segments merged");
            }
            if let Some(src) = src {
                port.table.learn(port.vni, src, port.from, port.now);
            }
            let learned = port.table.entries(port.vni).len();
            assert!(learned <= MAX_LEARNED, "{learned} learned entries");
            port.table.expire(port.now);
        }
    }
}
