//! Encrypted VXLAN: every tunnel datagram sealed with AES-256-GCM.
//!
//! Contract:
//!
//! ```text
//! +--------------+----------+-----------+---------------------------+----------+
//! | VXLAN hdr 8  | key id 4 | nonce 12  | inner Ethernet frame (ct) | tag 16   |
//! +--------------+----------+-----------+---------------------------+----------+
//!  \_____ AAD (authenticated, in clear) _/
//! ```
//!
//! * The VXLAN header stays in clear (the dispatcher demultiplexes by VNI before any
//!   key is known, [`crate::demux`]) but is **authenticated** as associated data with
//!   the key id, so a datagram moved to another VNI, or relabelled with another key
//!   id, fails to open. The inner Ethernet frame is encrypted. [`OVERHEAD`] (32)
//!   bytes are added: the inner MTU of an encrypted network is the underlay MTU − 50
//!   − 32.
//! * [`seal`] and [`open`] are pure functions over a caller-owned buffer holding
//!   VXLAN header + frame (resp. the received datagram), working in place: no
//!   allocation, no clock, no I/O. [`open`] checks the length first and never panics,
//!   on any input; every failure (too short, unknown key id, tag mismatch) is an
//!   [`Error`] and the buffer's content is then unspecified.
//! * The unit is the datagram, never the batch: a UDP GSO/GRO batch of a port
//!   ([`crate::port`], [`crate::udp`]) is sealed and opened datagram by datagram, each
//!   with its own nonce and tag, so the receiver's GRO split and UDP's drops and
//!   reordering never matter.
//! * Nonces never repeat for a key: a [`KeyRing`] draws a random 6-byte salt and a
//!   random 48-bit counter start below 2^47 (from the OS, `ring::rand::SystemRandom`)
//!   when its send key is installed, and increments the counter per datagram; the
//!   nonce is salt ‖ counter (6 + 6 bytes). Two senders sharing a network key (every
//!   host of the network) have the same salt with probability 2^-48 per pair; a
//!   sender that used 2^47 nonces of one key stops sending ([`Error::NoKey`]) rather
//!   than wrap (at 10 M datagrams/s that is 160 days: keys rotate long before,
//!   `tapnetd --cluster-key-rotation`). Key ids are the rotation epoch.
//! * A [`KeyRing`] holds one send key (or none: nothing can be sent, [`Error::NoKey`])
//!   and the keys accepted on receive, by key id. It is filled from a [`KeySet`]
//!   (plain data, what the control plane distributes); [`KeyRing::update`] keeps the
//!   nonce state when the send key did not change.
//! * Replay protection: after a datagram opens, its counter is checked against a
//!   sliding window of [`REPLAY_WINDOW`] (128) counters per sender, a sender being a
//!   (key id, salt) pair: a counter seen before, or older than the window, is refused
//!   ([`Error::Replay`]). Only authenticated datagrams move a window, so a forger
//!   cannot; the windows of keys no longer accepted are dropped on
//!   [`KeyRing::update`], and at most [`MAX_SENDERS`] are kept (beyond that they are
//!   all forgotten, which only weakens replay protection for a moment).
//!
//! Why AES-256-GCM from `ring`: `ring` (BoringSSL's primitives, constant-time,
//! widely audited, used by rustls) is already in the workspace's lock file (via
//! hickory), uses AES-NI and PCLMULQDQ (or ARMv8 crypto) when the CPU has them,
//! which makes AES-GCM the fastest AEAD on servers; it falls back to constant-time
//! software elsewhere. Its `LessSafeKey` takes explicit nonces, which the salt‖counter
//! scheme needs (the datagram carries its nonce: UDP reorders and drops).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

use crate::header::VXLAN_HDR_LEN;

/// Bytes of a key.
pub const KEY_LEN: usize = 32;
/// Bytes of the key id.
pub const KEY_ID_LEN: usize = 4;
/// Bytes of the authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes [`seal`] adds to a datagram: key id, nonce, tag.
pub const OVERHEAD: usize = KEY_ID_LEN + NONCE_LEN + TAG_LEN;
/// Counters a receive window spans.
pub const REPLAY_WINDOW: u64 = 128;
/// Senders a [`KeyRing`] tracks for replay protection.
pub const MAX_SENDERS: usize = 4096;
/// Bytes of the per-sender salt at the start of the nonce.
const SALT_LEN: usize = 6;
/// The counter is 48 bits; a sender stops before it wraps.
const COUNTER_LIMIT: u64 = 1 << 48;
/// Where the ciphertext starts in a sealed datagram.
const CT_AT: usize = VXLAN_HDR_LEN + KEY_ID_LEN + NONCE_LEN;
/// The associated data: VXLAN header and key id.
const AAD_LEN: usize = VXLAN_HDR_LEN + KEY_ID_LEN;

/// Why a datagram could not be sealed or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Shorter than a sealed datagram can be.
    Truncated,
    /// Sealed with a key id this ring does not accept.
    UnknownKey(u32),
    /// The tag does not match: tampered, or another key.
    Auth,
    /// No send key: nothing may leave in clear.
    NoKey,
    /// The buffer has no room for the overhead.
    BufferTooSmall,
    /// Authentic, but seen before or older than the replay window.
    Replay,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("shorter than a sealed VXLAN datagram"),
            Error::UnknownKey(id) => write!(f, "sealed with unknown key id {id}"),
            Error::Auth => f.write_str("authentication failed"),
            Error::NoKey => f.write_str("no send key"),
            Error::BufferTooSmall => f.write_str("no room for the encryption overhead"),
            Error::Replay => f.write_str("replayed or too old"),
        }
    }
}

impl std::error::Error for Error {}

/// One key as the control plane distributes it. `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Its id (the rotation epoch), carried in every datagram it seals.
    pub id: u32,
    /// AES-256 key.
    pub key: [u8; KEY_LEN],
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A network's keys: those accepted on receive, and which one sends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    /// Keys accepted on receive.
    pub keys: Vec<KeyMaterial>,
    /// The id of the key that seals what is sent (one of `keys`); `None`: send nothing.
    pub send: Option<u32>,
}

/// The AEAD key of `k` (AES-256 takes exactly [`KEY_LEN`] bytes: never `None` in practice).
fn aead_key(k: &[u8; KEY_LEN]) -> Option<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, k).ok().map(LessSafeKey::new)
}

/// Seal the datagram at `buf[..len]` (VXLAN header, then the inner frame) in place
/// with `key` (id `key_id`) and `nonce`: the frame moves right by the key id and
/// nonce, the tag follows it. Returns the sealed length, `len + OVERHEAD`.
pub fn seal(
    key: &LessSafeKey,
    key_id: u32,
    nonce: [u8; NONCE_LEN],
    buf: &mut [u8],
    len: usize,
) -> Result<usize, Error> {
    if len < VXLAN_HDR_LEN {
        return Err(Error::Truncated);
    }
    let sealed = len.checked_add(OVERHEAD).ok_or(Error::BufferTooSmall)?;
    let Some(buf) = buf.get_mut(..sealed) else {
        return Err(Error::BufferTooSmall);
    };
    buf.copy_within(VXLAN_HDR_LEN..len, CT_AT);
    buf[VXLAN_HDR_LEN..AAD_LEN].copy_from_slice(&key_id.to_be_bytes());
    buf[AAD_LEN..CT_AT].copy_from_slice(&nonce);
    let (head, rest) = buf.split_at_mut(CT_AT);
    let (plain, tag_out) = rest.split_at_mut(len - VXLAN_HDR_LEN);
    let aad = head.get(..AAD_LEN).unwrap_or_default();
    let tag = key
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), plain)
        .map_err(|_| Error::BufferTooSmall)?;
    tag_out.copy_from_slice(tag.as_ref());
    Ok(sealed)
}

/// The key id of the sealed datagram `datagram`.
pub fn key_id(datagram: &[u8]) -> Result<u32, Error> {
    if datagram.len() < VXLAN_HDR_LEN + OVERHEAD {
        return Err(Error::Truncated);
    }
    let id = datagram
        .get(VXLAN_HDR_LEN..AAD_LEN)
        .and_then(|b| b.try_into().ok())
        .ok_or(Error::Truncated)?;
    Ok(u32::from_be_bytes(id))
}

/// Open the sealed datagram at `buf[..len]` in place with `key`: on success
/// `buf[..n]` (`n` returned, `len - OVERHEAD`) is the VXLAN header and the inner
/// frame in clear. The key id is not checked here ([`KeyRing::open`] picks the key by it).
pub fn open(key: &LessSafeKey, buf: &mut [u8], len: usize) -> Result<usize, Error> {
    if len < VXLAN_HDR_LEN + OVERHEAD || len > buf.len() {
        return Err(Error::Truncated);
    }
    let mut aad = [0u8; AAD_LEN];
    aad.copy_from_slice(buf.get(..AAD_LEN).ok_or(Error::Truncated)?);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(buf.get(AAD_LEN..CT_AT).ok_or(Error::Truncated)?);
    let in_out = buf.get_mut(VXLAN_HDR_LEN..len).ok_or(Error::Truncated)?;
    let plain = key
        .open_within(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            in_out,
            (CT_AT - VXLAN_HDR_LEN)..,
        )
        .map_err(|_| Error::Auth)?;
    Ok(VXLAN_HDR_LEN + plain.len())
}

/// The sending state: key, salt, next counter.
struct Sender {
    id: u32,
    material: [u8; KEY_LEN],
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
    counter: u64,
}

/// A sender's receive window: the highest counter seen and a bitmap of the
/// [`REPLAY_WINDOW`] counters up to it (bit `i`: `top - i` seen).
#[derive(Clone, Copy, Debug)]
struct Window {
    top: u64,
    bits: u128,
}

impl Window {
    /// Whether `seq` is fresh; if so, record it.
    fn admit(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = seq;
            return true;
        }
        let age = self.top - seq;
        if age >= REPLAY_WINDOW || self.bits & (1u128 << age) != 0 {
            return false;
        }
        self.bits |= 1u128 << age;
        true
    }
}

/// A port's keys (see the module docs).
#[derive(Default)]
pub struct KeyRing {
    recv: Vec<(u32, LessSafeKey)>,
    send: Option<Sender>,
    windows: std::collections::HashMap<(u32, [u8; SALT_LEN]), Window>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "recv",
                &self.recv.iter().map(|(id, _)| id).collect::<Vec<_>>(),
            )
            .field("send", &self.send.as_ref().map(|s| s.id))
            .finish()
    }
}

impl KeyRing {
    /// A ring holding `set`.
    pub fn new(set: &KeySet) -> KeyRing {
        let mut ring = KeyRing::default();
        ring.update(set);
        ring
    }

    /// Replace the keys with `set`. The nonce state is kept if the send key is the
    /// same; a new send key gets a fresh random salt and counter start (if the OS
    /// gives no randomness, the ring has no send key: nothing is sent).
    pub fn update(&mut self, set: &KeySet) {
        self.recv = set
            .keys
            .iter()
            .filter_map(|k| Some((k.id, aead_key(&k.key)?)))
            .collect();
        let ids: Vec<u32> = self.recv.iter().map(|(id, _)| *id).collect();
        self.windows.retain(|(id, _), _| ids.contains(id));
        let want = set.send.and_then(|id| set.keys.iter().find(|k| k.id == id));
        let Some(want) = want else {
            self.send = None;
            return;
        };
        if self
            .send
            .as_ref()
            .is_some_and(|s| s.id == want.id && s.material == want.key)
        {
            return;
        }
        let mut seed = [0u8; SALT_LEN + 8];
        let key = aead_key(&want.key);
        let (Some(key), Ok(())) = (key, SystemRandom::new().fill(&mut seed)) else {
            self.send = None;
            return;
        };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&seed[..SALT_LEN]);
        let mut c = [0u8; 8];
        c.copy_from_slice(&seed[SALT_LEN..]);
        self.send = Some(Sender {
            id: want.id,
            material: want.key,
            key,
            salt,
            counter: u64::from_be_bytes(c) % (COUNTER_LIMIT / 2),
        });
    }

    /// The id of the send key.
    pub fn send_id(&self) -> Option<u32> {
        self.send.as_ref().map(|s| s.id)
    }

    /// The ids accepted on receive.
    pub fn recv_ids(&self) -> Vec<u32> {
        self.recv.iter().map(|(id, _)| *id).collect()
    }

    /// [`seal`] `buf[..len]` with the send key and the next nonce.
    pub fn seal(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let s = self.send.as_mut().ok_or(Error::NoKey)?;
        if s.counter >= COUNTER_LIMIT {
            return Err(Error::NoKey);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce[..SALT_LEN].copy_from_slice(&s.salt);
        nonce[SALT_LEN..].copy_from_slice(&s.counter.to_be_bytes()[8 - (NONCE_LEN - SALT_LEN)..]);
        let n = seal(&s.key, s.id, nonce, buf, len)?;
        s.counter = s.counter.wrapping_add(1);
        Ok(n)
    }

    /// [`open`] `buf[..len]` with the receive key its key id names, then check its
    /// counter against the sender's replay window (see the module docs).
    pub fn open(&mut self, buf: &mut [u8], len: usize) -> Result<usize, Error> {
        let id = key_id(buf.get(..len).ok_or(Error::Truncated)?)?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(
            buf.get(AAD_LEN..AAD_LEN + SALT_LEN)
                .ok_or(Error::Truncated)?,
        );
        let mut c = [0u8; 8];
        c[8 - (NONCE_LEN - SALT_LEN)..]
            .copy_from_slice(buf.get(AAD_LEN + SALT_LEN..CT_AT).ok_or(Error::Truncated)?);
        let seq = u64::from_be_bytes(c);
        let key = self
            .recv
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, k)| k)
            .ok_or(Error::UnknownKey(id))?;
        let n = open(key, buf, len)?;
        if let Some(w) = self.windows.get_mut(&(id, salt)) {
            return if w.admit(seq) {
                Ok(n)
            } else {
                Err(Error::Replay)
            };
        }
        if self.windows.len() >= MAX_SENDERS {
            self.windows.clear();
        }
        self.windows
            .insert((id, salt), Window { top: seq, bits: 1 });
        Ok(n)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::header::{emit_header, Vni};

    fn set(ids: &[u32], send: Option<u32>) -> KeySet {
        KeySet {
            keys: ids
                .iter()
                .map(|&id| KeyMaterial {
                    id,
                    key: [id as u8; KEY_LEN],
                })
                .collect(),
            send,
        }
    }

    /// A datagram of `frame_len` inner bytes for VNI 42, in a buffer with room.
    fn datagram(frame_len: usize) -> (Vec<u8>, usize) {
        let mut buf = vec![0u8; VXLAN_HDR_LEN + frame_len + OVERHEAD];
        emit_header(Vni::new(42).unwrap(), &mut buf).unwrap();
        for (i, b) in buf[VXLAN_HDR_LEN..VXLAN_HDR_LEN + frame_len]
            .iter_mut()
            .enumerate()
        {
            *b = (i * 7 + 3) as u8;
        }
        (buf, VXLAN_HDR_LEN + frame_len)
    }

    #[test]
    fn round_trip_hides_the_frame() {
        for frame_len in [0, 14, 64, 1400, 9000] {
            let (mut buf, len) = datagram(frame_len);
            let clear = buf[..len].to_vec();
            let mut tx = KeyRing::new(&set(&[1], Some(1)));
            let mut rx = KeyRing::new(&set(&[1], None));
            let n = tx.seal(&mut buf, len).unwrap();
            assert_eq!(n, len + OVERHEAD);
            assert_eq!(
                buf[..VXLAN_HDR_LEN],
                clear[..VXLAN_HDR_LEN],
                "header in clear"
            );
            assert_eq!(key_id(&buf[..n]).unwrap(), 1);
            if frame_len >= 16 {
                let body = &clear[VXLAN_HDR_LEN..];
                assert!(
                    !buf[..n].windows(16).any(|w| w == &body[..16]),
                    "plaintext visible"
                );
            }
            let m = rx.open(&mut buf, n).unwrap();
            assert_eq!(&buf[..m], &clear[..], "frame_len {frame_len}");
        }
    }

    #[test]
    fn nonces_do_not_repeat() {
        let mut tx = KeyRing::new(&set(&[1], Some(1)));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (mut buf, len) = datagram(64);
            let n = tx.seal(&mut buf, len).unwrap();
            assert!(seen.insert(buf[AAD_LEN..CT_AT].to_vec()));
            assert_eq!(n, len + OVERHEAD);
        }
        // Another ring with the same key starts elsewhere.
        let mut other = KeyRing::new(&set(&[1], Some(1)));
        let (mut buf, len) = datagram(64);
        other.seal(&mut buf, len).unwrap();
        assert!(seen.insert(buf[AAD_LEN..CT_AT].to_vec()));
        // Same send key again: the counter continues.
        let before = tx.send.as_ref().unwrap().counter;
        tx.update(&set(&[1, 2], Some(1)));
        assert_eq!(tx.send.as_ref().unwrap().counter, before);
    }

    #[test]
    fn tampering_anywhere_fails() {
        let (mut buf, len) = datagram(200);
        let mut tx = KeyRing::new(&set(&[5], Some(5)));
        let n = tx.seal(&mut buf, len).unwrap();
        let mut rx = KeyRing::new(&set(&[5], None));
        for i in 0..n {
            let mut t = buf.clone();
            t[i] ^= 0x01;
            let r = rx.open(&mut t, n);
            // The key id bytes: another (unknown) id; elsewhere: a tag mismatch.
            if (VXLAN_HDR_LEN..AAD_LEN).contains(&i) {
                assert!(matches!(r, Err(Error::UnknownKey(_))), "byte {i}: {r:?}");
            } else {
                assert_eq!(r, Err(Error::Auth), "byte {i}");
            }
        }
        // Another VNI (the header is authenticated).
        let mut t = buf.clone();
        emit_header(Vni::new(43).unwrap(), &mut t).unwrap();
        assert_eq!(rx.open(&mut t, n), Err(Error::Auth));
        let mut ok = buf.clone();
        assert!(rx.open(&mut ok, n).is_ok());
    }

    #[test]
    fn wrong_key_unknown_key_truncated_no_key() {
        let (mut buf, len) = datagram(100);
        let mut tx = KeyRing::new(&set(&[1], Some(1)));
        let n = tx.seal(&mut buf, len).unwrap();
        // Same id, other key bytes.
        let mut wrong = KeyRing::new(&KeySet {
            keys: vec![KeyMaterial {
                id: 1,
                key: [9; KEY_LEN],
            }],
            send: None,
        });
        assert_eq!(wrong.open(&mut buf.clone(), n), Err(Error::Auth));
        let mut other = KeyRing::new(&set(&[2, 3], Some(2)));
        assert_eq!(other.open(&mut buf.clone(), n), Err(Error::UnknownKey(1)));
        let mut rx = KeyRing::new(&set(&[1], None));
        for cut in 0..n {
            let r = rx.open(&mut buf.clone(), cut);
            assert!(r.is_err(), "cut at {cut}");
        }
        assert_eq!(rx.open(&mut buf.clone(), n + 1), Err(Error::Truncated));
        let mut none = KeyRing::new(&set(&[1], None));
        assert_eq!(none.seal(&mut buf, len), Err(Error::NoKey));
        let mut small = vec![0u8; len];
        assert_eq!(tx.seal(&mut small, len), Err(Error::BufferTooSmall));
        // The send id must be one of the keys.
        assert_eq!(KeyRing::new(&set(&[1], Some(2))).send_id(), None);
    }

    #[test]
    fn rotation_keeps_old_key_for_receive() {
        let mut a = KeyRing::new(&set(&[1], Some(1)));
        let (mut buf, len) = datagram(64);
        let first = a.seal(&mut buf, len).unwrap();
        let (mut old_dgram, len) = datagram(64);
        let old = a.seal(&mut old_dgram, len).unwrap();
        // Step 1: the new key is accepted, the old one still sends.
        let mut b = KeyRing::new(&set(&[1, 2], Some(1)));
        assert!(b.open(&mut buf, first).is_ok());
        // Step 2: the new key sends; the old is still accepted.
        a.update(&set(&[1, 2], Some(2)));
        assert_eq!(a.send_id(), Some(2));
        let (mut buf, len) = datagram(64);
        let n = a.seal(&mut buf, len).unwrap();
        assert!(b.open(&mut buf, n).is_ok());
        assert!(b.open(&mut old_dgram.clone(), old).is_ok());
        // Next rotation drops key 1.
        let mut c = KeyRing::new(&set(&[2, 3], Some(2)));
        assert_eq!(
            c.open(&mut old_dgram.clone(), old),
            Err(Error::UnknownKey(1))
        );
    }

    #[test]
    fn replays_are_refused_reordering_within_the_window_is_not() {
        let mut tx = KeyRing::new(&set(&[1], Some(1)));
        let mut rx = KeyRing::new(&set(&[1], None));
        let sealed: Vec<(Vec<u8>, usize)> = (0..300)
            .map(|_| {
                let (mut buf, len) = datagram(64);
                let n = tx.seal(&mut buf, len).unwrap();
                (buf, n)
            })
            .collect();
        let open = |rx: &mut KeyRing, i: usize| rx.open(&mut sealed[i].0.clone(), sealed[i].1);
        assert!(open(&mut rx, 10).is_ok());
        assert_eq!(open(&mut rx, 10), Err(Error::Replay));
        // Late but within the window: accepted once.
        for i in [5, 9, 0] {
            assert!(open(&mut rx, i).is_ok(), "{i}");
            assert_eq!(open(&mut rx, i), Err(Error::Replay), "{i}");
        }
        assert!(open(&mut rx, 200).is_ok());
        // 200 - 10 > 128: too old now, even if never seen.
        assert_eq!(open(&mut rx, 11), Err(Error::Replay));
        assert!(open(&mut rx, 100).is_ok(), "200 - 100 < 128");
        assert!(open(&mut rx, 299).is_ok());
        // A tampered copy of a fresh datagram does not move the window.
        let (mut t, n) = sealed[298].clone();
        t[n - 1] ^= 1;
        assert_eq!(rx.open(&mut t, n), Err(Error::Auth));
        assert!(open(&mut rx, 298).is_ok());
        // Another sender with the same key has its own window.
        let mut tx2 = KeyRing::new(&set(&[1], Some(1)));
        let (mut buf, len) = datagram(64);
        let n = tx2.seal(&mut buf, len).unwrap();
        assert!(rx.open(&mut buf, n).is_ok());
        // Retiring the key forgets its windows.
        rx.update(&set(&[2], None));
        assert!(rx.windows.is_empty());
    }

    #[test]
    fn window_admits_each_counter_once() {
        let mut w = Window { top: 1000, bits: 1 };
        assert!(!w.admit(1000));
        assert!(w.admit(1001) && !w.admit(1001));
        assert!(w.admit(999) && !w.admit(999));
        assert!(!w.admit(1001 - REPLAY_WINDOW));
        assert!(w.admit(1001 - REPLAY_WINDOW + 1));
        assert!(w.admit(u64::MAX >> 16));
        assert!(!w.admit(1001));
    }

    #[test]
    fn random_input_never_panics_nor_opens() {
        let mut rx = KeyRing::new(&set(&[0, 1, 7], None));
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut buf: Vec<u8> = (0..len + (next() % 3) as usize)
                .map(|_| next() as u8)
                .collect();
            // Often a known key id, so the tag check is what refuses it.
            if len >= AAD_LEN && next() % 2 == 0 {
                buf[VXLAN_HDR_LEN..AAD_LEN].copy_from_slice(&1u32.to_be_bytes());
            }
            let claimed = (next() as usize) % (buf.len() + 2);
            assert!(rx.open(&mut buf, claimed).is_err());
        }
    }
}
