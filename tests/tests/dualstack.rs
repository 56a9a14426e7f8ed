//! IPv6 polish of issue 10 item 6: `--ipv6` without a subnet takes a /64 of the host's
//! unique local /48, and `-p` without a host IP listens on IPv4 and IPv6.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::Ipv6Addr;
use tapnet_tests::{in_namespace, Env};

/// An IPv6 subnet: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Ipv6Net(Ipv6Addr, u8);

impl std::str::FromStr for Ipv6Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').ok_or(s.to_string())?;
        Ok(Ipv6Net(
            a.parse().map_err(|_| s.to_string())?,
            l.parse().map_err(|_| s.to_string())?,
        ))
    }
}

impl std::fmt::Display for Ipv6Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.0, self.1)
    }
}

impl Ipv6Net {
    fn network(self) -> Ipv6Addr {
        self.0
    }
    fn prefix_len(self) -> u8 {
        self.1
    }
    fn mask(self) -> u128 {
        u128::MAX.checked_shl(128 - u32::from(self.1)).unwrap_or(0)
    }
    fn contains(&self, a: &Ipv6Addr) -> bool {
        u128::from(*a) & self.mask() == u128::from(self.0)
    }
    /// The /48 this subnet is in.
    fn slash48(self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.0) & Ipv6Net(self.0, 48).mask())
    }
}

/// The IPv6 (subnet, gateway) of `network`'s IPAM config.
fn v6_config(env: &Env, network: &str) -> (Ipv6Net, Ipv6Addr) {
    let v = env.get(&format!("/networks/{network}"));
    assert_eq!(v["EnableIPv6"], true, "{v}");
    let c = v["IPAM"]["Config"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Subnet"].as_str().unwrap_or("").contains(':'))
        .unwrap_or_else(|| panic!("{network} has no IPv6 subnet: {v}"))
        .clone();
    (
        c["Subnet"].as_str().unwrap().parse().unwrap(),
        c["Gateway"].as_str().unwrap().parse().unwrap(),
    )
}

fn ping6(env: &Env, sandbox: &str, to: &str) {
    let out = env.exec(
        sandbox,
        &[
            "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", to,
        ],
    );
    assert!(
        out.status.success(),
        "{sandbox} cannot ping -6 {to}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ipv6_without_subnet_takes_a_ula_64() {
    in_namespace("ipv6_without_subnet_takes_a_ula_64", |env| {
        env.ok(&["network", "create", "--ipv6", "u1"]);
        env.ok(&["network", "create", "--ipv6", "u2"]);
        let (s1, gw1) = v6_config(env, "u1");
        let (s2, gw2) = v6_config(env, "u2");
        assert_ne!(s1, s2);
        for (s, gw) in [(s1, gw1), (s2, gw2)] {
            assert_eq!(s.prefix_len(), 64, "{s}");
            assert_eq!(s.network().segments()[0] & 0xff00, 0xfd00, "ULA: {s}");
            assert_eq!(gw, Ipv6Addr::from(u128::from(s.network()) + 1), "{s} {gw}");
        }
        // Both from the same /48.
        let s48 = Ipv6Net::slash48;
        assert_eq!(s48(s1), s48(s2));

        // Sandboxes get addresses there and reach their gateway and each other over v6.
        for s in ["a", "b", "c"] {
            env.sandbox(s);
        }
        env.connect("u1", "a");
        env.connect("u1", "b");
        env.connect("u2", "c");
        let ip6 = |sb: &str, net: &str| {
            let v = env.get(&format!("/sandboxes/{sb}"));
            let a = v["Endpoints"][net]["IPv6Address"]
                .as_str()
                .unwrap()
                .to_string();
            let (addr, len) = a.split_once('/').unwrap();
            assert_eq!(len, "64", "{v}");
            addr.to_string()
        };
        let (a6, b6, c6) = (ip6("a", "u1"), ip6("b", "u1"), ip6("c", "u2"));
        assert!(
            s1.contains(&a6.parse::<Ipv6Addr>().unwrap()),
            "{a6} in {s1}"
        );
        assert!(
            s2.contains(&c6.parse::<Ipv6Addr>().unwrap()),
            "{c6} in {s2}"
        );
        ping6(env, "a", &gw1.to_string());
        ping6(env, "b", &gw1.to_string());
        ping6(env, "c", &gw2.to_string());
        ping6(env, "a", &b6);

        // After a restart the subnets are the same, and a new network gets another /64.
        env.stop_daemon();
        env.start_daemon();
        assert_eq!(v6_config(env, "u1"), (s1, gw1));
        assert_eq!(v6_config(env, "u2"), (s2, gw2));
        env.ok(&["network", "create", "--ipv6", "u3"]);
        let (s3, _) = v6_config(env, "u3");
        assert!(s3 != s1 && s3 != s2 && s48(s3) == s48(s1), "{s3}");
        ping6(env, "a", &gw1.to_string());

        // The pool can be replaced; an explicit subnet still wins.
        env.stop_daemon();
        env.start_daemon_with(&["--default-ipv6-pool", "base=fd42:1:2::/56,size=64"]);
        env.ok(&["network", "create", "--ipv6", "u4"]);
        let (s4, _) = v6_config(env, "u4");
        assert_eq!(s4.to_string(), "fd42:1:2::/64");
        env.ok(&["network", "create", "--ipv6", "--subnet", "fd99::/64", "u5"]);
        assert_eq!(v6_config(env, "u5").0.to_string(), "fd99::/64");
    });
}
