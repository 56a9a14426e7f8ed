//! ARP and NDP suppression: answer neighbour queries for known endpoints locally.
//!
//! Contract:
//!
//! * [`NeighTable`] holds what the control plane knows: per VNI, IP address → MAC.
//! * [`NeighTable::answer`] takes an Ethernet frame from a local endpoint (no virtio-net
//!   header) and, if it is a query the table can answer, writes the reply frame into
//!   the caller's buffer and returns its length; the query is then **not** tunnelled.
//!   Anything else is `None` and goes its normal way.
//!   * ARP: an untagged Ethernet/IPv4 request (`htype 1`, `ptype 0x0800`, `oper 1`)
//!     for a known target address, not gratuitous (sender IP ≠ target IP). The reply
//!     (42 bytes, unpadded) goes to the requester's hardware address.
//!   * NDP: an untagged IPv6 neighbour solicitation (next header 58 right after the
//!     fixed header, hop limit 255, ICMPv6 type 135 code 0, valid checksum) for a known
//!     target, from a specified source address (duplicate address detection, source
//!     `::`, is not answered). The neighbour advertisement (86 bytes: Solicited and
//!     Override set, a Target Link-Layer Address option, hop limit 255, checksum over
//!     the RFC 8200 pseudo-header) goes to the solicitor.
//!   * A query whose known MAC is the requester's own (an endpoint probing its own
//!     address) is not answered.
//! * No I/O, no clock; nothing panics on any input (lengths are checked first; a
//!   too-small output buffer gives `None`).

use crate::header::Vni;
use rustc_hash::FxHashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tapnet_wire::checksum;
use tapnet_wire::{MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV6, ETH_HDR_LEN};

/// Length of an ARP reply frame (Ethernet header + 28-byte ARP body).
pub const ARP_REPLY_LEN: usize = ETH_HDR_LEN + 28;
/// Length of a neighbour advertisement frame (Ethernet + IPv6 + 24-byte NA + 8-byte option).
pub const NA_LEN: usize = ETH_HDR_LEN + 40 + 32;

const IPPROTO_ICMPV6: u8 = 58;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;

/// Per VNI, IP address → MAC of the endpoints the control plane knows.
#[derive(Debug, Default)]
pub struct NeighTable {
    vnis: FxHashMap<Vni, FxHashMap<IpAddr, MacAddr>>,
}

impl NeighTable {
    /// An empty table.
    pub fn new() -> NeighTable {
        NeighTable::default()
    }

    /// `ip` on `vni` is `mac`.
    pub fn insert(&mut self, vni: Vni, ip: IpAddr, mac: MacAddr) {
        self.vnis.entry(vni).or_default().insert(ip, mac);
    }

    /// Forget `ip` on `vni`.
    pub fn remove(&mut self, vni: Vni, ip: IpAddr) {
        if let Some(m) = self.vnis.get_mut(&vni) {
            m.remove(&ip);
        }
    }

    /// Forget `ip` on `vni` if it is still `mac` (an address taken over by another
    /// MAC meanwhile is kept); whether it was removed.
    pub fn remove_if(&mut self, vni: Vni, ip: IpAddr, mac: MacAddr) -> bool {
        let Some(m) = self.vnis.get_mut(&vni) else {
            return false;
        };
        if m.get(&ip) == Some(&mac) {
            m.remove(&ip);
            return true;
        }
        false
    }

    /// Replace everything known on `vni`.
    pub fn set_vni(&mut self, vni: Vni, entries: &[(IpAddr, MacAddr)]) {
        let m = self.vnis.entry(vni).or_default();
        m.clear();
        m.extend(entries.iter().copied());
    }

    /// The MAC of `ip` on `vni`.
    pub fn get(&self, vni: Vni, ip: IpAddr) -> Option<MacAddr> {
        self.vnis.get(&vni)?.get(&ip).copied()
    }

    /// If `frame` is an ARP request or neighbour solicitation this table answers, write
    /// the reply into `out` and return its length.
    pub fn answer(&self, vni: Vni, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        answer_with(frame, |ip| self.get(vni, ip), out)
    }
}

/// [`NeighTable::answer`] with any lookup.
pub fn answer_with(
    frame: &[u8],
    lookup: impl Fn(IpAddr) -> Option<MacAddr>,
    out: &mut [u8],
) -> Option<usize> {
    let eth = frame.first_chunk::<ETH_HDR_LEN>()?;
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETHERTYPE_ARP => arp_reply(frame, lookup, out),
        ETHERTYPE_IPV6 => na_reply(frame, lookup, out),
        _ => None,
    }
}

fn arp_reply(
    frame: &[u8],
    lookup: impl Fn(IpAddr) -> Option<MacAddr>,
    out: &mut [u8],
) -> Option<usize> {
    let arp = frame.get(ETH_HDR_LEN..)?.first_chunk::<28>()?;
    // htype 1 (Ethernet), ptype IPv4, hlen 6, plen 4, oper 1 (request).
    if arp[..8] != [0, 1, 0x08, 0x00, 6, 4, 0, 1] {
        return None;
    }
    let sha: [u8; 6] = arp[8..14].try_into().ok()?;
    let spa: [u8; 4] = arp[14..18].try_into().ok()?;
    let tpa: [u8; 4] = arp[24..28].try_into().ok()?;
    if spa == tpa {
        return None; // gratuitous
    }
    let mac = lookup(IpAddr::V4(Ipv4Addr::from(tpa)))?;
    if mac.octets() == sha || !MacAddr(sha).is_unicast() {
        return None;
    }
    let out = out.get_mut(..ARP_REPLY_LEN)?;
    out[0..6].copy_from_slice(&sha);
    out[6..12].copy_from_slice(&mac.octets());
    out[12..14].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    out[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 2]);
    out[22..28].copy_from_slice(&mac.octets());
    out[28..32].copy_from_slice(&tpa);
    out[32..38].copy_from_slice(&sha);
    out[38..42].copy_from_slice(&spa);
    Some(ARP_REPLY_LEN)
}

fn na_reply(
    frame: &[u8],
    lookup: impl Fn(IpAddr) -> Option<MacAddr>,
    out: &mut [u8],
) -> Option<usize> {
    let ip = frame.get(ETH_HDR_LEN..)?.first_chunk::<40>()?;
    if ip[0] >> 4 != 6 || ip[6] != IPPROTO_ICMPV6 || ip[7] != 255 {
        return None;
    }
    let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let icmp = frame.get(ETH_HDR_LEN + 40..)?.get(..plen)?;
    let ns = icmp.first_chunk::<24>()?;
    if ns[0] != ND_NEIGHBOR_SOLICIT || ns[1] != 0 {
        return None;
    }
    let src: [u8; 16] = ip[8..24].try_into().ok()?;
    let dst: [u8; 16] = ip[24..40].try_into().ok()?;
    let (src, dst) = (Ipv6Addr::from(src), Ipv6Addr::from(dst));
    if src.is_unspecified() {
        return None; // duplicate address detection
    }
    let sum = checksum::pseudo_v6(src, dst, IPPROTO_ICMPV6, plen as u32).add_bytes(icmp);
    if sum.fold() != 0xffff {
        return None;
    }
    let target: [u8; 16] = ns[8..24].try_into().ok()?;
    let target_ip = Ipv6Addr::from(target);
    if target_ip.is_multicast() {
        return None;
    }
    let mac = lookup(IpAddr::V6(target_ip))?;
    let requester: [u8; 6] = frame.get(6..12)?.try_into().ok()?;
    if mac.octets() == requester || !MacAddr(requester).is_unicast() {
        return None;
    }
    let out = out.get_mut(..NA_LEN)?;
    out[0..6].copy_from_slice(&requester);
    out[6..12].copy_from_slice(&mac.octets());
    out[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let o = &mut out[ETH_HDR_LEN..];
    o[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
    o[4..6].copy_from_slice(&32u16.to_be_bytes());
    o[6] = IPPROTO_ICMPV6;
    o[7] = 255;
    o[8..24].copy_from_slice(&target);
    o[24..40].copy_from_slice(&src.octets());
    let na = &mut o[40..72];
    na[0] = ND_NEIGHBOR_ADVERT;
    na[1] = 0;
    na[2..4].copy_from_slice(&[0, 0]);
    // Solicited | Override.
    na[4..8].copy_from_slice(&[0x60, 0, 0, 0]);
    na[8..24].copy_from_slice(&target);
    // Target Link-Layer Address option: type 2, length 1 (8 bytes).
    na[24] = 2;
    na[25] = 1;
    na[26..32].copy_from_slice(&mac.octets());
    let c = checksum::pseudo_v6(target_ip, src, IPPROTO_ICMPV6, 32)
        .add_bytes(na)
        .checksum();
    na[2..4].copy_from_slice(&c.to_be_bytes());
    Some(NA_LEN)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const REQ_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
    const KNOWN_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 3]);

    fn vni() -> Vni {
        Vni::new(42).unwrap()
    }

    fn table() -> NeighTable {
        let mut t = NeighTable::new();
        t.insert(vni(), "10.0.0.3".parse().unwrap(), KNOWN_MAC);
        t.insert(vni(), "fd00::3".parse().unwrap(), KNOWN_MAC);
        t
    }

    /// who-has 10.0.0.3 tell 10.0.0.2, as a Linux host sends it.
    fn arp_request(tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&REQ_MAC);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&REQ_MAC);
        f.extend_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa);
        f
    }

    #[test]
    fn arp_request_for_a_known_ip_is_answered() {
        let t = table();
        let mut out = [0u8; 128];
        let n = t
            .answer(vni(), &arp_request([10, 0, 0, 3]), &mut out)
            .unwrap();
        assert_eq!(n, 42);
        #[rustfmt::skip]
        let want: [u8; 42] = [
            0x02, 0x42, 0x0a, 0, 0, 2,   0x02, 0x42, 0x0a, 0, 0, 3,   0x08, 0x06,
            0, 1, 0x08, 0, 6, 4, 0, 2,
            0x02, 0x42, 0x0a, 0, 0, 3,   10, 0, 0, 3,
            0x02, 0x42, 0x0a, 0, 0, 2,   10, 0, 0, 2,
        ];
        assert_eq!(out[..n], want);
    }

    #[test]
    fn arp_not_answered() {
        let t = table();
        let mut out = [0u8; 128];
        // Unknown IP, other VNI, gratuitous, a reply, truncated, small buffer.
        assert_eq!(t.answer(vni(), &arp_request([10, 0, 0, 9]), &mut out), None);
        let other = Vni::new(7).unwrap();
        assert_eq!(t.answer(other, &arp_request([10, 0, 0, 3]), &mut out), None);
        let mut grat = arp_request([10, 0, 0, 2]);
        grat[28..32].copy_from_slice(&[10, 0, 0, 2]);
        assert_eq!(t.answer(vni(), &grat, &mut out), None);
        let mut reply = arp_request([10, 0, 0, 3]);
        reply[21] = 2;
        assert_eq!(t.answer(vni(), &reply, &mut out), None);
        let req = arp_request([10, 0, 0, 3]);
        for len in 0..req.len() {
            assert_eq!(t.answer(vni(), &req[..len], &mut out), None);
        }
        assert_eq!(t.answer(vni(), &req, &mut out[..41]), None);
        // The owner probing its own address.
        let mut own = NeighTable::new();
        own.insert(vni(), "10.0.0.3".parse().unwrap(), MacAddr(REQ_MAC));
        assert_eq!(own.answer(vni(), &req, &mut out), None);
    }

    /// A neighbour solicitation for `target` from fd00::2 to its solicited-node group.
    fn ns(target: Ipv6Addr) -> Vec<u8> {
        let src: Ipv6Addr = "fd00::2".parse().unwrap();
        let t = target.octets();
        let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(t[13]), {
            u16::from_be_bytes([t[14], t[15]])
        });
        let mut icmp = vec![ND_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&t);
        icmp.extend_from_slice(&[1, 1]);
        icmp.extend_from_slice(&REQ_MAC);
        let c = checksum::pseudo_v6(src, dst, 58, icmp.len() as u32)
            .add_bytes(&icmp)
            .checksum();
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let m = dst.octets();
        let mut f = vec![0x33, 0x33, m[12], m[13], m[14], m[15]];
        f.extend_from_slice(&REQ_MAC);
        f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
        f.extend_from_slice(&[58, 255]);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&dst.octets());
        f.extend_from_slice(&icmp);
        f
    }

    #[test]
    fn neighbour_solicitation_for_a_known_ip_is_answered() {
        let t = table();
        let target: Ipv6Addr = "fd00::3".parse().unwrap();
        let mut out = [0u8; 128];
        let n = t.answer(vni(), &ns(target), &mut out).unwrap();
        assert_eq!(n, 86);
        let f = &out[..n];
        assert_eq!(f[0..6], REQ_MAC);
        assert_eq!(f[6..12], KNOWN_MAC.octets());
        assert_eq!(f[12..14], [0x86, 0xdd]);
        let ip = &f[14..54];
        assert_eq!(ip[0..8], [0x60, 0, 0, 0, 0, 32, 58, 255]);
        assert_eq!(ip[8..24], target.octets());
        let dst: Ipv6Addr = "fd00::2".parse().unwrap();
        assert_eq!(ip[24..40], dst.octets());
        let na = &f[54..];
        assert_eq!(na[0..2], [136, 0]);
        assert_eq!(na[4..8], [0x60, 0, 0, 0], "Solicited and Override");
        assert_eq!(na[8..24], target.octets());
        assert_eq!(na[24..32], [2, 1, 0x02, 0x42, 0x0a, 0, 0, 3]);
        // The checksum, verified over pseudo-header + body.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&target.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&32u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(na);
        assert!(checksum::verify(&pseudo));
        assert_ne!(na[2..4], [0, 0]);
    }

    #[test]
    fn neighbour_solicitation_not_answered() {
        let t = table();
        let mut out = [0u8; 128];
        let known: Ipv6Addr = "fd00::3".parse().unwrap();
        assert_eq!(
            t.answer(vni(), &ns("fd00::9".parse().unwrap()), &mut out),
            None
        );
        // Bad checksum, hop limit not 255, DAD (source ::).
        let mut bad = ns(known);
        bad[14 + 40 + 2] ^= 1;
        assert_eq!(t.answer(vni(), &bad, &mut out), None);
        let mut hop = ns(known);
        hop[14 + 7] = 64;
        assert_eq!(t.answer(vni(), &hop, &mut out), None);
        let mut dad = ns(known);
        dad[14 + 8..14 + 24].fill(0);
        assert_eq!(t.answer(vni(), &dad, &mut out), None);
        let f = ns(known);
        for len in 0..f.len() {
            assert_eq!(t.answer(vni(), &f[..len], &mut out), None);
        }
        assert_eq!(t.answer(vni(), &f, &mut out[..85]), None);
        assert!(t.answer(vni(), &f, &mut out).is_some());
    }

    #[test]
    fn random_frames_never_panic() {
        let t = table();
        let mut s = 0x1234_5678_9abc_def1u64;
        let mut out = [0u8; 128];
        let seeds = [arp_request([10, 0, 0, 3]), ns("fd00::3".parse().unwrap())];
        for i in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let mut f = seeds[i % 2].clone();
            // Flip a few bytes, cut at a random length.
            for k in 0..3 {
                let at = ((s >> (k * 16)) as usize) % f.len();
                f[at] ^= (s >> (k * 8 + 40)) as u8;
            }
            f.truncate((s >> 56) as usize % (f.len() + 1));
            let _ = t.answer(vni(), &f, &mut out);
        }
    }

    #[test]
    fn neighbours_one_at_a_time() {
        let mut t = table();
        let other = MacAddr([0x02, 0x42, 0x0a, 0, 0, 4]);
        let ip: IpAddr = "10.0.0.3".parse().unwrap();
        assert!(!t.remove_if(vni(), ip, other), "another MAC's: kept");
        assert_eq!(t.get(vni(), ip), Some(KNOWN_MAC));
        assert!(t.remove_if(vni(), ip, KNOWN_MAC));
        assert_eq!(t.get(vni(), ip), None);
        let mut out = [0u8; 128];
        assert_eq!(t.answer(vni(), &arp_request([10, 0, 0, 3]), &mut out), None);
        assert_eq!(
            t.get(vni(), "fd00::3".parse().unwrap()),
            Some(KNOWN_MAC),
            "the other address stays"
        );
        t.insert(vni(), ip, other);
        assert_eq!(t.get(vni(), ip), Some(other));
        assert!(!t.remove_if(Vni::new(7).unwrap(), ip, other), "unknown VNI");
    }
}
