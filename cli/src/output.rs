//! Output helpers: aligned tables, docker-style id truncation, JSON printing, and
//! times as docker prints them (Go's `time.Time.String()`, "2 minutes ago"; jiff).

use jiff::fmt::friendly::{Designator, Direction, Spacing, SpanPrinter};
use jiff::tz::Offset;
use jiff::{Span, Timestamp, Unit};
use serde::Serialize;
use std::collections::BTreeMap;

/// Length of a truncated id, as docker prints them.
pub const SHORT_ID_LEN: usize = 12;

/// Spaces between columns (docker's tabwriter uses a padding of 3).
const GAP: usize = 3;

/// `id` cut to [`SHORT_ID_LEN`] characters unless `no_trunc`.
pub fn short_id(id: &str, no_trunc: bool) -> &str {
    if no_trunc {
        return id;
    }
    match id.char_indices().nth(SHORT_ID_LEN) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Render a table: a header row and the rows, left-aligned, each column padded to
/// its widest cell plus a gap; no trailing spaces. Every line ends with `\n`.
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let cols = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.as_ref().chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut s = String::new();
        for (i, cell) in cells.take(cols).enumerate() {
            s.push_str(cell);
            if i + 1 < cols {
                let pad = widths[i] - cell.chars().count() + GAP;
                s.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(AsRef::as_ref));
    }
    out
}

/// Pretty JSON with a 4-space indent, as `docker inspect` prints it.
pub fn pretty_json<T: Serialize>(v: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    match v.serialize(&mut ser) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        // Serializing a `Value` cannot fail; keep a readable fallback anyway.
        Err(e) => format!("\"<unprintable: {e}>\""),
    }
}

/// One line of compact JSON, keys sorted at every level (what `--format json` prints,
/// as it always has: the value goes through `serde_json::Value`, whose maps are
/// sorted).
pub fn json_line<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(v) => v.to_string() + "\n",
        // The API types always serialize; keep a readable fallback anyway.
        Err(e) => format!("\"<unprintable: {e}>\"\n"),
    }
}

/// `{"a": "1", "b": "2"}` as `a=1,b=2` (docker's format for labels).
pub fn kv_list(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// An RFC 3339 time as Go's `time.Time.String()` prints it in UTC (what docker's
/// `CreatedAt` columns show): `2026-11-23 14:00:00.5 +0000 UTC`. Unparseable input
/// is returned as it is.
pub fn go_time(rfc3339: &str) -> String {
    match rfc3339.parse::<Timestamp>() {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.f +0000 UTC").to_string(),
        Err(_) => rfc3339.to_string(),
    }
}

/// How long before `now` the RFC 3339 time `created` was, in its largest whole
/// calendar unit, as `docker ps` prints it: `2 minutes ago`, `1 day ago`, `Less
/// than a second ago`. Empty if `created` cannot be read.
pub fn ago(created: &str, now: Timestamp) -> String {
    let Ok(t) = created.parse::<Timestamp>() else {
        return String::new();
    };
    if now.duration_since(t).as_secs() < 1 {
        return "Less than a second ago".to_string();
    }
    let (from, to) = (Offset::UTC.to_datetime(t), Offset::UTC.to_datetime(now));
    let Ok(span) = from.until((Unit::Year, to)) else {
        return String::new();
    };
    let units = [
        (i64::from(span.get_years()), Unit::Year),
        (i64::from(span.get_months()), Unit::Month),
        (i64::from(span.get_days()), Unit::Day),
        (i64::from(span.get_hours()), Unit::Hour),
        (span.get_minutes(), Unit::Minute),
        (span.get_seconds(), Unit::Second),
    ];
    let Some((n, unit)) = units.into_iter().find(|(n, _)| *n != 0) else {
        return "Less than a second ago".to_string();
    };
    let one = match unit {
        Unit::Year => Span::new().try_years(-n),
        Unit::Month => Span::new().try_months(-n),
        Unit::Day => Span::new().try_days(-n),
        Unit::Hour => Span::new().try_hours(-n),
        Unit::Minute => Span::new().try_minutes(-n),
        _ => Span::new().try_seconds(-n),
    };
    match one {
        Ok(s) => SpanPrinter::new()
            .designator(Designator::Verbose)
            .spacing(Spacing::BetweenUnitsAndDesignators)
            .direction(Direction::Suffix)
            .span_to_string(&s),
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn times_as_docker_prints_them() {
        assert_eq!(
            go_time("2026-11-23T14:00:00Z"),
            "2026-11-23 14:00:00 +0000 UTC"
        );
        assert_eq!(
            go_time("2026-11-23T14:00:00.25Z"),
            "2026-11-23 14:00:00.25 +0000 UTC"
        );
        assert_eq!(go_time("nope"), "nope");
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        assert_eq!(ago("2026-11-30T12:00:00Z", now), "Less than a second ago");
        assert_eq!(ago("2026-11-30T11:59:59Z", now), "1 second ago");
        assert_eq!(ago("2026-11-30T11:58:00Z", now), "2 minutes ago");
        assert_eq!(ago("2026-11-30T11:57:30Z", now), "2 minutes ago");
        assert_eq!(ago("2026-11-30T09:00:00Z", now), "3 hours ago");
        assert_eq!(ago("2026-11-29T11:00:00Z", now), "1 day ago");
        assert_eq!(ago("2026-10-01T12:00:00Z", now), "1 month ago");
        assert_eq!(ago("2024-01-01T00:00:00Z", now), "2 years ago");
        // A clock that went backwards is not "in the future".
        assert_eq!(ago("2026-11-30T12:05:00Z", now), "Less than a second ago");
        assert_eq!(ago("", now), "");
    }

    #[test]
    fn ids_are_truncated_to_12() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(short_id(id, false), "0123456789ab");
        assert_eq!(short_id(id, true), id);
        assert_eq!(short_id("abc", false), "abc");
        assert_eq!(short_id("", false), "");
        assert_eq!(short_id("0123456789ab", false), "0123456789ab");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
            &[
                vec!["0123456789ab", "n1", "bridge", "local"],
                vec!["ba9876543210", "a-longer-name", "bridge", "local"],
            ],
        );
        assert_eq!(
            t,
            "NETWORK ID     NAME            DRIVER   SCOPE\n\
             0123456789ab   n1              bridge   local\n\
             ba9876543210   a-longer-name   bridge   local\n"
        );
    }

    #[test]
    fn table_without_rows_and_trailing_empty_cells() {
        assert_eq!(table::<&str>(&["A", "B"], &[]), "A   B\n");
        let t = table(&["SANDBOX ID", "NAME", "NETWORKS"], &[vec!["x", "sb", ""]]);
        assert_eq!(t, "SANDBOX ID   NAME   NETWORKS\nx            sb\n");
    }

    #[test]
    fn pretty_json_uses_four_spaces() {
        assert_eq!(
            pretty_json(&json!([{"a": 1}])),
            "[\n    {\n        \"a\": 1\n    }\n]"
        );
        assert_eq!(pretty_json(&json!([])), "[]");
    }

    #[test]
    fn field_helpers() {
        let l: BTreeMap<String, String> = [("b", "2"), ("a", "1")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(kv_list(&l), "a=1,b=2");
        assert_eq!(kv_list(&BTreeMap::new()), "");
    }

    #[test]
    fn json_line_sorts_keys() {
        #[derive(Serialize)]
        struct S {
            b: u8,
            a: Vec<u8>,
        }
        assert_eq!(json_line(&S { b: 1, a: vec![2] }), "{\"a\":[2],\"b\":1}\n");
    }
}
