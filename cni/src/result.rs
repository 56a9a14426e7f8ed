//! The ADD result: built from what tapnetd recorded and what the namespace holds,
//! merged into a `prevResult` when chained, and shaped for the requested version.
//!
//! Contract:
//! * [`Attached`] is the attachment as tapnet made it; [`Attached::result`] turns it
//!   into the spec's result: one interface (name, MAC, `sandbox` = `CNI_NETNS`,
//!   MTU from 1.1.0), its addresses with gateways (`interface` = its index), a
//!   default route per family through the gateway, and `dns` from the sandbox's
//!   resolv.conf (tapnet's embedded DNS server, `search`, `options`).
//! * With a `prevResult` the previous interfaces, addresses and routes come first
//!   and are kept unchanged (unknown fields too); ours are appended with indexes
//!   shifted; the previous `dns` wins when it has nameservers.
//! * [`shape`] writes a result in the form of the version asked for: 0.3.x/0.4.0
//!   carry `ips[].version` ("4"/"6"); 1.0.0 has none; `interfaces[].mtu` only from
//!   1.1.0.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

/// An interface of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Fields of other plugins' results, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An address of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6" (0.3.x and 0.4.0 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// `ip/prefix`.
    #[serde(default)]
    pub address: String,
    /// Gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// Fields of other plugins' results, kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A route of a result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Destination CIDR.
    #[serde(default)]
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
    /// Fields of other plugins' results (1.1's `mtu`, `table`, ...), kept.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// DNS of a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// Resolver options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// A result (ADD's output, the `prevResult` of CHECK and DEL).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Protocol version.
    #[serde(default)]
    pub cni_version: String,
    /// Interfaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    /// Routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
}

/// The attachment tapnet made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attached {
    /// Interface name in the namespace.
    pub ifname: String,
    /// Its MAC, `aa:bb:..`.
    pub mac: String,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// `CNI_NETNS`.
    pub netns: String,
    /// `a.b.c.d/len` (empty: none).
    pub ipv4: String,
    /// IPv4 gateway (empty: none).
    pub gateway: String,
    /// `addr/len` (empty: none).
    pub ipv6: String,
    /// IPv6 gateway (empty: none).
    pub gateway6: String,
    /// What the sandbox's resolv.conf says.
    pub dns: Dns,
}

impl Attached {
    /// The result of this attachment, appended to `prev` (a chained ADD).
    pub fn result(&self, cni_version: &str, prev: Option<CniResult>) -> CniResult {
        let mut r = prev.unwrap_or_default();
        r.cni_version = cni_version.to_string();
        let index = r.interfaces.len();
        r.interfaces.push(Interface {
            name: self.ifname.clone(),
            mac: Some(self.mac.clone()).filter(|m| !m.is_empty()),
            mtu: self.mtu,
            sandbox: Some(self.netns.clone()),
            extra: Map::new(),
        });
        for (addr, gw, default) in [
            (&self.ipv4, &self.gateway, "0.0.0.0/0"),
            (&self.ipv6, &self.gateway6, "::/0"),
        ] {
            if addr.is_empty() {
                continue;
            }
            let gw = Some(gw.clone()).filter(|g| !g.is_empty());
            r.ips.push(IpConfig {
                version: None,
                address: addr.clone(),
                gateway: gw.clone(),
                interface: Some(index),
                extra: Map::new(),
            });
            if let Some(gw) = gw {
                r.routes.push(Route {
                    dst: default.to_string(),
                    gw: Some(gw),
                    extra: Map::new(),
                });
            }
        }
        if r.dns.nameservers.is_empty() {
            r.dns = self.dns.clone();
        }
        r
    }
}

/// `r` as the JSON of protocol version `version`.
pub fn shape(mut r: CniResult, version: &str) -> Value {
    r.cni_version = version.to_string();
    let old = matches!(version, "0.3.0" | "0.3.1" | "0.4.0");
    for ip in &mut r.ips {
        ip.version = if old {
            let v6 = ip
                .address
                .split('/')
                .next()
                .and_then(|a| a.parse::<IpAddr>().ok())
                .is_some_and(|a| a.is_ipv6());
            Some(if v6 { "6" } else { "4" }.to_string())
        } else {
            None
        };
    }
    if version != "1.1.0" {
        for i in &mut r.interfaces {
            i.mtu = None;
        }
    }
    serde_json::to_value(r).unwrap_or(Value::Null)
}

/// The `nameserver`, `search`/`domain` and `options` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => dns.nameservers.extend(words.next().map(str::to_string)),
            Some("search") => dns.search = words.map(str::to_string).collect(),
            Some("domain") => dns.domain = words.next().map(str::to_string),
            Some("options") => dns.options.extend(words.map(str::to_string)),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn attached() -> Attached {
        Attached {
            ifname: "eth0".into(),
            mac: "02:42:0a:3c:00:02".into(),
            mtu: Some(1500),
            netns: "/run/netns/c1".into(),
            ipv4: "10.60.0.2/24".into(),
            gateway: "10.60.0.1".into(),
            ipv6: String::new(),
            gateway6: String::new(),
            dns: parse_resolv_conf("# tapnet\nnameserver 10.60.0.1\noptions ndots:0\n"),
        }
    }

    #[test]
    fn result_1_0_and_1_1() {
        let r = attached().result("1.0.0", None);
        assert_eq!(
            shape(r.clone(), "1.0.0"),
            json!({"cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "mac": "02:42:0a:3c:00:02", "sandbox": "/run/netns/c1"}],
                "ips": [{"address": "10.60.0.2/24", "gateway": "10.60.0.1", "interface": 0}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.60.0.1"}],
                "dns": {"nameservers": ["10.60.0.1"], "options": ["ndots:0"]}})
        );
        let v = shape(r, "1.1.0");
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    #[test]
    fn result_0_x_has_ip_versions() {
        let mut a = attached();
        a.ipv6 = "fd00:60::2/64".into();
        a.gateway6 = "fd00:60::1".into();
        let v = shape(a.result("0.4.0", None), "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][1]["interface"], 0);
        assert_eq!(v["routes"][1], json!({"dst": "::/0", "gw": "fd00:60::1"}));
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn chained_add_appends_to_prev_result() {
        let prev: CniResult = serde_json::from_value(json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "lo", "sandbox": "/x", "socketPath": "/s"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["9.9.9.9"]}}))
        .unwrap();
        let v = shape(attached().result("1.0.0", Some(prev)), "1.0.0");
        assert_eq!(v["interfaces"][0]["socketPath"], "/s");
        assert_eq!(v["interfaces"][1]["name"], "eth0");
        assert_eq!(v["ips"][1]["interface"], 1);
        assert_eq!(v["dns"]["nameservers"], json!(["9.9.9.9"]));
    }

    #[test]
    fn no_gateway_no_route() {
        let mut a = attached();
        a.gateway.clear();
        let v = shape(a.result("1.0.0", None), "1.0.0");
        assert!(v.get("routes").is_none());
        assert!(v["ips"][0].get("gateway").is_none());
    }

    #[test]
    fn resolv_conf_parsing() {
        let d = parse_resolv_conf(
            "nameserver 10.0.0.1\nnameserver fd00::1 # x\nsearch a.example b.example\ndomain d\noptions ndots:0 edns0\n; c\n",
        );
        assert_eq!(d.nameservers, vec!["10.0.0.1", "fd00::1"]);
        assert_eq!(d.search, vec!["a.example", "b.example"]);
        assert_eq!(d.domain.as_deref(), Some("d"));
        assert_eq!(d.options, vec!["ndots:0", "edns0"]);
    }
}
