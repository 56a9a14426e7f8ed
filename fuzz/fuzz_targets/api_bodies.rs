//! `api_bodies`: request bodies into the API's request types (`tapnet_types::api`:
//! network create, connect, disconnect, sandbox create; the Docker plugin protocol's
//! requests in `tapnet_types::plugin`) as tapnetd reads them (serde_json, an empty body
//! read as `{}`), then into the pure validation that runs on them before any state
//! changes: `model::check_aliases`, `model::parse_endpoint_mac`,
//! `ports::parse_port_bindings`, `model::parse_mtu` / `parse_bool_option` on the
//! driver options.
//!
//! (The engine's own `api::network_create_request` / `connect_request` are not built
//! here: `tapnet-engine` pulls tokio, axum, etcd-client and redb into the fuzz build,
//! which would take the CI budget of `scripts/fuzz.sh` several times over; what they
//! call from `tapnet-types` is fuzzed here.)
//!
//! Input: a selector byte (which body type), then the body.
//!
//! Asserted (besides "no panic"): a body that parses serializes to JSON that parses
//! back to the same value (a float in a free-form `Options` value to its last ULP:
//! serde_json's default float parsing); `check_aliases` accepts only lists of at most
//! `MAX_ALIASES` RFC 1123 labels (`_` allowed) and returns them without
//! case-insensitive duplicates, in order, first spelling kept; an accepted MAC is
//! unicast and not zero and formats back to the same address; accepted port bindings
//! have a nonzero container port; the MTU and boolean options accept only what they
//! document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt::Debug;
use tapnet_types::{api, model, plugin, ports};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 16 {
        0 => {
            if let Some(b) = parse::<api::NetworkCreateBody>(body) {
                for (k, v) in b.options.iter().flatten() {
                    options(k, v);
                }
            }
        }
        1 => {
            if let Some(b) = parse::<api::ConnectBody>(body) {
                if let Some(cfg) = b.endpoint_config {
                    if let Some(a) = cfg.aliases {
                        aliases(&a);
                    }
                    if let Some(m) = cfg.mac_address {
                        mac(&m);
                    }
                }
            }
        }
        2 => {
            parse::<api::DisconnectBody>(body);
        }
        3 => {
            if let Some(b) = parse::<api::SandboxCreateBody>(body) {
                if let Some(pb) = b.port_bindings {
                    if let Ok(v) = ports::parse_port_bindings(&pb) {
                        assert!(v.iter().all(|p| p.port != 0));
                    }
                }
            }
        }
        4 => {
            if let Some(b) = parse::<plugin::CreateNetworkRequest>(body) {
                let _ = serde_json::to_string(&b.options);
            }
        }
        5 => {
            parse::<plugin::NetworkRequest>(body);
        }
        6 => {
            if let Some(b) = parse::<plugin::CreateEndpointRequest>(body) {
                if let Some(i) = b.interface {
                    if !i.mac_address.is_empty() {
                        mac(&i.mac_address);
                    }
                }
            }
        }
        7 => {
            parse::<plugin::EndpointRequest>(body);
        }
        8 => {
            parse::<plugin::JoinRequest>(body);
        }
        9 => {
            parse::<plugin::DiscoveryRequest>(body);
        }
        10 => {
            parse::<plugin::ExternalConnectivityRequest>(body);
        }
        11 => {
            parse::<plugin::RequestPoolRequest>(body);
        }
        12 => {
            parse::<plugin::ReleasePoolRequest>(body);
        }
        13 => {
            parse::<plugin::RequestAddressRequest>(body);
        }
        14 => {
            parse::<plugin::ReleaseAddressRequest>(body);
        }
        _ => {
            // Raw strings into the validators.
            let s = String::from_utf8_lossy(body);
            let list: Vec<String> = s.split(',').map(str::to_string).collect();
            aliases(&list);
            mac(&s);
            options(model::MTU_OPTION, &s);
            options(model::ICC_OPTION, &s);
            let _ = ports::parse_container_port(&s);
        }
    }
});

/// Parse as tapnetd does (empty body: `{}`), and check the serde round trip.
fn parse<T: DeserializeOwned + Serialize + PartialEq + Debug>(body: &[u8]) -> Option<T> {
    let bytes: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    let v: T = serde_json::from_slice(bytes).ok()?;
    let json = serde_json::to_vec(&v).expect("a parsed body serializes");
    let back: T = serde_json::from_slice(&json).expect("a serialized body parses");
    if v != back {
        // The one known difference: serde_json's default float parsing may be one ULP
        // off (it is exact only with its `float_roundtrip` feature), so a float in a
        // free-form `Options` value can change in its last digit. Nothing else may.
        let (a, b) = (
            serde_json::to_value(&v).expect("value"),
            serde_json::to_value(&back).expect("value"),
        );
        assert!(
            same_but_float_ulps(&a, &b),
            "round trip through {}:\n{a}\n{b}",
            String::from_utf8_lossy(&json)
        );
    }
    Some(v)
}

/// Equal JSON, floats compared to a relative 1e-15.
fn same_but_float_ulps(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value as V;
    match (a, b) {
        (V::Number(x), V::Number(y)) => {
            x == y
                || match (x.as_f64(), y.as_f64()) {
                    (Some(x), Some(y)) if x.is_finite() && y.is_finite() => {
                        (x - y).abs() <= x.abs().max(y.abs()) * 1e-15
                    }
                    _ => false,
                }
        }
        (V::Array(x), V::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_but_float_ulps(x, y))
        }
        (V::Object(x), V::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_but_float_ulps(v, w)))
        }
        _ => a == b,
    }
}

fn aliases(list: &[String]) {
    let Ok(out) = model::check_aliases(list) else {
        return;
    };
    assert!(list.len() <= model::MAX_ALIASES);
    let mut expect: Vec<&String> = Vec::new();
    for a in list {
        assert!(!a.is_empty() && a.len() <= 63, "alias {a:?} accepted");
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
            "alias {a:?} accepted"
        );
        assert!(
            !a.starts_with('-') && !a.ends_with('-'),
            "alias {a:?} accepted"
        );
        if !expect.iter().any(|e| e.eq_ignore_ascii_case(a)) {
            expect.push(a);
        }
    }
    let expect: Vec<String> = expect.into_iter().cloned().collect();
    assert_eq!(out, expect);
}

fn mac(s: &str) {
    let Ok(m) = model::parse_endpoint_mac(s) else {
        return;
    };
    assert_eq!(m[0] & 1, 0, "multicast MAC {s:?} accepted");
    assert!(m.iter().any(|&b| b != 0), "zero MAC {s:?} accepted");
    let f = model::format_mac(&m);
    assert_eq!(model::parse_endpoint_mac(&f), Ok(m));
}

fn options(k: &str, v: &str) {
    if k == model::MTU_OPTION {
        if let Ok(mtu) = model::parse_mtu(v) {
            assert_eq!(
                v.trim().parse::<u32>().ok(),
                Some(mtu),
                "MTU {v:?} accepted"
            );
            assert!((68..=65_535).contains(&mtu), "MTU {mtu} accepted");
        }
    } else if k == model::ICC_OPTION || k == model::PORT_SECURITY_OPTION {
        if let Ok(b) = model::parse_bool_option(k, v) {
            let t = v.trim();
            assert!(
                t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") || t.len() == 1
            );
            assert_eq!(b, matches!(t, "1" | "t" | "T" | "TRUE" | "true" | "True"));
        }
    }
}
