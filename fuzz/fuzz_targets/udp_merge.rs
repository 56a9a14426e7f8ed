//! `udp_merge`: batches of frames (virtio-net header + Ethernet frame) into
//! `tapnet_wire::uso::plan`, and every run of two or more into `uso::build`, whose
//! super-frame `tapnet_wire::gso::Segmenter` (the kernel's part) cuts back.
//!
//! Input: a config byte (bit 0: IPv4 may be merged; bit 1: IPv6), then records, one
//! frame each: with tag bit 0 clear the body is the frame; with it set, the frame is the
//! previous one with its last `body.len()` bytes replaced by the body (same length, so a
//! datagram with a partial checksum stays a candidate: runs of one flow come easily).
//!
//! Asserted (besides "no panic"): the runs cover every frame once, in order, each 1 to
//! `MAX_SEGMENTS` long; a run of two or more is of one enabled family, `build` merges it
//! (appending after what the buffer held, which it leaves alone) into a super-frame the
//! segmenter accepts and cuts into exactly as many datagrams, each with its frame's
//! UDP payload, the first frame's Ethernet header and each frame's addresses and ports;
//! `build` of a single frame appends nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapnet_fuzz::Input;
use tapnet_wire::gso::Segmenter;
use tapnet_wire::uso::{build, plan, Families, Run, MAX_SEGMENTS};
use tapnet_wire::vnet::VNET_HDR_LEN;

const ETH: usize = 14;
/// What `out` holds before `build` appends.
const FILL: [u8; 3] = [0xee; 3];

/// The IP header length of a frame (by its ethertype), or `None`.
fn ip_len(frame: &[u8]) -> Option<usize> {
    match frame.get(VNET_HDR_LEN + 12..VNET_HDR_LEN + 14)? {
        [0x08, 0x00] => Some(20),
        [0x86, 0xdd] => Some(40),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.byte();
    let families = Families {
        v4: cfg & 1 != 0,
        v6: cfg & 2 != 0,
    };
    let mut frames: Vec<Vec<u8>> = Vec::new();
    while let Some((tag, body)) = input.record() {
        if frames.len() >= 200 {
            break;
        }
        let frame = match (tag & 1, frames.last()) {
            (1, Some(prev)) if body.len() <= prev.len() => {
                let mut f = prev.clone();
                let at = f.len() - body.len();
                f[at..].copy_from_slice(body);
                f
            }
            _ => body.to_vec(),
        };
        frames.push(frame);
    }
    let mut runs: Vec<Run> = Vec::new();
    plan(frames.iter().map(Vec::as_slice), families, &mut runs);
    let mut next = 0;
    for run in &runs {
        assert_eq!(run.start, next, "runs leave a gap or overlap: {runs:?}");
        assert!((1..=MAX_SEGMENTS).contains(&run.len), "{run:?}");
        next += run.len;
    }
    assert_eq!(next, frames.len(), "runs do not cover the batch");

    for run in &runs {
        let these = &frames[run.start..run.start + run.len];
        let mut out = FILL.to_vec();
        let merged = build(these.iter().map(Vec::as_slice), &mut out);
        if run.len == 1 {
            assert_eq!(merged, None, "build merged a single frame");
            assert_eq!(out, FILL, "a refused build changed the buffer");
            continue;
        }
        let first = &these[0];
        let ip = ip_len(first).expect("a run is IP");
        assert!(
            if ip == 20 { families.v4 } else { families.v6 },
            "a family that may not be merged was"
        );
        let range = merged.expect("plan's run was not merged by build");
        assert_eq!(range.start, FILL.len());
        assert_eq!(out[..FILL.len()], FILL, "build wrote before its range");
        assert_eq!(range.end, out.len());
        let mut seg = Segmenter::new(&out[range]).expect("the segmenter refused a super-frame");
        let hdrs = ETH + ip + 8;
        let mut buf = vec![0u8; seg.max_frame_len()];
        for (i, f) in these.iter().enumerate() {
            let n = seg
                .next_into(&mut buf)
                .expect("segment")
                .unwrap_or_else(|| panic!("{} datagrams merged, {i} cut back", these.len()));
            let d = &buf[..n];
            let orig = &f[VNET_HDR_LEN..];
            assert_eq!(d[hdrs..], orig[hdrs..], "datagram {i}: payload");
            assert_eq!(d[..ETH], first[VNET_HDR_LEN..VNET_HDR_LEN + ETH], "datagram {i}: Ethernet");
            let addrs = if ip == 20 { ETH + 12..ETH + 20 } else { ETH + 8..ETH + 40 };
            assert_eq!(d[addrs.clone()], orig[addrs], "datagram {i}: addresses");
            assert_eq!(d[ETH + ip..ETH + ip + 4], orig[ETH + ip..ETH + ip + 4], "datagram {i}: ports");
        }
        assert_eq!(seg.next_len(), None, "more datagrams cut back than merged");
    }
});
