//! Docker's `filters` query parameter: decoding, validation and matching.
//!
//! Contract: [`Filters::parse`] reads the JSON the docker CLI sends — the current
//! form `{"name":{"foo":true}}` and the legacy form `{"name":["foo"]}`; an absent or
//! empty parameter is "no filters"; anything else is a 400 naming the problem.
//! [`Filters::validate`] refuses keys a handler does not know (400 `invalid filter
//! 'x'`, Docker's message). Matching follows moby: values of one key are OR-ed
//! (except `label`, whose values must all match), different keys are AND-ed.
//! Nothing here touches the controller: callers filter a snapshot, so a rejected
//! filter changes nothing.

use super::ApiError;
use crate::model::{is_builtin_network, Network};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{SystemTime, UNIX_EPOCH};

/// Keys `GET /networks` accepts.
pub const NETWORK_LIST_KEYS: &[&str] =
    &["dangling", "driver", "id", "label", "name", "scope", "type"];
/// Keys `POST /networks/prune` accepts.
pub const NETWORK_PRUNE_KEYS: &[&str] = &["until", "label", "label!"];

/// Decoded filters: key → set of values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, BTreeSet<String>>);

impl Filters {
    /// Decode the `filters` query value (already percent-decoded).
    pub fn parse(raw: Option<&str>) -> Result<Filters, ApiError> {
        let Some(raw) = raw.map(str::trim).filter(|s| !s.is_empty()) else {
            return Ok(Filters::default());
        };
        if let Ok(m) = serde_json::from_str::<BTreeMap<String, BTreeMap<String, bool>>>(raw) {
            return Ok(Filters(
                m.into_iter()
                    .map(|(k, v)| (k, v.into_keys().collect()))
                    .collect(),
            ));
        }
        match serde_json::from_str::<BTreeMap<String, Vec<String>>>(raw) {
            Ok(m) => Ok(Filters(
                m.into_iter()
                    .map(|(k, v)| (k, v.into_iter().collect()))
                    .collect(),
            )),
            Err(e) => Err(ApiError::bad_request(format!(
                "invalid filters {raw:?}: give a JSON object such as {{\"name\":{{\"net1\":true}}}} ({e})"
            ))),
        }
    }

    /// Build filters from `(key, value)` pairs (tests, the CLI's `k=v` form).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Filters {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (k, v) in pairs {
            m.entry(k.to_string()).or_default().insert(v.to_string());
        }
        Filters(m)
    }

    /// Refuse keys outside `accepted` with Docker's message.
    pub fn validate(&self, accepted: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !accepted.contains(&k.as_str())) {
            Some(k) => Err(ApiError::bad_request(format!("invalid filter '{k}'"))),
            None => Ok(()),
        }
    }

    /// The values of `key`, if it was given.
    pub fn get(&self, key: &str) -> Option<&BTreeSet<String>> {
        self.0.get(key)
    }

    /// Whether no filter was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `key` absent, or any of its values satisfies `pred`.
    fn any(&self, key: &str, pred: impl Fn(&str) -> bool) -> bool {
        self.get(key)
            .is_none_or(|vals| vals.iter().any(|v| pred(v)))
    }

    /// Every `key` value (`k` or `k=v`) matches `labels`; true when `key` is absent.
    pub fn labels_match(&self, key: &str, labels: &BTreeMap<String, String>) -> bool {
        self.get(key).is_none_or(|vals| {
            vals.iter().all(|v| match v.split_once('=') {
                Some((k, want)) => labels.get(k).is_some_and(|have| have == want),
                None => labels.contains_key(v.as_str()),
            })
        })
    }
}

/// Check `GET /networks` filters: the keys, and the values with a fixed vocabulary.
pub fn validate_list(f: &Filters) -> Result<(), ApiError> {
    f.validate(NETWORK_LIST_KEYS)?;
    for t in f.get("type").into_iter().flatten() {
        if t != "custom" && t != "builtin" {
            return Err(ApiError::bad_request(format!(
                "invalid filter: 'type'='{t}' (use custom or builtin)"
            )));
        }
    }
    for d in f.get("dangling").into_iter().flatten() {
        if parse_bool(d).is_none() {
            return Err(ApiError::bad_request(format!(
                "invalid filter 'dangling={d}' (use true or false)"
            )));
        }
    }
    Ok(())
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

/// Whether `net` passes `GET /networks` filters (already validated):
/// `name` substring, `id` prefix, `driver`/`scope` exact, `label` `k` or `k=v` (all
/// must match), `type` custom/builtin, `dangling` (no endpoints and not builtin).
pub fn network_matches(f: &Filters, net: &Network) -> bool {
    let builtin = is_builtin_network(&net.name);
    f.any("name", |v| net.name.contains(v))
        && f.any("id", |v| net.id.starts_with(v))
        && f.any("driver", |v| net.driver == v)
        && f.any("scope", |v| net.scope == v)
        && f.labels_match("label", &net.labels)
        && f.any("type", |v| (v == "builtin") == builtin)
        && f.any("dangling", |v| {
            let dangling = net.endpoints.is_empty() && !builtin;
            parse_bool(v) == Some(dangling)
        })
}

/// Validated `POST /networks/prune` filters.
#[derive(Debug, Clone, Default)]
pub struct PruneFilters {
    /// Only networks created before this time (seconds since the epoch).
    pub until: Option<f64>,
    filters: Filters,
}

impl PruneFilters {
    /// Validate prune filters; `until` is read relative to `now` (epoch seconds).
    pub fn new(f: Filters, now: f64) -> Result<PruneFilters, ApiError> {
        f.validate(NETWORK_PRUNE_KEYS)?;
        let until = match f.get("until").map(|v| v.iter().collect::<Vec<_>>()) {
            None => None,
            Some(v) => match v.as_slice() {
                [one] => Some(parse_timestamp(one, now).map_err(|e| {
                    ApiError::bad_request(format!("invalid filter 'until={one}': {e}"))
                })?),
                _ => {
                    return Err(ApiError::bad_request(
                        "more than one until filter specified",
                    ))
                }
            },
        };
        Ok(PruneFilters { until, filters: f })
    }

    /// Whether prune may remove `net`: a custom network without endpoints, created
    /// before `until`, matching every `label` and not matching all `label!` values.
    pub fn prunable(&self, net: &Network) -> bool {
        if is_builtin_network(&net.name) || !net.endpoints.is_empty() {
            return false;
        }
        if let Some(until) = self.until {
            match parse_rfc3339(&net.created) {
                Some(created) if created < until => {}
                _ => return false,
            }
        }
        if !self.filters.labels_match("label", &net.labels) {
            return false;
        }
        if self.filters.get("label!").is_some() && self.filters.labels_match("label!", &net.labels)
        {
            return false;
        }
        true
    }
}

/// Now, in seconds since the epoch.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Docker's timestamp forms for `until`: a Go duration before `now` (`24h`,
/// `1h30m`, `90s`), Unix seconds (`1700000000` or `1700000000.5`), or an RFC 3339
/// date/time (`2026-11-23`, `2026-11-23T14:00:00`, `...Z`, `...+01:00`; without a
/// zone it is UTC).
pub fn parse_timestamp(s: &str, now: f64) -> Result<f64, String> {
    if let Some(d) = parse_go_duration(s) {
        return Ok(now - d);
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        if let Ok(v) = s.parse::<f64>() {
            return Ok(v);
        }
    }
    parse_rfc3339(s).ok_or_else(|| {
        "give a duration (24h, 10m), Unix seconds, or an RFC 3339 time (2026-11-23T14:00:00Z)"
            .to_string()
    })
}

/// A Go duration (`1h30m`, `10s`, `250ms`, `1.5h`) in seconds; None if not one.
pub fn parse_go_duration(s: &str) -> Option<f64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += num * scale;
    }
    Some(if neg { -total } else { total })
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's days_from_civil).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DD[THH:MM[:SS[.frac]]][Z|±HH:MM]` to epoch seconds (UTC when no
/// zone is given).
pub fn parse_rfc3339(s: &str) -> Option<f64> {
    let num = |t: &str| -> Option<i64> {
        (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    let (date, time) = match s.split_once(['T', 't', ' ']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut dp = date.splitn(3, '-');
    let (y, mo, d) = (num(dp.next()?)?, num(dp.next()?)?, num(dp.next()?)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || date.len() != 10 {
        return None;
    }
    let mut secs = (days_from_civil(y, mo, d) * 86_400) as f64;
    let Some(time) = time else {
        return Some(secs);
    };
    let (clock, offset) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, z) = time.split_at(i);
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = z[1..].split_once(':')?;
        (c, sign * (num(hh)? * 3600 + num(mm)? * 60))
    } else {
        (time, 0)
    };
    let mut cp = clock.splitn(3, ':');
    let h = num(cp.next()?)?;
    let mi = num(cp.next()?)?;
    let sec: f64 = match cp.next() {
        None => 0.0,
        Some(sf) => {
            let (whole, frac) = sf.split_once('.').unwrap_or((sf, ""));
            let w = num(whole)? as f64;
            if frac.is_empty() {
                w
            } else {
                num(frac)?;
                format!("0.{frac}").parse::<f64>().ok()? + w
            }
        }
    };
    if h > 23 || mi > 59 || sec >= 61.0 {
        return None;
    }
    secs += (h * 3600 + mi * 60) as f64 + sec - offset as f64;
    Some(secs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parse_both_json_forms() {
        let a = Filters::parse(Some(
            r#"{"name":{"foo":true},"label":{"a=b":true,"c":true}}"#,
        ))
        .unwrap();
        let b = Filters::parse(Some(r#"{"name":["foo"],"label":["c","a=b"]}"#)).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a,
            Filters::from_pairs([("name", "foo"), ("label", "a=b"), ("label", "c")])
        );
        assert!(Filters::parse(None).unwrap().is_empty());
        assert!(Filters::parse(Some("")).unwrap().is_empty());
        assert!(Filters::parse(Some("{}")).unwrap().is_empty());
        for bad in [
            "{",
            "[1]",
            r#"{"name":"foo"}"#,
            r#"{"name":{"foo":1}}"#,
            "x",
        ] {
            let e = Filters::parse(Some(bad)).unwrap_err();
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
            assert!(
                e.message.contains("invalid filters"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn unknown_keys_and_values() {
        let f = Filters::from_pairs([("bogus", "1")]);
        assert_eq!(
            validate_list(&f).unwrap_err().message,
            "invalid filter 'bogus'"
        );
        let f = Filters::from_pairs([("type", "weird")]);
        assert!(validate_list(&f)
            .unwrap_err()
            .message
            .contains("'type'='weird'"));
        let f = Filters::from_pairs([("dangling", "maybe")]);
        assert!(validate_list(&f)
            .unwrap_err()
            .message
            .contains("dangling=maybe"));
        assert!(validate_list(&Filters::from_pairs([("type", "custom"), ("name", "x")])).is_ok());
        let e = PruneFilters::new(Filters::from_pairs([("name", "x")]), 0.0).unwrap_err();
        assert_eq!(e.message, "invalid filter 'name'");
        let e = PruneFilters::new(Filters::from_pairs([("until", "soon")]), 0.0).unwrap_err();
        assert!(e.message.contains("until=soon"), "{}", e.message);
        let e = PruneFilters::new(Filters::from_pairs([("until", "1h"), ("until", "2h")]), 0.0)
            .unwrap_err();
        assert!(e.message.contains("more than one until"));
    }

    #[test]
    fn label_matching() {
        let labels: BTreeMap<String, String> = [
            ("a".to_string(), "b".to_string()),
            ("c".to_string(), String::new()),
        ]
        .into();
        let m = |pairs: &[(&str, &str)]| {
            Filters::from_pairs(pairs.iter().copied()).labels_match("label", &labels)
        };
        assert!(m(&[]));
        assert!(m(&[("label", "a")]));
        assert!(m(&[("label", "a=b")]));
        assert!(m(&[("label", "a=b"), ("label", "c")]));
        assert!(!m(&[("label", "a=x")]));
        assert!(
            !m(&[("label", "a=b"), ("label", "zz")]),
            "all label values must match"
        );
        assert!(m(&[("label", "c=")]));
    }

    #[test]
    fn durations_and_times() {
        assert_eq!(parse_go_duration("24h"), Some(86_400.0));
        assert_eq!(parse_go_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_go_duration("1.5s"), Some(1.5));
        assert_eq!(parse_go_duration("250ms"), Some(0.25));
        assert_eq!(parse_go_duration("0"), Some(0.0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("h"), None);
        assert_eq!(parse_go_duration("5d"), None);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(parse_rfc3339("2026-11-23T14:00:00Z"), Some(1_795_442_400.0));
        assert_eq!(
            parse_rfc3339("2026-11-23T15:00:00+01:00"),
            Some(1_795_442_400.0)
        );
        assert_eq!(
            parse_rfc3339("2026-11-23T14:00:00.5Z"),
            Some(1_795_442_400.5)
        );
        assert_eq!(parse_rfc3339("2026-11-23T14:00"), Some(1_795_442_400.0));
        assert_eq!(parse_rfc3339("2000-02-29"), Some(951_782_400.0));
        assert_eq!(parse_rfc3339("2026-13-01"), None);
        assert_eq!(parse_rfc3339("nope"), None);
        assert_eq!(
            parse_rfc3339(&crate::model::rfc3339(1_234_567_890)),
            Some(1_234_567_890.0)
        );
        assert_eq!(parse_timestamp("10m", 1000.0), Ok(400.0));
        assert_eq!(parse_timestamp("1700000000", 0.0), Ok(1_700_000_000.0));
        assert_eq!(parse_timestamp("1700000000.25", 0.0), Ok(1_700_000_000.25));
        assert!(parse_timestamp("yesterday", 0.0).is_err());
    }
}
