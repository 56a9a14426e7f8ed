//! `vxlan_gather`: a frame from the switch (virtio-net header + Ethernet frame) into the
//! overlay's gathered transmit (`gather::TcpCut`): the cut, its headers written into a
//! buffer at an offset (`write_headers`), its payload slices (`payload`), and the
//! copying way it must equal, `tapnet_wire::gso::Segmenter::next_into` behind a VXLAN
//! header (`header::encap`).
//!
//! Input: a config byte (bits 0-4: the offset `write_headers` starts at; bit 6: a pad
//! length follows the VNI; bit 7: the header buffer is already longer than needed, else
//! it grows), three bytes of VNI (little-endian, 24 bits), with bit 6 a u16 LE `pad`,
//! then the 10-byte virtio-net header and the Ethernet frame (the rest of the input),
//! to which `pad * 17 / 16` pattern bytes are appended: a small input can describe a
//! super-frame near the 64 KiB limits of the IP length fields.
//!
//! Asserted (besides "no panic"): `TcpCut::new` accepts exactly the TSO super-frames
//! (`GSO_TCPV4`/`GSO_TCPV6`, ECN allowed) that `Segmenter::with_header` accepts and cuts
//! into two or more segments, as many as the segmenter; `header_len` is the VXLAN header
//! plus the frame's Ethernet/IP/TCP headers (`gso::Headers::parse`), `stride` that plus
//! the GSO size (`mss`); `write_headers` returns `at + len * header_len`, leaves the
//! bytes before `at` and after its end alone; header `i` followed by `payload(i)` is,
//! byte for byte, the VXLAN header of the VNI followed by the segmenter's frame `i`;
//! every datagram but the last is `stride()` bytes, the last at most that and more than
//! `header_len()`; the payloads, concatenated, are the frame's TCP payload;
//! `ends_full` is whether that payload is a multiple of the MSS; `dst_mac` is the
//! frame's first 6 bytes; `payload(len())` is empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tapnet_fuzz::Input;
use tapnet_vxlan::gather::TcpCut;
use tapnet_vxlan::header::{self, Vni, VXLAN_HDR_LEN};
use tapnet_wire::gso::{Headers, Segmenter, L4};
use tapnet_wire::vnet::{self, GsoType};

/// What the bytes before `at` and after the headers' end are set to.
const FILL: u8 = 0xee;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let cfg = input.byte();
    let vni_raw = u32::from_le_bytes([input.byte(), input.byte(), input.byte(), 0]);
    let vni = Vni::new(vni_raw).expect("24-bit VNI");
    let pad = if cfg & 0x40 != 0 {
        usize::from(input.u16()) * 17 / 16
    } else {
        0
    };
    let rest = input.bytes(usize::MAX);
    let padded: Vec<u8>;
    let rest = if pad > 0 {
        padded = rest
            .iter()
            .copied()
            .chain((0..pad).map(|i| (i * 7 + i / 251) as u8))
            .collect();
        &padded[..]
    } else {
        rest
    };
    let Ok((hdr, frame)) = vnet::split(rest) else {
        return;
    };

    // The copying way, and whether the cut must exist.
    let tso = matches!(hdr.gso_type(), Some(GsoType::TcpV4 | GsoType::TcpV6));
    let seg = Segmenter::with_header(&hdr, frame).ok();
    let want_cut = tso && seg.as_ref().is_some_and(|s| s.len() >= 2);
    let cut = TcpCut::new(&hdr, frame);
    assert_eq!(
        cut.is_some(),
        want_cut,
        "TcpCut::new accepts exactly multi-segment TSO frames the segmenter accepts"
    );
    let (Some(cut), Some(mut seg)) = (cut, seg) else {
        return;
    };

    let n = cut.len();
    assert_eq!(n, seg.len());
    assert!(n >= 2 && !cut.is_empty());
    let h = Headers::parse(frame, L4::Tcp).expect("the segmenter parsed these headers");
    let mss = usize::from(hdr.gso_size());
    assert_eq!(cut.mss(), mss);
    assert_eq!(cut.header_len(), VXLAN_HDR_LEN + h.payload_off);
    assert_eq!(cut.stride(), cut.header_len() + mss);
    let tcp_payload = &frame[h.payload_off..];
    assert_eq!(cut.ends_full(), tcp_payload.len().is_multiple_of(mss));
    assert_eq!(cut.dst_mac().as_ref(), frame.first_chunk::<6>());
    assert!(cut.payload(n).is_empty());

    // The headers, written at an offset into a buffer that grows or is already long.
    let hl = cut.header_len();
    let at = usize::from(cfg & 0x1f);
    let end = at + n * hl;
    let slack = if cfg & 0x80 != 0 { 7 } else { 0 };
    let mut hb = vec![FILL; if slack > 0 { end + slack } else { at }];
    assert_eq!(cut.write_headers(vni, &mut hb, at), end);
    assert_eq!(hb.len(), end + slack);
    assert!(
        hb[..at].iter().all(|&b| b == FILL),
        "bytes before `at` kept"
    );
    assert!(
        hb[end..].iter().all(|&b| b == FILL),
        "bytes after the end kept"
    );

    // Datagram i: header i + payload i = VXLAN header + the segmenter's frame i.
    let mut seg_buf = vec![0u8; seg.max_frame_len()];
    let mut want = vec![0u8; VXLAN_HDR_LEN + seg.max_frame_len()];
    let mut payloads = Vec::with_capacity(tcp_payload.len());
    for i in 0..n {
        let len = seg
            .next_into(&mut seg_buf)
            .expect("buffer of max_frame_len")
            .expect("as many frames as the cut has");
        let wn = header::encap(vni, &seg_buf[..len], &mut want).expect("encap");
        let head = &hb[at + i * hl..at + (i + 1) * hl];
        let payload = cut.payload(i);
        let got_len = head.len() + payload.len();
        assert_eq!(got_len, wn, "segment {i} of {n}: length");
        assert_eq!(head, &want[..hl], "segment {i} of {n}: headers");
        assert_eq!(payload, &want[hl..wn], "segment {i} of {n}: payload");
        if i + 1 < n {
            assert_eq!(got_len, cut.stride(), "segment {i} of {n}: stride");
        } else {
            assert!(
                got_len <= cut.stride() && got_len > hl,
                "last segment's length"
            );
        }
        payloads.extend_from_slice(payload);
    }
    assert_eq!(seg.next_into(&mut seg_buf), Ok(None));
    assert_eq!(
        payloads, tcp_payload,
        "payloads concatenated = the TCP payload"
    );
});
