//! The VTEP table: where to send an inner frame, per VNI.
//!
//! Contract:
//!
//! * Per VNI the table holds a **flood list** (the VTEPs of the network, set by the
//!   control plane with [`VtepTable::set_peers`], or one at a time with
//!   [`VtepTable::add_peer`] / [`VtepTable::remove_peer`]), **static entries** (remote
//!   MAC → VTEP, from the control plane, never aged, [`VtepTable::set_statics`], or one
//!   at a time with [`VtepTable::add_static`] / [`VtepTable::remove_static`]) and **learned
//!   entries** (remote MAC → VTEP seen as the source of a decapsulated frame,
//!   [`VtepTable::learn`], aged out by [`VtepTable::expire`] after
//!   [`TableConfig::ageing_ms`]).
//! * [`VtepTable::lookup`]: a unicast destination MAC with an entry (static first, then
//!   learned) is [`Dest::Unicast`]; broadcast, multicast and unknown unicast are
//!   [`Dest::Flood`] over the VNI's flood list (head-end replication). A VNI the table
//!   does not know floods to nobody.
//! * Learning never overrides a static entry, ignores group and all-zero source MACs,
//!   and keeps at most [`TableConfig::max_learned_per_vni`] entries per VNI: a new MAC
//!   beyond that is refused and counted ([`VniCounters::learn_refused`]); existing
//!   entries still refresh and move.
//! * Time is passed in (`now_ms`, any monotonic millisecond clock); nothing here reads a
//!   clock or does I/O. Learning only happens for VNIs the control plane created
//!   (by any setter).

use crate::header::Vni;
use rustc_hash::FxHashMap;
use std::net::SocketAddr;
use tapnet_wire::MacAddr;

/// Limits of a [`VtepTable`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Most learned entries per VNI.
    pub max_learned_per_vni: usize,
    /// A learned entry not refreshed for this long is removed by [`VtepTable::expire`].
    pub ageing_ms: u64,
}

impl Default for TableConfig {
    /// 4096 learned entries per VNI, 300 s ageing (the Linux bridge's default).
    fn default() -> TableConfig {
        TableConfig {
            max_learned_per_vni: 4096,
            ageing_ms: 300_000,
        }
    }
}

/// Where an inner frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest<'a> {
    /// One VTEP.
    Unicast(SocketAddr),
    /// Every VTEP of the VNI (head-end replication); may be empty.
    Flood(&'a [SocketAddr]),
}

/// What [`VtepTable::learn`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Learned {
    /// A new entry.
    New,
    /// An existing entry, same VTEP, refreshed.
    Refreshed,
    /// An existing entry now points at another VTEP.
    Moved,
    /// Not learned: a static entry, a group or zero MAC, or an unknown VNI.
    Ignored,
    /// Not learned: the VNI is at its limit (counted).
    Refused,
}

/// Counters of one VNI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VniCounters {
    /// VTEPs in the flood list.
    pub peers: usize,
    /// Static entries.
    pub statics: usize,
    /// Learned entries.
    pub learned: usize,
    /// New MACs refused because the VNI was at its limit.
    pub learn_refused: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    vtep: SocketAddr,
    last_seen_ms: u64,
}

#[derive(Debug, Default)]
struct VniTable {
    flood: Vec<SocketAddr>,
    statics: FxHashMap<MacAddr, SocketAddr>,
    learned: FxHashMap<MacAddr, Entry>,
    learn_refused: u64,
}

/// Remote MAC → VTEP per VNI, and each VNI's flood list.
#[derive(Debug, Default)]
pub struct VtepTable {
    config: TableConfig,
    vnis: FxHashMap<Vni, VniTable>,
}

impl VtepTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> VtepTable {
        VtepTable {
            config,
            vnis: FxHashMap::default(),
        }
    }

    /// The limits.
    pub fn config(&self) -> TableConfig {
        self.config
    }

    /// Create `vni` with nothing in it, if it does not exist.
    pub fn add_vni(&mut self, vni: Vni) {
        self.vnis.entry(vni).or_default();
    }

    /// Forget `vni` and everything in it.
    pub fn remove_vni(&mut self, vni: Vni) {
        self.vnis.remove(&vni);
    }

    /// Replace the flood list of `vni` (duplicates dropped, order kept).
    pub fn set_peers(&mut self, vni: Vni, peers: &[SocketAddr]) {
        let t = self.vnis.entry(vni).or_default();
        t.flood.clear();
        for p in peers {
            if !t.flood.contains(p) {
                t.flood.push(*p);
            }
        }
    }

    /// Add `peer` to the flood list of `vni` (at the end; nothing if it is there).
    pub fn add_peer(&mut self, vni: Vni, peer: SocketAddr) {
        let t = self.vnis.entry(vni).or_default();
        if !t.flood.contains(&peer) {
            t.flood.push(peer);
        }
    }

    /// Take `peer` out of the flood list of `vni` (order of the others kept).
    pub fn remove_peer(&mut self, vni: Vni, peer: SocketAddr) {
        if let Some(t) = self.vnis.get_mut(&vni) {
            t.flood.retain(|p| *p != peer);
        }
    }

    /// The flood list of `vni`.
    pub fn peers(&self, vni: Vni) -> &[SocketAddr] {
        self.vnis.get(&vni).map_or(&[], |t| &t.flood)
    }

    /// Replace the static entries of `vni`. Learned entries for those MACs are dropped.
    pub fn set_statics(&mut self, vni: Vni, entries: &[(MacAddr, SocketAddr)]) {
        let t = self.vnis.entry(vni).or_default();
        t.statics.clear();
        for &(mac, vtep) in entries {
            t.learned.remove(&mac);
            t.statics.insert(mac, vtep);
        }
    }

    /// Add (or move) one static entry of `vni`: `mac` is behind `vtep`. A learned entry
    /// for `mac` is dropped.
    pub fn add_static(&mut self, vni: Vni, mac: MacAddr, vtep: SocketAddr) {
        let t = self.vnis.entry(vni).or_default();
        t.learned.remove(&mac);
        t.statics.insert(mac, vtep);
    }

    /// Remove the static entry of `mac` on `vni` if it still points at `vtep` (one
    /// that moved to another VTEP meanwhile is kept); whether one was removed.
    pub fn remove_static(&mut self, vni: Vni, mac: MacAddr, vtep: SocketAddr) -> bool {
        let Some(t) = self.vnis.get_mut(&vni) else {
            return false;
        };
        if t.statics.get(&mac) == Some(&vtep) {
            t.statics.remove(&mac);
            return true;
        }
        false
    }

    /// The VTEP of the static entry of `mac` on `vni`.
    pub fn static_vtep(&self, vni: Vni, mac: MacAddr) -> Option<SocketAddr> {
        self.vnis.get(&vni)?.statics.get(&mac).copied()
    }

    /// Learn that `src` (an inner source MAC) sits behind `vtep`, at `now_ms`.
    pub fn learn(&mut self, vni: Vni, src: MacAddr, vtep: SocketAddr, now_ms: u64) -> Learned {
        if !src.is_unicast() || src.is_zero() {
            return Learned::Ignored;
        }
        let Some(t) = self.vnis.get_mut(&vni) else {
            return Learned::Ignored;
        };
        if t.statics.contains_key(&src) {
            return Learned::Ignored;
        }
        if let Some(e) = t.learned.get_mut(&src) {
            e.last_seen_ms = now_ms;
            if e.vtep == vtep {
                return Learned::Refreshed;
            }
            e.vtep = vtep;
            return Learned::Moved;
        }
        if t.learned.len() >= self.config.max_learned_per_vni {
            t.learn_refused = t.learn_refused.saturating_add(1);
            return Learned::Refused;
        }
        t.learned.insert(
            src,
            Entry {
                vtep,
                last_seen_ms: now_ms,
            },
        );
        Learned::New
    }

    /// Where a frame for `dst` on `vni` goes.
    pub fn lookup(&self, vni: Vni, dst: MacAddr) -> Dest<'_> {
        let Some(t) = self.vnis.get(&vni) else {
            return Dest::Flood(&[]);
        };
        if dst.is_unicast() {
            if let Some(&v) = t.statics.get(&dst) {
                return Dest::Unicast(v);
            }
            if let Some(e) = t.learned.get(&dst) {
                return Dest::Unicast(e.vtep);
            }
        }
        Dest::Flood(&t.flood)
    }

    /// The MAC → VTEP entries of `vni`: the static ones, then the learned ones no
    /// static entry overrides, each sorted by MAC.
    pub fn entries(&self, vni: Vni) -> Vec<(MacAddr, SocketAddr)> {
        let Some(t) = self.vnis.get(&vni) else {
            return Vec::new();
        };
        let mut statics: Vec<(MacAddr, SocketAddr)> =
            t.statics.iter().map(|(m, v)| (*m, *v)).collect();
        statics.sort_by_key(|(m, _)| m.0);
        let mut learned: Vec<(MacAddr, SocketAddr)> = t
            .learned
            .iter()
            .filter(|(m, _)| !t.statics.contains_key(*m))
            .map(|(m, e)| (*m, e.vtep))
            .collect();
        learned.sort_by_key(|(m, _)| m.0);
        statics.extend(learned);
        statics
    }

    /// Remove learned entries last seen more than [`TableConfig::ageing_ms`] before
    /// `now_ms`; how many were removed.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let age = self.config.ageing_ms;
        let mut removed = 0;
        for t in self.vnis.values_mut() {
            let before = t.learned.len();
            t.learned
                .retain(|_, e| now_ms.saturating_sub(e.last_seen_ms) <= age);
            removed += before - t.learned.len();
        }
        removed
    }

    /// The counters of `vni` (`None`: unknown VNI).
    pub fn counters(&self, vni: Vni) -> Option<VniCounters> {
        self.vnis.get(&vni).map(|t| VniCounters {
            peers: t.flood.len(),
            statics: t.statics.len(),
            learned: t.learned.len(),
            learn_refused: t.learn_refused,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vni(n: u32) -> Vni {
        Vni::new(n).unwrap()
    }
    fn mac(n: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, n])
    }
    fn vtep(n: u8) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, n], 4789))
    }

    #[test]
    fn unknown_unicast_broadcast_and_multicast_flood() {
        let mut t = VtepTable::new(TableConfig::default());
        t.set_peers(vni(1), &[vtep(1), vtep(2), vtep(1)]);
        assert_eq!(t.peers(vni(1)), &[vtep(1), vtep(2)]);
        let all = Dest::Flood(&[vtep(1), vtep(2)]);
        assert_eq!(t.lookup(vni(1), mac(9)), all);
        assert_eq!(t.lookup(vni(1), MacAddr::BROADCAST), all);
        assert_eq!(
            t.lookup(vni(1), MacAddr([0x33, 0x33, 0, 0, 0, 1])),
            all,
            "IPv6 multicast"
        );
        assert_eq!(t.lookup(vni(2), mac(9)), Dest::Flood(&[]), "unknown VNI");
    }

    #[test]
    fn learned_then_static_wins_and_vnis_are_separate() {
        let mut t = VtepTable::new(TableConfig::default());
        t.set_peers(vni(1), &[vtep(1), vtep(2)]);
        t.add_vni(vni(2));
        assert_eq!(t.learn(vni(1), mac(5), vtep(2), 0), Learned::New);
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(2)));
        assert_eq!(t.lookup(vni(2), mac(5)), Dest::Flood(&[]));
        assert_eq!(t.learn(vni(1), mac(5), vtep(2), 5), Learned::Refreshed);
        assert_eq!(t.learn(vni(1), mac(5), vtep(1), 6), Learned::Moved);
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(1)));

        t.set_statics(vni(1), &[(mac(5), vtep(3))]);
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(3)));
        assert_eq!(t.learn(vni(1), mac(5), vtep(1), 7), Learned::Ignored);
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(3)));

        assert_eq!(
            t.learn(vni(1), MacAddr::BROADCAST, vtep(1), 7),
            Learned::Ignored
        );
        assert_eq!(t.learn(vni(1), MacAddr::ZERO, vtep(1), 7), Learned::Ignored);
        assert_eq!(t.learn(vni(9), mac(1), vtep(1), 7), Learned::Ignored);
        let c = t.counters(vni(1)).unwrap();
        assert_eq!((c.peers, c.statics, c.learned), (2, 1, 0));
        t.remove_vni(vni(1));
        assert_eq!(t.counters(vni(1)), None);
    }

    #[test]
    fn ageing_with_time_passed_in() {
        let mut t = VtepTable::new(TableConfig {
            max_learned_per_vni: 10,
            ageing_ms: 1000,
        });
        t.add_vni(vni(1));
        t.learn(vni(1), mac(1), vtep(1), 0);
        t.learn(vni(1), mac(2), vtep(1), 500);
        assert_eq!(t.expire(1000), 0, "exactly the age is kept");
        assert_eq!(t.expire(1001), 1);
        assert_eq!(t.lookup(vni(1), mac(1)), Dest::Flood(&[]));
        assert_eq!(t.lookup(vni(1), mac(2)), Dest::Unicast(vtep(1)));
        assert_eq!(t.expire(0), 0, "a clock going backwards removes nothing");
    }

    #[test]
    fn learning_limit_is_counted() {
        let mut t = VtepTable::new(TableConfig {
            max_learned_per_vni: 2,
            ageing_ms: 1000,
        });
        t.add_vni(vni(1));
        t.add_vni(vni(2));
        assert_eq!(t.learn(vni(1), mac(1), vtep(1), 0), Learned::New);
        assert_eq!(t.learn(vni(1), mac(2), vtep(1), 0), Learned::New);
        assert_eq!(t.learn(vni(1), mac(3), vtep(1), 0), Learned::Refused);
        assert_eq!(t.learn(vni(1), mac(3), vtep(1), 0), Learned::Refused);
        assert_eq!(t.learn(vni(1), mac(1), vtep(2), 0), Learned::Moved);
        assert_eq!(t.learn(vni(2), mac(3), vtep(1), 0), Learned::New, "per VNI");
        assert_eq!(t.counters(vni(1)).unwrap().learn_refused, 2);
        assert_eq!(t.counters(vni(2)).unwrap().learn_refused, 0);
    }

    #[test]
    fn peers_and_statics_one_at_a_time() {
        let mut t = VtepTable::new(TableConfig::default());
        t.add_peer(vni(1), vtep(1));
        t.add_peer(vni(1), vtep(2));
        t.add_peer(vni(1), vtep(1));
        assert_eq!(t.peers(vni(1)), &[vtep(1), vtep(2)], "no duplicate");
        t.remove_peer(vni(1), vtep(1));
        assert_eq!(t.peers(vni(1)), &[vtep(2)]);
        t.remove_peer(vni(1), vtep(9));
        t.remove_peer(vni(7), vtep(2));
        assert_eq!(t.peers(vni(1)), &[vtep(2)], "unknown peer or VNI: nothing");
        assert_eq!(t.peers(vni(7)), &[] as &[SocketAddr]);

        assert_eq!(t.learn(vni(1), mac(5), vtep(2), 0), Learned::New);
        t.add_static(vni(1), mac(5), vtep(3));
        t.add_static(vni(1), mac(6), vtep(3));
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(3)));
        assert_eq!(
            t.counters(vni(1)).unwrap().learned,
            0,
            "learned entry dropped"
        );
        t.add_static(vni(1), mac(5), vtep(2));
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(2)), "moved");
        assert!(
            !t.remove_static(vni(1), mac(5), vtep(3)),
            "stale VTEP: kept"
        );
        assert_eq!(t.static_vtep(vni(1), mac(5)), Some(vtep(2)));
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Unicast(vtep(2)));
        assert!(t.remove_static(vni(1), mac(5), vtep(2)));
        assert_eq!(t.lookup(vni(1), mac(5)), Dest::Flood(&[vtep(2)]));
        assert_eq!(
            t.lookup(vni(1), mac(6)),
            Dest::Unicast(vtep(3)),
            "others kept"
        );
        assert!(!t.remove_static(vni(9), mac(6), vtep(3)));
        assert_eq!(t.counters(vni(1)).unwrap().statics, 1);
    }
}
