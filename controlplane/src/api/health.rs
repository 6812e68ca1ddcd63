//! `/livez`, `/readyz` and `/healthz` as kube-apiserver serves them: each
//! named check at `/<endpoint>/<check>` ("ok", or 500 with the reason), any
//! other name 404; the endpoint itself runs every check and answers "ok",
//! or with `?verbose` one `[+]name ok` line per check and
//! "<endpoint> check passed"; `?exclude=name` skips a check.
//!
//! Ferry's checks are the ones it has: `ping` (the server answers) and,
//! for `/readyz` and `/healthz` as in kube-apiserver, `etcd` (the storage
//! backend, SQLite or etcd, answers a read within 5 s). `/livez` leaves
//! storage out, so an outage of etcd never gets the apiserver restarted.
//! The store is served from memory once loaded, so kube-apiserver's
//! `informer-sync` has nothing of Ferry's to look at.

use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use std::sync::Arc;

use super::{Body, full};
use crate::error::ApiError;
use crate::registry::Registry;

/// The checks each endpoint runs.
fn checks(endpoint: &str) -> &'static [&'static str] {
    match endpoint {
        "livez" => &["ping"],
        _ => &["ping", "etcd"],
    }
}

/// How long the storage check waits for the backend.
const STORAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs one check: `Ok`, or why it fails.
async fn run(name: &str, registry: &Arc<Registry>) -> Result<(), String> {
    match name {
        "etcd" => {
            let reg = registry.clone();
            let probe = tokio::task::spawn_blocking(move || reg.store.storage_health());
            match tokio::time::timeout(STORAGE_TIMEOUT, probe).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(e))) => Err(e.to_string()),
                Ok(Err(e)) => Err(format!("storage probe failed: {e}")),
                Err(_) => Err(format!("storage did not answer within {STORAGE_TIMEOUT:?}")),
            }
        }
        _ => Ok(()),
    }
}

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
pub(super) async fn answer(
    registry: &Arc<Registry>,
    endpoint: &str,
    check: &str,
    query: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let checks = checks(endpoint);
    if !check.is_empty() {
        let name = checks
            .iter()
            .find(|name| **name == check)
            .ok_or_else(ApiError::path_not_found)?;
        return Ok(match run(name, registry).await {
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
    for name in checks {
        if let Some(i) = excluded.iter().position(|e| e == name) {
            excluded.swap_remove(i);
            out.push_str(&format!("[+]{name} excluded: ok\n"));
        } else if let Err(e) = run(name, registry).await {
            tracing::warn!(check = %name, %endpoint, error = %e, "health check failed");
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
