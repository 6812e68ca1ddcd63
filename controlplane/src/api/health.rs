//! `/livez`, `/readyz` and `/healthz` as kube-apiserver serves them: each
//! named check at `/<endpoint>/<check>` ("ok", or 500 with the reason), any
//! other name 404; the endpoint itself runs every check and answers "ok",
//! or with `?verbose` one `[+]name ok` line per check and
//! "<endpoint> check passed"; `?exclude=name` skips a check.
//!
//! Ferry's checks are the ones it has: `ping` (the server answers). The
//! store is served from memory once loaded, before the listener opens, so
//! kube-apiserver's `etcd` and `informer-sync` have nothing of Ferry's to
//! look at; a storage probe would come with a backend health call.

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use super::{Body, full};
use crate::error::ApiError;

/// A named check: `Ok`, or why it fails.
type Check = fn() -> Result<(), String>;

const CHECKS: &[(&str, Check)] = &[("ping", || Ok(()))];

fn text(code: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The answer to `/<endpoint>[/<check>]?<query>`.
pub(super) fn answer(
    endpoint: &str,
    check: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    if !check.is_empty() {
        let (_, run) = CHECKS
            .iter()
            .find(|(name, _)| *name == check)
            .ok_or_else(ApiError::path_not_found)?;
        return Ok(match run() {
            Ok(()) => text(StatusCode::OK, "ok".into()),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("internal server error: {e}\n"),
            ),
        });
    }
    let mut verbose = false;
    let mut excluded: Vec<String> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match &*k {
            "verbose" => verbose = true,
            "exclude" => excluded.push(v.into_owned()),
            _ => {}
        }
    }
    let mut out = String::new();
    let mut failed = false;
    for (name, run) in CHECKS {
        if let Some(i) = excluded.iter().position(|e| e == name) {
            excluded.swap_remove(i);
            out.push_str(&format!("[+]{name} excluded: ok\n"));
        } else if run().is_err() {
            failed = true;
            out.push_str(&format!("[-]{name} failed: reason withheld\n"));
        } else {
            out.push_str(&format!("[+]{name} ok\n"));
        }
    }
    if !excluded.is_empty() {
        excluded.sort();
        excluded.dedup();
        let names: Vec<String> = excluded.iter().map(|e| format!("{e:?}")).collect();
        out.push_str(&format!(
            "warn: some health checks cannot be excluded: no matches for {}\n",
            names.join(",")
        ));
    }
    if failed {
        out.push_str(&format!("{endpoint} check failed\n"));
        return Ok(text(StatusCode::INTERNAL_SERVER_ERROR, out));
    }
    if !verbose {
        return Ok(text(StatusCode::OK, "ok".into()));
    }
    out.push_str(&format!("{endpoint} check passed\n"));
    Ok(text(StatusCode::OK, out))
}
