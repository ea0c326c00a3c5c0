//! The control endpoint under `/_proxy/` (no bucket name starts with `_`, so S3 paths never
//! reach it): change faults, rules and holds while the proxy runs, and read what it saw.
//!
//! | request | does |
//! | --- | --- |
//! | `GET /_proxy/faults`, `PUT` (JSON [`FaultSettings`]) | the faults in force; a PUT replaces them and restarts the random streams |
//! | `GET /_proxy/rules`, `PUT` (JSON [`RuleSettings`]) | IAM propagation delay, scalings per day |
//! | `GET /_proxy/holds`, `PUT` (JSON list of [`Hold`]) | the held key prefixes; a PUT replaces them |
//! | `PUT /_proxy/settings` (text: `throttle=0.1,seed=3,...`) | the one-line form, applied to what is in force |
//! | `GET /_proxy/stats` | calls and outcomes per operation, calls per minute |
//! | `GET /_proxy/calls` | every call: time, service, operation, resource, outcome |
//! | `DELETE /_proxy/stats` | forgets the calls seen so far |

use std::collections::BTreeMap;

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::faults::FaultSettings;
use crate::proxy::{Shared, json_response};
use crate::rules::RuleSettings;
use crate::rules::object_hold::Hold;

pub const PREFIX: &str = "/_proxy/";

pub(crate) fn handle(shared: &Shared, parts: &Parts, body: &[u8]) -> Response<Bytes> {
    let resource = parts.uri.path().trim_start_matches(PREFIX);
    let outcome = match (&parts.method, resource) {
        (&Method::GET, "faults") => Ok(ok(&shared.in_force().faults)),
        (&Method::PUT, "faults") => {
            parse::<FaultSettings>(body).and_then(|faults| shared.set_faults(faults)).map(|()| ok(&shared.in_force().faults))
        }
        (&Method::GET, "rules") => Ok(ok(&shared.in_force().rules)),
        (&Method::PUT, "rules") => {
            parse::<RuleSettings>(body).map(|rules| shared.lock().rules = rules).map(|()| ok(&shared.in_force().rules))
        }
        (&Method::GET, "holds") => Ok(ok(&shared.in_force().holds)),
        (&Method::PUT, "holds") => parse::<Vec<Hold>>(body).map(|holds| shared.lock().holds = holds).map(|()| ok(&shared.in_force().holds)),
        (&Method::PUT, "settings") => std::str::from_utf8(body)
            .map_err(|_| "the one-line form is text".to_owned())
            .and_then(|spec| shared.apply_spec(spec))
            .map(|()| ok(&shared.in_force())),
        (&Method::GET, "stats") => {
            let stats = shared.stats();
            let per_minute: BTreeMap<u64, usize> = stats.per_minute(|_| true);
            Ok(ok(
                &serde_json::json!({ "operations": stats.summary(), "perMinute": per_minute, "busiestMinute": stats.busiest_minute(|_| true) }),
            ))
        }
        (&Method::GET, "calls") => Ok(ok(&shared.stats())),
        (&Method::DELETE, "stats") => {
            shared.lock().recorder.clear();
            Ok(ok(&serde_json::json!({})))
        }
        _ => {
            let help = "GET|PUT /_proxy/faults, /_proxy/rules, /_proxy/holds (JSON); PUT /_proxy/settings (throttle=0.1,seed=3,...); GET|DELETE /_proxy/stats; GET /_proxy/calls";
            return json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({ "error": format!("no {} {}", parts.method, parts.uri.path()), "endpoints": help }),
            );
        }
    };
    outcome.unwrap_or_else(|error| json_response(StatusCode::BAD_REQUEST, &serde_json::json!({ "error": error })))
}

fn ok(value: &impl Serialize) -> Response<Bytes> {
    json_response(StatusCode::OK, value)
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|error| format!("the body is not the JSON this endpoint takes: {error}"))
}
