//! `GET /events`: Docker-shaped network events, streamed as newline-delimited JSON.
//!
//! The body starts with an empty line (it makes the headers leave at once, so the
//! client is subscribed when it has them), then one JSON object per line.
//!
//! Contract: the stream starts when the request arrives and carries one
//! [`EventMessage`] per network created or destroyed and per endpoint connected or
//! disconnected, derived from each change the controller publishes after a commit
//! ([`Controller::subscribe_changes`]), in commit order. There is no history:
//! `since` and `until` are refused (400) by name, as is any other query parameter
//! but `filters`, whose keys are `type`, `event`, `network` (id or name) and
//! `container` (sandbox id or name); other filter keys are 400. A client too slow to
//! keep up with [`crate::controller::CHANGES_BACKLOG`] changes misses some (logged).

use super::filters::Filters;
use super::{query_map, ApiError, ApiResult};
use crate::controller::{Controller, ModelChange};
use crate::model::{Network, Store};
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tapnet_types::api::{EventActor, EventMessage};
use tokio::sync::broadcast::error::RecvError;

/// The filter keys `GET /events` understands.
pub const EVENT_FILTERS: [&str; 4] = ["type", "event", "network", "container"];

fn event(net: &Network, action: &str, container: Option<&str>, now: SystemTime) -> EventMessage {
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut attributes = BTreeMap::from([
        ("name".to_string(), net.name.clone()),
        ("type".to_string(), net.driver.clone()),
    ]);
    if let Some(c) = container {
        attributes.insert("container".into(), c.to_string());
    }
    EventMessage {
        kind: "network".into(),
        action: action.into(),
        actor: EventActor {
            id: net.id.clone(),
            attributes,
        },
        scope: if net.scope.is_empty() {
            "local".into()
        } else {
            net.scope.clone()
        },
        time: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        time_nano: i64::try_from(nanos).unwrap_or(i64::MAX),
    }
}

/// The events of one published change, in Docker's order: creations, connections,
/// disconnections, destructions.
pub fn events_of(change: &ModelChange, now: SystemTime) -> Vec<EventMessage> {
    let (before, after) = (&change.before, &change.after);
    let mut out = Vec::new();
    for (id, net) in &after.networks {
        if !before.networks.contains_key(id) {
            out.push(event(net, "create", None, now));
        }
    }
    for (id, net) in &after.networks {
        let old = before.networks.get(id);
        for ep in net.endpoints.values() {
            if old.is_none_or(|o| !o.endpoints.contains_key(&ep.id)) {
                out.push(event(net, "connect", Some(&ep.sandbox_id), now));
            }
        }
    }
    for (id, net) in &before.networks {
        let new = after.networks.get(id);
        for ep in net.endpoints.values() {
            if new.is_none_or(|n| !n.endpoints.contains_key(&ep.id)) {
                out.push(event(net, "disconnect", Some(&ep.sandbox_id), now));
            }
        }
    }
    for (id, net) in &before.networks {
        if !after.networks.contains_key(id) {
            out.push(event(net, "destroy", None, now));
        }
    }
    out
}

/// Whether `ev` passes `f` (`store`: the model after the event, for names; the
/// event's own attributes are used for names of objects gone since).
pub fn event_matches(f: &Filters, ev: &EventMessage, store: &Store) -> bool {
    let attr = |k: &str| ev.actor.attributes.get(k).map(String::as_str);
    let any = |key: &str, test: &dyn Fn(&str) -> bool| {
        f.get(key).is_none_or(|vals| vals.iter().any(|v| test(v)))
    };
    any("type", &|v| v == ev.kind)
        && any("event", &|v| v == ev.action)
        && any("network", &|v| v == ev.actor.id || Some(v) == attr("name"))
        && any("container", &|v| {
            let Some(c) = attr("container") else {
                return false;
            };
            v == c || store.sandboxes.get(c).is_some_and(|sb| sb.name == v)
        })
}

/// Check the query of `GET /events` (see the module doc).
pub fn parse_query(uri: &Uri) -> ApiResult<Filters> {
    let q = query_map(uri)?;
    for k in q.keys() {
        match k.as_str() {
            "filters" => {}
            "since" | "until" => {
                return Err(ApiError::bad_request(format!(
                    "{k} is not supported: tapnetd keeps no event history, /events streams \
                     the events from the request on"
                )))
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "query parameter {other:?} is not supported by /events (only filters)"
                )))
            }
        }
    }
    let f = Filters::parse(q.get("filters").map(String::as_str))?;
    f.validate(&EVENT_FILTERS)?;
    Ok(f)
}

/// The streaming answer: one JSON line per event that passes `f`.
pub fn stream(ctl: &Arc<Controller>, f: Filters) -> Response {
    let rx = ctl.subscribe_changes();
    let lines = futures_util::stream::unfold((rx, f), |(mut rx, f)| async move {
        loop {
            match rx.recv().await {
                Ok(change) => {
                    let mut chunk = Vec::new();
                    for ev in events_of(&change, SystemTime::now()) {
                        if !event_matches(&f, &ev, &change.after) {
                            continue;
                        }
                        if let Ok(mut line) = serde_json::to_vec(&ev) {
                            line.push(b'\n');
                            chunk.extend_from_slice(&line);
                        }
                    }
                    if !chunk.is_empty() {
                        return Some((Ok::<_, std::io::Error>(Bytes::from(chunk)), (rx, f)));
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an /events client fell behind: changes skipped");
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    // hyper holds the headers back until the body's first bytes: a newline first
    // sends them now (as dockerd flushes them), so a client knows it is subscribed
    // before any event; JSON stream readers skip the whitespace.
    let head = futures_util::stream::once(async { Ok(Bytes::from_static(b"\n")) });
    let mut r = Body::from_stream(head.chain(lines)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}
