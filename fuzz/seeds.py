#!/usr/bin/env python3
"""Write the seed corpora of tapnet's fuzz targets: real frames (ARP, IPv4/IPv6
UDP/TCP/ICMP, NDP, DNS queries, GSO and TSO super-frames), VXLAN datagrams (clear and
AES-256-GCM sealed) and API bodies from the tests, in each target's input format
(see fuzz/src/lib.rs and the doc comment of each target).

Usage: python3 fuzz/seeds.py [OUT_DIR]   (default: fuzz/corpus next to this file)
Then minimize: cargo +nightly fuzz cmin -s none TARGET corpus/TARGET
"""
import hashlib
import json
import os
import struct
import sys

GW_MAC = bytes([0x02, 0x42, 0x0A, 0x00, 0x00, 0x01])
BCAST = b"\xff" * 6
ZERO_HDR = bytes(10)
VNI = 4242
KEY = bytes([0x5A]) * 32
KEY_ID = 7


def ep_mac(i):
    return bytes([0x02, 0x42, 0x0A, 0, 0, 10 + i])


def v4(*o):
    return bytes(o)


GW4 = v4(10, 0, 0, 1)


def ep4(i):
    return v4(10, 0, 0, 10 + i)


def v6(last, prefix=b"\xfd\x00" + bytes(12)):
    return prefix + struct.pack("!H", last)


GW6 = v6(1)


def ep6(i):
    return v6(10 + i)


def ll6(i):
    return b"\xfe\x80" + bytes(12) + struct.pack("!H", 0x100 + i)


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def eth(dst, src, etype, payload):
    return dst + src + struct.pack("!H", etype) + payload


def ipv4(src, dst, proto, payload, ident=1):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000, 64, proto, 0, src, dst)
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def ipv6(src, dst, nh, payload, hop=64):
    return struct.pack("!IHBB", 0x60000000, len(payload), nh, hop) + src + dst + payload


def pseudo(src, dst, proto, length):
    if len(src) == 4:
        return src + dst + struct.pack("!BBH", 0, proto, length)
    return src + dst + struct.pack("!IxxxB", length, proto)


def udp(src, dst, sport, dport, payload):
    h = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
    c = csum(pseudo(src, dst, 17, 8 + len(payload)) + h + payload) or 0xFFFF
    return h[:6] + struct.pack("!H", c) + payload


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b"", opts=b""):
    off = (20 + len(opts)) // 4
    h = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, off << 4, flags, 65535, 0, 0) + opts
    c = csum(pseudo(src, dst, 6, len(h) + len(payload)) + h + payload)
    return h[:16] + struct.pack("!H", c) + h[18:] + payload


def icmp4_echo(ident, seq, data=b"ping"):
    h = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + data
    return h[:2] + struct.pack("!H", csum(h)) + h[4:]


def icmp6(src, dst, typ, code, body):
    h = struct.pack("!BBH", typ, code, 0) + body
    c = csum(pseudo(src, dst, 58, len(h)) + h)
    return h[:2] + struct.pack("!H", c) + h[4:]


def arp(op, sha, spa, tha, tpa):
    return struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + sha + spa + tha + tpa


def dns_query(name, qtype=1, ident=0x1234, rd=True):
    q = struct.pack("!HHHHHH", ident, 0x0100 if rd else 0, 1, 0, 0, 0)
    for label in name.split("."):
        if label:
            q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


def dns_answer(query, ip, ident=None):
    """A response to `query` with one A record (the upstream's answer)."""
    q = bytearray(query)
    if ident is not None:
        q[0:2] = struct.pack("!H", ident)
    q[2:4] = struct.pack("!H", 0x8180)
    q[6:8] = struct.pack("!H", 1)
    return bytes(q) + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ip


MSS_OPT = struct.pack("!BBH", 2, 4, 1460)


def frames(i=1):
    """Ethernet frames a sandbox on port i sends."""
    m, a4, a6 = ep_mac(i), ep4(i), ep6(i)
    out = [
        eth(BCAST, m, 0x0806, arp(1, m, a4, bytes(6), GW4)),
        eth(BCAST, m, 0x0806, arp(1, m, bytes(4), bytes(6), a4)),  # RFC 5227 probe
        eth(BCAST, m, 0x0806, arp(1, m, a4, bytes(6), ep4(i % 4 + 1))),
        eth(GW_MAC, m, 0x0806, arp(2, m, a4, GW_MAC, GW4)),
        eth(GW_MAC, m, 0x0800, ipv4(a4, GW4, 1, icmp4_echo(7, 1))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, v4(1, 1, 1, 1), 1, icmp4_echo(8, 2, b"x" * 56))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, GW4, 17, udp(a4, GW4, 40000, 53, dns_query("ep2")))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, GW4, 17, udp(a4, GW4, 40001, 53, dns_query("example.com")))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, GW4, 17, udp(a4, GW4, 40002, 53, dns_query("11.0.0.10.in-addr.arpa", 12)))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, v4(8, 8, 8, 8), 17, udp(a4, v4(8, 8, 8, 8), 40003, 53, dns_query("example.org")))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, v4(93, 184, 216, 34), 6, tcp(a4, v4(93, 184, 216, 34), 41000, 80, 1000, 0, 0x02, opts=MSS_OPT))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, v4(93, 184, 216, 34), 6, tcp(a4, v4(93, 184, 216, 34), 41000, 80, 1001, 1, 0x18, b"GET / HTTP/1.0\r\n\r\n"))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, GW4, 6, tcp(a4, GW4, 41001, 53, 5000, 0, 0x02, opts=MSS_OPT))),
        eth(GW_MAC, m, 0x0800, ipv4(a4, v4(192, 168, 1, 1), 17, udp(a4, v4(192, 168, 1, 1), 5000, 5001, b"hello"))),
        eth(ep_mac(i % 4 + 1), m, 0x0800, ipv4(a4, ep4(i % 4 + 1), 17, udp(a4, ep4(i % 4 + 1), 5000, 5001, b"peer"))),
        eth(v4(0x01, 0x00, 0x5E, 0, 0, 0xFB) + b"", m, 0x0800, ipv4(a4, v4(224, 0, 0, 251), 17, udp(a4, v4(224, 0, 0, 251), 5353, 5353, b"mdns"))),
        # NDP: solicitation of the gateway to its solicited-node group, from a global and a link-local address.
        eth(b"\x33\x33\xff\x00\x00\x01", m, 0x86DD, ipv6(a6, b"\xff\x02" + bytes(9) + b"\x01\xff\x00\x00\x01", 58,
            icmp6(a6, b"\xff\x02" + bytes(9) + b"\x01\xff\x00\x00\x01", 135, 0, bytes(4) + GW6 + b"\x01\x01" + m), hop=255)),
        eth(b"\x33\x33\xff\x00\x00\x01", m, 0x86DD, ipv6(ll6(i), b"\xff\x02" + bytes(9) + b"\x01\xff\x00\x00\x01", 58,
            icmp6(ll6(i), b"\xff\x02" + bytes(9) + b"\x01\xff\x00\x00\x01", 135, 0, bytes(4) + GW6 + b"\x01\x01" + m), hop=255)),
        eth(GW_MAC, m, 0x86DD, ipv6(a6, GW6, 58, icmp6(a6, GW6, 128, 0, struct.pack("!HH", 9, 1) + b"ping6"))),
        eth(GW_MAC, m, 0x86DD, ipv6(a6, GW6, 17, udp(a6, GW6, 40010, 53, dns_query("ep3", 28)))),
        eth(GW_MAC, m, 0x86DD, ipv6(a6, v6(1, b"\x20\x01\x0d\xb8" + bytes(10)), 6,
            tcp(a6, v6(1, b"\x20\x01\x0d\xb8" + bytes(10)), 42000, 443, 7, 0, 0x02, opts=MSS_OPT))),
        eth(GW_MAC, m, 0x86DD, ipv6(a6, v6(1, b"\x20\x01\x0d\xb8" + bytes(10)), 17,
            udp(a6, v6(1, b"\x20\x01\x0d\xb8" + bytes(10)), 42001, 123, b"\x23" + bytes(47)))),
        # 802.1Q-tagged, and an unknown ethertype.
        eth(GW_MAC, m, 0x8100, struct.pack("!HH", 10, 0x0800) + ipv4(a4, GW4, 1, icmp4_echo(1, 1))),
        eth(BCAST, m, 0x88CC, b"\x02\x07\x04" + m + bytes(40)),
    ]
    return out


def gso_tcpv4(i=1, segs=3, mss=1000):
    """A GSO_TCPV4 super-frame with NEEDS_CSUM, as a tap hands it (partial checksum)."""
    m, a4, dst = ep_mac(i), ep4(i), v4(93, 184, 216, 34)
    payload = bytes((k * 7) & 0xFF for k in range(segs * mss))
    t = tcp(a4, dst, 41000, 80, 2000, 1, 0x10, payload)
    # The checksum field holds the pseudo-header sum (partial).
    ps = (~csum(pseudo(a4, dst, 6, len(t)))) & 0xFFFF
    t = t[:16] + struct.pack("!H", ps) + t[18:]
    f = eth(GW_MAC, m, 0x0800, ipv4(a4, dst, 6, t))
    # flags NEEDS_CSUM, gso TCPV4, hdr_len, gso_size, csum_start, csum_offset: the 10-byte
    # header tapnet's ports use (no num_buffers)
    hdr = struct.pack("<BBHHHH", 1, 1, 54, mss, 34, 16)
    return hdr + f


def tso(v6_=False, payload_len=250, mss=100, flags=0x19, ecn=False, opts=b""):
    """A TSO super-frame (GSO_TCPV4/GSO_TCPV6, ECN bit if `ecn`) with NEEDS_CSUM, as a
    tap hands it: one TCP header (`flags` as sent: FIN/PSH belong on the last segment,
    CWR on the first), the partial (pseudo-header) checksum, `payload_len` bytes."""
    m, dst_mac = ep_mac(1), ep_mac(2)
    if v6_:
        src, dst, etype, ip_len = ep6(1), ep6(2), 0x86DD, 40
    else:
        src, dst, etype, ip_len = ep4(1), ep4(2), 0x0800, 20
    payload = bytes((k * 7 + k // 251) & 0xFF for k in range(payload_len))
    t = tcp(src, dst, 44000, 5201, 0xFFFFFF00, 77, flags, payload, opts)
    ps = (~csum(pseudo(src, dst, 6, len(t)))) & 0xFFFF
    t = t[:16] + struct.pack("!H", ps) + t[18:]
    ip = ipv6(src, dst, 6, t) if v6_ else ipv4(src, dst, 6, t, ident=0xFFFE)
    f = eth(dst_mac, m, etype, ip)
    gso = (4 if v6_ else 1) | (0x80 if ecn else 0)
    l4 = 14 + ip_len
    # flags NEEDS_CSUM, gso type, hdr_len, gso_size, csum_start, csum_offset (10 bytes:
    # tapnet's ports use the header without num_buffers).
    hdr = struct.pack("<BBHHHH", 1, gso, l4 + 20 + len(opts), mss, l4, 16)
    return hdr + f


def vnet(f):
    return ZERO_HDR + f


def rec(tag, body):
    return bytes([tag]) + struct.pack("<H", min(len(body), 65535)) + body[:65535]


def vxlan(inner, vni=VNI, flags=0x08):
    return bytes([flags, 0, 0, 0]) + struct.pack("!I", vni << 8) + inner


def tcp_segments(n=4, mss=200, flags=0x10):
    a, b = ep4(1), ep4(2)
    out = []
    for k in range(n):
        t = tcp(a, b, 43000, 8080, 10000 + k * mss, 1, flags, bytes([k]) * mss)
        out.append(eth(ep_mac(2), ep_mac(1), 0x0800, ipv4(a, b, 6, t, ident=100 + k)))
    return out


def seal(dg, counter, salt=b"\x01\x02\x03\x04\x05\x06"):
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = salt + counter.to_bytes(6, "big")
    aad = dg[:8] + struct.pack("!I", KEY_ID)
    ct = AESGCM(KEY).encrypt(nonce, dg[8:], aad)
    return aad + nonce + ct


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name + "-" + hashlib.sha1(data).hexdigest()[:12]), "wb") as f:
        f.write(data)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus")
    fs = {i: frames(i) for i in range(1, 5)}
    gso = gso_tcpv4()

    # switch_decide: config byte, then frames from several ports (tag: port << 3).
    for cfg in (0x01, 0x03, 0x06, 0x07):
        for k in range(len(fs[1])):
            data = bytes([cfg])
            for p in (1, 2, 3, 4):
                data += rec(p << 3, vnet(fs[p][k]))
            data += rec(0 << 3, vnet(eth(ep_mac(1), GW_MAC, 0x0800, ipv4(GW4, ep4(1), 1, icmp4_echo(1, 1)))))
            data += rec(5, struct.pack("<H", 700)) + rec(6, b"") + rec(1 << 3, vnet(fs[1][k]))
            data += rec((3 << 3) | 7, b"")
            write(out, "switch_decide", "%02x-%02d" % (cfg, k), data)
    write(out, "switch_decide", "gso", b"\x01" + rec(1 << 3, gso))

    # gateway_classify: config byte, then datagrams (tag 0: ingest, 1: offloaded) and IP packets (2).
    for cfg in (0x01, 0x03, 0x05, 0x09, 0x0B):
        for k, f in enumerate(fs[1]):
            data = bytes([cfg]) + rec(0, vnet(fs[2][0])) + rec(k & 1, vnet(f))
            data += rec(2, ipv4(GW4, ep4(2), 17, udp(GW4, ep4(2), 53, 40000, b"reply")))
            data += rec(2, ipv4(GW4, ep4(3), 17, udp(GW4, ep4(3), 53, 40000, b"queued")))
            data += rec(0, vnet(fs[3][0]))
            write(out, "gateway_classify", "%02x-%02d" % (cfg, k), data)
        write(out, "gateway_classify", "%02x-gso" % cfg, bytes([cfg]) + rec(0, gso) + rec(1, gso))

    # dns_query: queries (tag 0), upstream answers (1), time (2), name table changes (3, 7).
    queries = [
        dns_query("ep2"), dns_query("web"), dns_query("WEB.", 28), dns_query("db", 28),
        dns_query("cache", 28), dns_query("web", 16), dns_query("nosuch"),
        dns_query("x.tapnet.internal"), dns_query("example.com"), dns_query("example.com", 28, rd=False),
        dns_query("10.0.0.10.in-addr.arpa", 12), dns_query("99.0.0.10.in-addr.arpa", 12),
        dns_query("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", 12),
        dns_query("8.8.8.8.in-addr.arpa", 12),
    ]
    for k, q in enumerate(queries):
        data = rec(0, q) + rec(1, dns_answer(q, v4(93, 184, 216, 34), ident=0))
        data += rec(0, q) + rec(2, b"\x06") + rec(2, b"\x06") + rec(3, b"newname") + rec(0, dns_query("newname"))
        data += rec(7, b"newname") + rec(0, dns_query("newname"))
        write(out, "dns_query", "%02d" % k, data)

    # vxlan_packet: config byte, then batches (tag 0: u16 stride + datagrams), seal/open (1),
    # suppression (2), nonce-chosen seals (3, 7).
    segs = tcp_segments()
    stride = len(vxlan(segs[0]))
    batch = b"".join(vxlan(s) for s in segs)
    arp_q = eth(BCAST, ep_mac(1), 0x0806, arp(1, ep_mac(1), ep4(1), bytes(6), v4(10, 0, 0, 20)))
    t20 = v6(0x20)
    snm = b"\xff\x02" + bytes(9) + b"\x01\xff\x00\x00\x20"
    ns = eth(b"\x33\x33\xff\x00\x00\x20", ep_mac(1), 0x86DD,
             ipv6(ep6(1), snm, 58, icmp6(ep6(1), snm, 135, 0, bytes(4) + t20 + b"\x01\x01" + ep_mac(1)), hop=255))
    for cfg in (0x00, 0x02):
        write(out, "vxlan_packet", "%02x-merge" % cfg, bytes([cfg]) + rec(0, struct.pack("<H", stride) + batch))
        mixed = vxlan(segs[0]) + vxlan(segs[1], vni=7) + vxlan(segs[2]) + b"\x00" * 4
        write(out, "vxlan_packet", "%02x-mixed" % cfg, bytes([cfg]) + rec(0, struct.pack("<H", stride) + mixed))
        for k, f in enumerate(fs[1][:12]):
            write(out, "vxlan_packet", "%02x-one-%02d" % (cfg, k), bytes([cfg]) + rec(0, b"\0\0" + vxlan(f)))
        write(out, "vxlan_packet", "%02x-supp" % cfg, bytes([cfg]) + rec(2, arp_q) + rec(2, ns) + rec(1, vxlan(fs[1][0])))
        write(out, "vxlan_packet", "%02x-nonce" % cfg, bytes([cfg]) + rec(3, b"\x01" * 6 + b"\0" * 5 + b"\x05" + vxlan(fs[1][0]))
              + rec(7, b"\x01" * 6 + b"\0" * 5 + b"\x04" + vxlan(fs[1][1])) + rec(3, b"\x01" * 6 + b"\0" * 5 + b"\xff" + vxlan(fs[1][1])))
    try:
        sealed = [seal(vxlan(s), 1000 + k) for k, s in enumerate(segs)]
        sstride = len(sealed[0])
        write(out, "vxlan_packet", "01-sealed-merge", b"\x01" + rec(0, struct.pack("<H", sstride) + b"".join(sealed)))
        write(out, "vxlan_packet", "01-sealed-one", b"\x01" + rec(0, b"\0\0" + seal(vxlan(fs[1][6]), 5)))
        write(out, "vxlan_packet", "03-sealed-replay", b"\x03" + rec(0, b"\0\0" + sealed[0]) + rec(0, b"\0\0" + sealed[0]))
    except ImportError:
        pass

    # vxlan_gather: config byte (bits 0-4: header offset, bit 6: pad length follows,
    # bit 7: buffer pre-sized), VNI (3 bytes LE), [u16 LE pad: the target appends
    # pad * 17 / 16 bytes to the frame], then vnet header + frame: TSO super-frames to cut.
    ts = b"\x01\x01\x08\x0a" + struct.pack("!II", 5, 6)  # NOP NOP timestamps
    vni3 = struct.pack("<I", VNI)[:3]
    for name, cfg, f in [
        ("v4-fin", 0x00, tso(False, 250, 100, 0x19)),
        ("v4-ecn-cwr", 0x85, tso(False, 300, 100, 0xD8, ecn=True)),
        ("v4-ts-wrap", 0x03, tso(False, 129, 64, 0x18, opts=ts)),
        ("v6-ack", 0x80, tso(True, 300, 120, 0x10)),
        ("v6-ecn-cwr-fin", 0x07, tso(True, 200, 64, 0xD9, ecn=True, opts=ts)),
        ("v4-one-seg", 0x00, tso(False, 80, 100, 0x19)),
    ]:
        write(out, "vxlan_gather", name, bytes([cfg]) + vni3 + f)
    # Near 64 KiB once padded: 63,750 bytes of payload in 1448-byte segments; and an IPv6
    # frame whose one segment would exceed the payload length field (refused).
    write(out, "vxlan_gather", "v4-64k", b"\x40" + vni3 + struct.pack("<H", 59750) + tso(False, 250, 1448, 0x18))
    write(out, "vxlan_gather", "v6-too-long", b"\x40" + vni3 + struct.pack("<H", 61680) + tso(True, 100, 65535, 0x10))

    # udp_merge: config byte (bit 0: IPv4 may merge, bit 1: IPv6), then records: a frame
    # (tag 0), or the previous frame with its tail replaced by the body (tag 1).
    a4, b4 = ep4(1), ep4(2)
    a6, b6 = ep6(1), ep6(2)

    def dgram4(payload, sport=5000, ident=1):
        return eth(ep_mac(2), ep_mac(1), 0x0800, ipv4(a4, b4, 17, udp(a4, b4, sport, 53, payload), ident=ident))

    def dgram6(payload, sport=5000):
        return eth(ep_mac(2), ep_mac(1), 0x86DD, ipv6(a6, b6, 17, udp(a6, b6, sport, 53, payload)))

    def partial(f, l4):
        # NEEDS_CSUM at the UDP checksum (the field's value is not looked at).
        return struct.pack("<BBHHHH", 1, 0, 0, 0, l4, 6) + f

    flood = b"".join(rec(0, vnet(dgram4(bytes([k]) * 64, ident=k))) for k in range(8))
    write(out, "udp_merge", "v4-flood", b"\x01" + flood)
    write(out, "udp_merge", "v4-flood-off", b"\x00" + flood)
    tail = b"".join(rec(1, bytes([k]) * 16) for k in range(70))
    write(out, "udp_merge", "v4-partial-70", b"\x01" + rec(0, partial(dgram4(b"x" * 64), 34)) + tail)
    write(out, "udp_merge", "v6-partial", b"\x02" + rec(0, partial(dgram6(b"y" * 100), 54)) + tail[:30])
    mixed = [dgram4(b"a" * 100), dgram4(b"b" * 100), dgram4(b"c" * 40), dgram4(b"d" * 100, sport=5001),
             dgram4(b"e" * 100), dgram6(b"f" * 100), dgram6(b"g" * 100), frames(1)[0]]
    write(out, "udp_merge", "mixed", b"\x03" + b"".join(rec(0, vnet(f)) for f in mixed))
    big = b"".join(rec(0, vnet(dgram4(bytes([k]) * 1400, ident=k))) for k in range(50))
    write(out, "udp_merge", "v4-64k", b"\x01" + big)

    # api_bodies: selector byte, then the JSON body.
    bodies = {
        0: [
            {"Name": "n1", "Driver": "bridge", "IPAM": {"Config": [{"Subnet": "10.70.0.0/24", "Gateway": "10.70.0.1"}]}},
            {"Name": "n2", "IPAM": {"Config": [{"Subnet": "10.1.2.0/33"}]}},
            {"Name": "v6", "EnableIPv6": True, "IPAM": {"Driver": "default", "Config": [{"Subnet": "fd00:1::/64", "IPRange": "fd00:1::/80", "AuxiliaryAddresses": {"x": "fd00:1::9"}}]}},
            {"Name": "cfg", "ConfigOnly": True, "Options": {"com.docker.network.driver.mtu": "1400", "com.docker.network.bridge.enable_icc": "false"}},
            {"Name": "from", "ConfigFrom": {"Network": "cfg"}, "Internal": True, "Attachable": True, "Labels": {"team": "db"}},
            {"Name": "ov", "Driver": "overlay", "Scope": "swarm", "Options": {"encrypted": "", "com.tapnet.port_security": "true"}},
        ],
        1: [
            {"Container": "a", "EndpointConfig": {"Aliases": ["web", "www"], "MacAddress": "02:42:aa:bb:cc:01"}},
            {"Container": "a", "EndpointConfig": {"MacAddress": "02:aa:00:00:00:0a", "Aliases": ["web", "WEB", "api", "Web"]}},
            {"Container": "b", "EndpointConfig": {"IPAMConfig": {"IPv4Address": "10.0.0.5", "IPv6Address": "fd00::5", "LinkLocalIPs": ["169.254.10.2"]}, "Links": ["c1:db"], "GwPriority": 5, "DriverOpts": {"com.example.x": "1"}}},
            {"Container": "c", "EndpointConfig": {"Aliases": ["google.com", "a b", "-x", "ok_name"]}},
            {"Container": 7},
        ],
        2: [{"Container": "a", "Force": True}, {"Container": "b"}],
        3: [
            {"Name": "sb1", "NetnsPath": "/run/netns/x", "PortBindings": {"80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}], "53/udp": None, "443": []}},
            {"Name": "sb2", "PortBindings": {"0/tcp": [{"HostPort": "99999"}], "22/sctp": None}},
        ],
        4: [{"NetworkID": "n" * 64, "Options": {"com.docker.network.generic": {"com.docker.network.driver.mtu": "1400"}, "com.docker.network.enable_ipv6": False},
             "IPv4Data": [{"AddressSpace": "tapnet-local", "Pool": "10.1.0.0/24", "Gateway": "10.1.0.1/24", "AuxAddresses": None}], "IPv6Data": None}],
        5: [{"NetworkID": "n" * 64}],
        6: [{"NetworkID": "n" * 64, "EndpointID": "e" * 64, "Interface": {"Address": "10.1.0.2/24", "AddressIPv6": "", "MacAddress": "02:42:0a:01:00:02"},
             "Options": {"com.docker.network.endpoint.exposedports": [{"Proto": 6, "Port": 80}], "com.docker.network.portmap": [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "", "HostPort": 8080, "HostPortEnd": 8080}]}}],
        7: [{"NetworkID": "n" * 64, "EndpointID": "e" * 64}],
        8: [{"NetworkID": "n" * 64, "EndpointID": "e" * 64, "SandboxKey": "/var/run/docker/netns/x", "Options": {}}],
        9: [{"DiscoveryType": 1, "DiscoveryData": {"Address": "10.0.0.1"}}],
        10: [{"NetworkID": "n" * 64, "EndpointID": "e" * 64, "Options": {"com.docker.network.portmap": []}}],
        11: [{"AddressSpace": "tapnet-local", "Pool": "10.1.0.0/16", "SubPool": "10.1.1.0/24", "Options": {}, "V6": False}],
        12: [{"PoolID": "tapnet-local/10.1.0.0/16"}],
        13: [{"PoolID": "tapnet-local/10.1.0.0/16", "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}],
        14: [{"PoolID": "tapnet-local/10.1.0.0/16", "Address": "10.1.0.5"}],
    }
    for sel, items in bodies.items():
        for k, b in enumerate(items):
            write(out, "api_bodies", "%02d-%d" % (sel, k), bytes([sel]) + json.dumps(b).encode())
    for k, raw in enumerate([b"", b"  ", b"{}", b"null", b"[]", b'{"Name": 5}']):
        write(out, "api_bodies", "raw-%d" % k, bytes([k % 4]) + raw)
    write(out, "api_bodies", "validators", bytes([15]) + b"web,WEB,a-b,02:42:aa:bb:cc:01,1500")

    # pipeline: config byte, then frames from sandbox ports (tag: (port - 1) << 3) and time (6).
    for cfg in (0x01, 0x03, 0x00, 0x05, 0x09, 0x07):
        for k in range(len(fs[1])):
            data = bytes([cfg])
            data += rec(0, vnet(fs[1][0])) + rec(1 << 3, vnet(fs[2][0]))
            data += rec(0, vnet(fs[1][k])) + rec(1 << 3, vnet(fs[2][k]))
            data += rec(6, struct.pack("<H", 60)) + rec(0, vnet(fs[1][k]))
            write(out, "pipeline", "%02x-%02d" % (cfg, k), data)
        write(out, "pipeline", "%02x-gso" % cfg, bytes([cfg]) + rec(0, vnet(fs[1][0])) + rec(0, vnet(fs[1][10])) + rec(0, gso))


if __name__ == "__main__":
    main()
