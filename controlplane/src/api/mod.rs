//! The HTTPS front: TLS, bearer-token authentication, authorization of
//! every request (`crate::rbac`), routing of Kubernetes REST paths to the
//! registry's verbs, and the JSON/Table/watch framing of responses.

pub mod conn;
pub mod discovery;
pub mod field_validation;
mod health;
pub mod node_proxy;
pub mod openapi;
pub mod protobuf;
pub mod table;
pub mod watch;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, StreamBody, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::auth::{TokenAuth, User};
use crate::error::ApiError;
use crate::patch::PatchType;
use crate::rbac;
use crate::registry::{DeleteOptions, Registry, WriteOptions};
use crate::resources::{self, Resource};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Entry;
use table::Include;
use watch::{Start, WatchRequest};

pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted, as kube-apiserver's 3 MiB limit.
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Shared state of the HTTP front.
#[derive(Debug)]
pub struct Api {
    pub registry: Arc<Registry>,
    pub auth: Arc<TokenAuth>,
    /// host:port advertised in discovery.
    pub advertise: String,
    /// `pods/log`, `pods/exec` and `pods/portforward`, proxied to the nodes.
    pub node_proxy: node_proxy::NodeProxy,
    /// Decides what each authenticated request may do.
    pub authorizer: Arc<rbac::Authorizer>,
    /// ServiceAccount tokens: issued (TokenRequest) and accepted.
    pub tokens: Arc<crate::serviceaccount::Tokens>,
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn json_bytes(code: StatusCode, body: Bytes) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(err: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(code, &err.status())
}

/// Where a request path points.
#[derive(Debug)]
enum Route {
    Version,
    /// `/livez`, `/readyz`, `/healthz`, and a check under one of them.
    Health(&'static str, String),
    CoreVersions,
    GroupList,
    Group(String),
    ResourceList(String, String),
    OpenApiV2,
    OpenApiV3Root,
    OpenApiV3(String, String),
    Object(Target),
    /// `pods/{name}/binding` (name given) or the legacy `bindings`, in a namespace.
    Binding(String, Option<String>),
    /// `/openid/v1/jwks`: the ServiceAccount token key.
    Jwks,
    /// `/.well-known/openid-configuration`.
    OpenIdConfiguration,
}

/// A resource path: the kind, and optionally namespace, name, subresource.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Some(Route::Version),
        ["openid", "v1", "jwks"] => return Some(Route::Jwks),
        [".well-known", "openid-configuration"] => return Some(Route::OpenIdConfiguration),
        [endpoint @ ("healthz" | "livez" | "readyz"), check @ ..] => {
            let endpoint = match *endpoint {
                "healthz" => "healthz",
                "livez" => "livez",
                _ => "readyz",
            };
            return Some(Route::Health(endpoint, check.join("/")));
        }
        ["api"] => return Some(Route::CoreVersions),
        ["apis"] => return Some(Route::GroupList),
        ["apis", g] => return Some(Route::Group((*g).to_string())),
        ["openapi", "v2"] => return Some(Route::OpenApiV2),
        ["openapi", "v3"] => return Some(Route::OpenApiV3Root),
        ["openapi", "v3", "api", v] => {
            return Some(Route::OpenApiV3(String::new(), (*v).to_string()));
        }
        ["openapi", "v3", "apis", g, v] => {
            return Some(Route::OpenApiV3((*g).to_string(), (*v).to_string()));
        }
        ["api", "v1", "namespaces", ns, "pods", pod, "binding"] => {
            return Some(Route::Binding((*ns).to_string(), Some((*pod).to_string())));
        }
        ["api", "v1", "namespaces", ns, "bindings"] => {
            return Some(Route::Binding((*ns).to_string(), None));
        }
        ["api", v] => return Some(Route::ResourceList(String::new(), (*v).to_string())),
        ["apis", g, v] => return Some(Route::ResourceList((*g).to_string(), (*v).to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let target = match rest {
        ["namespaces", ns, plural, tail @ ..]
            if resources::lookup(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let res = resources::lookup(group, version, plural)?;
            Target {
                res,
                namespace: Some((*ns).to_string()),
                name: tail.first().map(|s| (*s).to_string()),
                sub: match tail {
                    [_, sub] => Some((*sub).to_string()),
                    [_] | [] => None,
                    _ => return None,
                },
            }
        }
        [plural, tail @ ..] => {
            let res = resources::lookup(group, version, plural)?;
            Target {
                res,
                namespace: None,
                name: tail.first().map(|s| (*s).to_string()),
                sub: match tail {
                    [_, sub] => Some((*sub).to_string()),
                    [_] | [] => None,
                    _ => return None,
                },
            }
        }
        [] => return None,
    };
    if let Some(sub) = &target.sub
        && !target.res.subresources.contains(&sub.as_str())
    {
        return None;
    }
    Some(Route::Object(target))
}

type Query = HashMap<String, String>;

fn query(req: &Request<Incoming>) -> Query {
    req.uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

fn flag(q: &Query, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("true" | "1"))
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported dryRun value {other:?}: only All is supported"
        ))),
    }
}

/// The Table request in an Accept header, if any.
fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let p: Vec<&str> = part.split(';').map(str::trim).collect();
        p.contains(&"as=Table")
            && p.contains(&"g=meta.k8s.io")
            && (p.contains(&"v=v1") || p.contains(&"v=v1beta1"))
    })
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    ns: String,
    name: String,
}

fn encode_continue(rv: u64, key: &(String, String)) -> String {
    let t = ContinueToken {
        rv,
        ns: key.0.clone(),
        name: key.1.clone(),
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&t).unwrap_or_default())
}

fn decode_continue(s: &str) -> Result<ContinueToken, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| ApiError::bad_request("continue key is not valid: illegal base64 data"))
}

impl Api {
    /// Serves HTTPS on `listener` until the task is dropped, each
    /// connection bounded by `limits` (see [`conn`]).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        limits: conn::ConnLimits,
    ) {
        self.serve_connections(listener, tls, limits).await;
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let started = std::time::Instant::now();
        let resp = match self.dispatch(req).await {
            Ok(r) => r,
            Err(e) => error_response(&e),
        };
        tracing::debug!(%peer, %method, %path, status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
        resp
    }

    /// The user of a request: its bearer token's, with group
    /// `system:authenticated`; without a token, `system:anonymous` where
    /// `anonymous` allows it (the public health and version paths), else
    /// 401. An unknown token is always 401.
    fn authenticate(&self, req: &Request<Incoming>, anonymous: bool) -> Result<User, ApiError> {
        let header = req.headers().get(AUTHORIZATION);
        let token = header
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer_token);
        let user = token.and_then(|t| {
            self.auth.authenticate(t).or_else(|| {
                if !crate::serviceaccount::looks_like_jwt(t) {
                    return None;
                }
                match self.tokens.authenticate(&self.registry.store, t, &[]) {
                    Ok(id) => Some(id.user),
                    Err(e) => {
                        // Never the token itself: only why it failed.
                        tracing::info!(reason = %e, "refused a service account token");
                        None
                    }
                }
            })
        });
        match user {
            Some(mut user) => {
                // The connection is a real client's: the cap never evicts it.
                if let Some(conn) = req.extensions().get::<conn::Conn>() {
                    conn.authenticated();
                }
                if !user.groups.iter().any(|g| g == rbac::AUTHENTICATED_GROUP) {
                    user.groups.push(rbac::AUTHENTICATED_GROUP.into());
                }
                Ok(user)
            }
            None if header.is_none() && anonymous => Ok(User {
                name: rbac::ANONYMOUS_USER.into(),
                groups: vec![rbac::UNAUTHENTICATED_GROUP.into()],
            }),
            None => Err(ApiError::unauthorized()),
        }
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let route = route(req.uri().path());
        let public = matches!(route, Some(Route::Version | Route::Health(..)));
        let user = self.authenticate(&req, public)?;
        // Authorized before routing, as kube-apiserver: a path that does
        // not exist is 403 to whoever may not ask for it, 404 to others.
        let attrs = rbac::Attributes::of_request(
            user.clone(),
            req.method().as_str(),
            req.uri().path(),
            req.uri().query(),
        );
        self.authorizer.authorize(&self.registry.store, &attrs)?;
        let route = route.ok_or_else(ApiError::path_not_found)?;
        match route {
            Route::Version => return Ok(json_response(StatusCode::OK, &discovery::version())),
            Route::Health(endpoint, check) => {
                return health::answer(&self.registry, endpoint, &check, req.uri().query()).await;
            }
            _ => {}
        }
        let accept = req
            .headers()
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let get_only = |m: &Method| {
            if *m == Method::GET {
                Ok(())
            } else {
                Err(ApiError::method_not_allowed(m.as_str()))
            }
        };
        match route {
            Route::CoreVersions | Route::GroupList => {
                get_only(req.method())?;
                let core = matches!(route, Route::CoreVersions);
                if discovery::wants_aggregated(&accept) {
                    let mut r = json_response(StatusCode::OK, &discovery::aggregated(core));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(discovery::AGGREGATED_CT),
                    );
                    return Ok(r);
                }
                let doc = if core {
                    discovery::api_versions(&self.advertise)
                } else {
                    discovery::api_group_list()
                };
                Ok(json_response(StatusCode::OK, &doc))
            }
            Route::Group(g) => {
                get_only(req.method())?;
                let doc = discovery::api_group(&g).ok_or_else(ApiError::path_not_found)?;
                Ok(json_response(StatusCode::OK, &doc))
            }
            Route::ResourceList(g, v) => {
                get_only(req.method())?;
                let doc = discovery::resource_list(&g, &v).ok_or_else(ApiError::path_not_found)?;
                Ok(json_response(StatusCode::OK, &doc))
            }
            Route::OpenApiV2 => {
                get_only(req.method())?;
                if openapi::wants_v2_protobuf(&accept) {
                    let mut r = Response::new(full(openapi::v2_protobuf()?));
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(openapi::V2_PROTOBUF),
                    );
                    return Ok(r);
                }
                if !openapi::takes_json(&accept) {
                    return Err(ApiError::not_acceptable("application/json"));
                }
                Ok(json_bytes(StatusCode::OK, openapi::v2_json()))
            }
            Route::OpenApiV3Root => {
                get_only(req.method())?;
                Ok(json_response(StatusCode::OK, &openapi::v3_root()))
            }
            Route::OpenApiV3(g, v) => {
                get_only(req.method())?;
                let doc = openapi::v3(&g, &v).ok_or_else(ApiError::path_not_found)?;
                Ok(json_bytes(StatusCode::OK, doc))
            }
            Route::Object(target) => {
                // Objects and lists go out as protobuf when the client
                // prefers it; tables and watch streams stay JSON.
                let proto = protobuf::preferred(&accept)
                    && !wants_table(&accept)
                    && !flag(&query(&req), "watch");
                let res = target.res;
                let resp = self.resource(req, target, &accept, &user).await?;
                Ok(if proto {
                    protobuf_response(res, resp).await
                } else {
                    resp
                })
            }
            Route::Binding(ns, pod) => self.binding(req, ns, pod).await,
            Route::Jwks => {
                get_only(req.method())?;
                let mut r = json_response(StatusCode::OK, &self.tokens.signer().jwks());
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/jwk-set+json"),
                );
                Ok(r)
            }
            Route::OpenIdConfiguration => {
                get_only(req.method())?;
                Ok(json_response(
                    StatusCode::OK,
                    &self.tokens.openid_configuration(),
                ))
            }
            Route::Version | Route::Health(..) => Err(ApiError::path_not_found()),
        }
    }

    async fn resource(
        &self,
        req: Request<Incoming>,
        t: Target,
        accept: &str,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        // Unknown fields a write dropped, as kube-apiserver reports them
        // under fieldValidation=Warn (its default).
        let warnings = std::sync::Mutex::new(Vec::new());
        let mut resp = self
            .resource_validated(req, t, accept, &warnings, user)
            .await?;
        for w in warnings.into_inner().unwrap_or_default() {
            let value = format!("299 - {}", serde_json::Value::String(w));
            if let Ok(v) = hyper::header::HeaderValue::from_str(&value) {
                resp.headers_mut().append("warning", v);
            }
        }
        Ok(resp)
    }

    async fn resource_validated(
        &self,
        req: Request<Incoming>,
        t: Target,
        accept: &str,
        warnings: &std::sync::Mutex<Vec<String>>,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        if t.res.is_review() {
            return self.review(req, &t, user).await;
        }
        if let (Some("token"), Some(ns), Some(name)) =
            (t.sub.as_deref(), t.namespace.as_deref(), t.name.as_deref())
            && *t.res == resources::SERVICEACCOUNTS
        {
            return self.token_request(req, ns, name, user).await;
        }
        // Proxied to the node before anything reads the request (an exec
        // upgrade takes the connection over).
        if let (Some(sub @ ("log" | "exec" | "portforward")), Some(ns), Some(name)) =
            (t.sub.as_deref(), t.namespace.as_deref(), t.name.as_deref())
            && *t.res == resources::PODS
        {
            return self
                .node_proxy
                .serve(&self.registry, req, ns, name, sub)
                .await;
        }
        let q = query(&req);
        let method = req.method().clone();
        let user_agent = req
            .headers()
            .get(hyper::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let (content_type, body) = read_body(req).await?;
        let ns = t.namespace.clone().unwrap_or_default();
        let validation =
            field_validation::FieldValidation::parse(q.get("fieldValidation").map(String::as_str))?;
        // Fields the kind lacks: refused (Strict) or reported (Warn); a
        // protobuf body cannot hold any (its decoder refuses them).
        let check_fields = |v: &Value, patch: bool| -> Result<(), ApiError> {
            let found = validation.check(t.res, v, patch)?;
            if let Ok(mut w) = warnings.lock() {
                w.extend(found);
            }
            Ok(())
        };
        let parse_body = |body: &[u8]| -> Result<Value, ApiError> {
            match content_type.split(';').next().unwrap_or("").trim() {
                "" | "application/json" => {
                    let v = parse_json(body)?;
                    check_fields(&v, false)?;
                    Ok(v)
                }
                "application/vnd.kubernetes.protobuf" => protobuf::decode(t.res.kind, body),
                other => Err(ApiError::unsupported_media_type(other)),
            }
        };
        let table = wants_table(accept);
        let include = Include::parse(q.get("includeObject").map(String::as_str))
            .ok_or_else(|| ApiError::bad_request("unrecognized includeObject value"))?;
        if t.res.namespaced && t.namespace.is_none() && !matches!(method, Method::GET) {
            return Err(ApiError::method_not_allowed(method.as_str()));
        }
        let opts = WriteOptions {
            dry_run: dry_run(&q)?,
            // Without fieldManager, the user agent's product names the
            // manager, as kube-apiserver does.
            field_manager: q.get("fieldManager").cloned().or(user_agent),
            force: flag(&q, "force"),
            guard: self.authorizer.write_guard(user),
        };
        let registry = self.registry.clone();
        let res = t.res;
        if let (Some("scale"), Some(name)) = (t.sub.as_deref(), t.name.clone()) {
            return scale_subresource(registry, res, ns, name, method, &content_type, body, opts)
                .await;
        }
        match (method, t.name.clone()) {
            (Method::GET, None) if flag(&q, "watch") => {
                self.watch(res, t.namespace, &q, table.then_some(include))
            }
            (Method::GET, None) => {
                // Serializing a large list is CPU work: keep it off the
                // async workers that drive every connection.
                let ns = t.namespace.clone();
                blocking(move || list(&registry, res, ns.as_deref(), &q, table.then_some(include)))
                    .await
            }
            (Method::GET, Some(name)) => {
                let obj = registry
                    .store
                    .entry(res, &ns, &name)?
                    .ok_or_else(|| ApiError::not_found(res, &name))?;
                Ok(self.object_response(StatusCode::OK, res, &obj, table.then_some(include)))
            }
            (Method::POST, None) => {
                let body = parse_body(&body)?;
                let obj = blocking(move || registry.create(res, &ns, body, &opts)).await?;
                Ok(self.object_response(StatusCode::CREATED, res, &obj, None))
            }
            (Method::PUT, Some(name)) => {
                let body = parse_body(&body)?;
                let sub = t.sub.clone();
                let (obj, created) =
                    blocking(move || registry.update(res, &ns, &name, sub.as_deref(), body, &opts))
                        .await?;
                let code = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                Ok(self.object_response(code, res, &obj, None))
            }
            (Method::PATCH, Some(name)) => {
                let ty = PatchType::from_content_type(&content_type)
                    .ok_or_else(|| ApiError::unsupported_media_type(&content_type))?;
                // A merge, strategic or apply patch names fields as the
                // object does (apply configurations sent as JSON).
                if ty != PatchType::Json
                    && let Ok(patch) = serde_json::from_slice::<Value>(&body)
                {
                    check_fields(&patch, true)?;
                }
                let sub = t.sub.clone();
                if ty == PatchType::Apply {
                    let (obj, created) = blocking(move || {
                        registry.apply(res, &ns, &name, sub.as_deref(), &body, &opts)
                    })
                    .await?;
                    let code = if created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    return Ok(self.object_response(code, res, &obj, None));
                }
                let obj = blocking(move || {
                    registry.patch(res, &ns, &name, sub.as_deref(), (ty, &body), &opts)
                })
                .await?;
                Ok(self.object_response(StatusCode::OK, res, &obj, None))
            }
            (Method::DELETE, name) => {
                let del = delete_options(&q, &body)?;
                match name {
                    Some(name) => {
                        let obj = blocking(move || registry.delete(res, &ns, &name, &del)).await?;
                        Ok(self.object_response(StatusCode::OK, res, &obj, None))
                    }
                    None => {
                        let labels = LabelSelector::parse(
                            q.get("labelSelector").map_or("", String::as_str),
                        )?;
                        let fields = FieldSelector::parse(
                            q.get("fieldSelector").map_or("", String::as_str),
                            res,
                        )?;
                        let scope = t.namespace.clone();
                        let deleted = blocking(move || {
                            let page = registry.store.list_entries(
                                res,
                                scope.as_deref(),
                                None,
                                0,
                                |e| labels.matches(&e.attrs) && fields.matches(&e.attrs),
                            )?;
                            let mut out = Vec::new();
                            for obj in page.items {
                                let obj = obj.value()?;
                                match registry.delete(
                                    res,
                                    crate::object::namespace(&obj),
                                    crate::object::name(&obj),
                                    &del,
                                ) {
                                    Ok(v) => out.push(v),
                                    Err(e) if e.code == 404 => {}
                                    Err(e) => return Err(e),
                                }
                            }
                            Ok(out)
                        })
                        .await?;
                        let items = deleted
                            .iter()
                            .map(|e| e.value())
                            .collect::<Result<Vec<_>, _>>()?;
                        Ok(json_response(
                            StatusCode::OK,
                            &json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": {}, "items": items}),
                        ))
                    }
                }
            }
            (m, _) => Err(ApiError::method_not_allowed(m.as_str())),
        }
    }

    /// POST of an authorization.k8s.io review: answered, never stored.
    async fn review(
        &self,
        req: Request<Incoming>,
        t: &Target,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        if req.method() != Method::POST || t.name.is_some() {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        let review = read_answered(req, t.res.kind).await?;
        let answer = if t.res.kind == "TokenReview" {
            crate::serviceaccount::review::answer(
                &self.registry.store,
                &self.auth,
                &self.tokens,
                &review,
            )
        } else {
            rbac::review::answer(&self.authorizer, t.res, user, &review)?
        };
        Ok(json_response(StatusCode::CREATED, &answer))
    }

    /// POST of a TokenRequest to `serviceaccounts/NAME/token`: a new token
    /// (see [`crate::serviceaccount::request`]).
    async fn token_request(
        &self,
        req: Request<Incoming>,
        ns: &str,
        name: &str,
        user: &User,
    ) -> Result<Response<Body>, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        let request = read_answered(req, "TokenRequest").await?;
        let answer = crate::serviceaccount::request::create(
            &self.registry.store,
            &self.tokens,
            user,
            ns,
            name,
            &request,
        )?;
        Ok(json_response(StatusCode::CREATED, &answer))
    }

    /// POST of a v1 Binding: binds the pod (see [`crate::binding`]).
    async fn binding(
        &self,
        req: Request<Incoming>,
        ns: String,
        pod: Option<String>,
    ) -> Result<Response<Body>, ApiError> {
        if req.method() != Method::POST {
            return Err(ApiError::method_not_allowed(req.method().as_str()));
        }
        let dry = dry_run(&query(&req))?;
        let (_, body) = read_body(req).await?;
        let binding = crate::binding::Binding::parse(&ns, pod.as_deref(), &parse_json(&body)?)?;
        let registry = self.registry.clone();
        blocking(move || crate::binding::bind(&registry, &ns, &binding, dry)).await?;
        Ok(json_response(
            StatusCode::CREATED,
            &crate::binding::success(),
        ))
    }

    fn object_response(
        &self,
        code: StatusCode,
        res: &Resource,
        entry: &Entry,
        table: Option<Include>,
    ) -> Response<Body> {
        match table {
            Some(include) => {
                let obj = entry.value().unwrap_or(Value::Null);
                let meta =
                    json!({"resourceVersion": crate::object::resource_version(&obj).to_string()});
                json_response(code, &table::table(res, [&obj], meta, include, true))
            }
            // The stored bytes are the reply: no re-serialization.
            None => json_bytes(code, entry.json.clone()),
        }
    }

    fn watch(
        &self,
        res: &'static Resource,
        ns: Option<String>,
        q: &Query,
        table: Option<Include>,
    ) -> Result<Response<Body>, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), res)?;
        let send_initial = flag(q, "sendInitialEvents");
        let rv_match = q
            .get("resourceVersionMatch")
            .map(String::as_str)
            .unwrap_or("");
        let invalid = |msg: &str| {
            ApiError::invalid(
                &resources::NAMESPACES,
                "",
                vec![crate::error::Cause::forbidden("resourceVersionMatch", msg)],
            )
        };
        if send_initial && rv_match != "NotOlderThan" {
            return Err(invalid(
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !send_initial && !rv_match.is_empty() {
            return Err(invalid(
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            ));
        }
        let rv = q.get("resourceVersion").map(String::as_str).unwrap_or("");
        let start = match (rv, send_initial) {
            ("" | "0", _) | (_, true) => Start::Current,
            (n, false) => {
                let rv: u64 = n.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid resource version: {n:?}"))
                })?;
                // A version this server never reached (a client that talked
                // to another store) gets 410 in the stream: clients relist on
                // it, where an HTTP 504 makes kube-rs retry the same version.
                let current = self.registry.store.revision();
                if rv > current {
                    Start::Refused(ApiError::too_large_resource_version(rv, current))
                } else {
                    Start::After(rv)
                }
            }
        };
        let requested: u64 = match q.get("timeoutSeconds") {
            Some(s) => s
                .parse()
                .map_err(|_| ApiError::bad_request("invalid timeoutSeconds"))?,
            None => 0,
        };
        // 0 or unset: as kube-apiserver, a random time between 30 and 60
        // minutes; anything longer is cut to an hour.
        let timeout = Duration::from_secs(match requested {
            0 => rand::rng().random_range(1800..3600),
            n => n.min(3600),
        });
        let req = WatchRequest {
            resource: res,
            namespace: ns,
            labels,
            fields,
            start,
            send_initial_events: send_initial,
            bookmarks: flag(q, "allowWatchBookmarks"),
            timeout,
            table,
        };
        let stream = watch::WatchBody::new(self.registry.clone(), req);
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        );
        Ok(r)
    }
}

fn list(
    registry: &Registry,
    res: &'static Resource,
    ns: Option<&str>,
    q: &Query,
    table: Option<Include>,
) -> Result<Response<Body>, ApiError> {
    if flag(q, "sendInitialEvents") {
        return Err(ApiError::invalid(
            &resources::NAMESPACES,
            "",
            vec![crate::error::Cause::forbidden(
                "sendInitialEvents",
                "sendInitialEvents is forbidden for list",
            )],
        ));
    }
    let labels = LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), res)?;
    let limit: usize = match q.get("limit") {
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        None => 0,
    };
    let after = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => {
            let tok = decode_continue(c)?;
            // A token names a point in this store's history and a key in
            // the list it continues: one from the future, or for another
            // namespace, was not made by this server for this list.
            let foreign = tok.rv == 0
                || tok.rv > registry.store.revision()
                || ns.is_some_and(|ns| ns != tok.ns)
                || (!res.namespaced && !tok.ns.is_empty())
                || tok.name.is_empty();
            if foreign {
                return Err(ApiError::bad_request(
                    "continue key is not valid: it was not issued for this list by this server",
                ));
            }
            if tok.rv < registry.store.compacted() {
                return Err(ApiError::gone(
                    "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                ));
            }
            Some((tok.rv, (tok.ns, tok.name)))
        }
        None => None,
    };
    // Later pages report the first page's resourceVersion, so a watch that
    // follows the list replays every change made while it was paged.
    let (first_rv, after) = match after {
        Some((rv, key)) => (Some(rv), Some(key)),
        None => (None, None),
    };
    let page = registry
        .store
        .list_entries(res, ns, after.as_ref(), limit, |e| {
            labels.matches(&e.attrs) && fields.matches(&e.attrs)
        })?;
    let revision = first_rv.unwrap_or(page.revision);
    let mut meta = json!({"resourceVersion": revision.to_string()});
    if let Some(next) = &page.next {
        meta["continue"] = json!(encode_continue(revision, next));
    }
    if let Some(include) = table {
        let values = page
            .items
            .iter()
            .map(|e| e.value())
            .collect::<Result<Vec<_>, _>>()?;
        let items = values.iter();
        return Ok(json_response(
            StatusCode::OK,
            &table::table(res, items, meta, include, true),
        ));
    }
    // Lists can be large: write the items straight into one buffer.
    let mut buf =
        Vec::with_capacity(256 + page.items.iter().map(|e| e.json.len() + 1).sum::<usize>());
    buf.extend_from_slice(
        format!(
            r#"{{"kind":"{}","apiVersion":"{}","metadata":"#,
            res.list_kind(),
            res.api_version()
        )
        .as_bytes(),
    );
    serde_json::to_writer(&mut buf, &meta).map_err(|e| ApiError::internal(e.to_string()))?;
    buf.extend_from_slice(br#","items":["#);
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(&item.json);
    }
    buf.extend_from_slice(b"]}");
    let mut r = Response::new(full(buf));
    r.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// GET, PUT and PATCH of a workload's `scale` subresource (an
/// autoscaling/v1 Scale), as `kubectl scale` uses it.
#[allow(clippy::too_many_arguments)]
async fn scale_subresource(
    registry: Arc<Registry>,
    res: &'static Resource,
    ns: String,
    name: String,
    method: Method,
    content_type: &str,
    body: Bytes,
    opts: WriteOptions,
) -> Result<Response<Body>, ApiError> {
    use crate::registry::ScaleChange;
    let patch = match method {
        Method::GET | Method::PUT => None,
        Method::PATCH => Some(
            PatchType::from_content_type(content_type)
                .filter(|t| *t != PatchType::Apply)
                .ok_or_else(|| ApiError::unsupported_media_type(content_type))?,
        ),
        m => return Err(ApiError::method_not_allowed(m.as_str())),
    };
    let replace = if method == Method::PUT {
        Some(parse_json(&body)?)
    } else {
        None
    };
    let scale = blocking(move || match (replace, patch) {
        (Some(scale), _) => {
            registry.update_scale(res, &ns, &name, ScaleChange::Replace(scale), &opts)
        }
        (None, Some(ty)) => {
            registry.update_scale(res, &ns, &name, ScaleChange::Patch(ty, &body), &opts)
        }
        (None, None) => registry.scale(res, &ns, &name),
    })
    .await?;
    Ok(json_response(StatusCode::OK, &scale))
}

/// Re-encodes a successful JSON object or list response as protobuf; one
/// that cannot be encoded is served as JSON, which protobuf clients accept.
async fn protobuf_response(res: &'static Resource, resp: Response<Body>) -> Response<Body> {
    let is_json = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == b"application/json");
    if !resp.status().is_success() || !is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(collected) = body.collect().await;
    let bytes = collected.to_bytes();
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| protobuf::encode(res, &v).map_err(|e| e.to_string()));
    match encoded {
        Ok(pb) => {
            parts.headers.insert(
                CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(protobuf::MEDIA_TYPE),
            );
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            Response::from_parts(parts, full(pb))
        }
        Err(error) => {
            tracing::debug!(kind = res.kind, %error, "served as JSON");
            Response::from_parts(parts, full(bytes))
        }
    }
}

/// A request's `Content-Type` (empty when absent) and its body, at most
/// [`MAX_BODY`].
async fn read_body(req: Request<Incoming>) -> Result<(String, Bytes), ApiError> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::too_large(format!("request body: {e}")))?
        .to_bytes();
    Ok((content_type, body))
}

/// The body of a request that is answered, not stored (a review, a
/// TokenRequest): JSON or protobuf of `kind`, at most [`MAX_BODY`].
async fn read_answered(req: Request<Incoming>, kind: &str) -> Result<Value, ApiError> {
    let (content_type, body) = read_body(req).await?;
    match content_type.split(';').next().unwrap_or("").trim() {
        "" | "application/json" => parse_json(&body),
        protobuf::MEDIA_TYPE => protobuf::decode(kind, &body),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

fn delete_options(q: &Query, body: &[u8]) -> Result<DeleteOptions, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        parse_json(body)?
    };
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse()
                .map_err(|_| ApiError::bad_request("invalid gracePeriodSeconds"))?,
        ),
        None => b.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    let body_dry = b
        .get("dryRun")
        .and_then(Value::as_array)
        .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOptions {
        dry_run: dry_run(q)? || body_dry,
        grace_period_seconds: grace,
        propagation_policy: q.get("propagationPolicy").cloned().or_else(|| {
            b.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(String::from)
        }),
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        precondition_resource_version: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
    })
}

/// Runs a synchronous store write off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("write task failed: {e}")))?
}
