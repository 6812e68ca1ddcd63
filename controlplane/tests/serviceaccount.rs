//! ServiceAccount tokens end to end against the real binary and real
//! kubectl: `kubectl create token` (TokenRequest) with its validation,
//! TokenReview, tokens as credentials (RBAC, revocation), the node's
//! token rights, the per-namespace `default` ServiceAccount and
//! `kube-root-ca.crt`, the pod admission that mounts the token, and the
//! JWKS that verifies it. One apiserver for all steps.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};

use common::{ApiServer, eventually, have_kubectl};
use ferry_controlplane::serviceaccount::token::{Claims, ISSUER, ObjectRef, Signer};

const MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn mint(api: &ApiServer, user: &str) -> PathBuf {
    let out = api
        .dir
        .path()
        .join(format!("{}.kubeconfig", user.replace(':', "_")));
    let o = Command::new(env!("CARGO_BIN_EXE_ferry-apiserver"))
        .arg("--data-dir")
        .arg(api.data_dir())
        .args(["kubeconfig", "--user", user, "--server"])
        .arg(format!("https://127.0.0.1:{}", api.port))
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run ferry-apiserver kubeconfig");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    out
}

fn run(api: &ApiServer, kc: &Path, args: &[&str]) -> Output {
    api.kubectl_as(kc, args, None)
}

fn ok(api: &ApiServer, kc: &Path, args: &[&str]) -> String {
    let o = run(api, kc, args);
    assert!(
        o.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn fails(api: &ApiServer, kc: &Path, args: &[&str]) -> String {
    let o = run(api, kc, args);
    assert!(
        !o.status.success(),
        "kubectl {args:?} succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("json")
}

async fn review(client: &kube::Client, token: &str, audiences: &[&str]) -> Value {
    let api: Api<TokenReview> = Api::all(client.clone());
    let tr = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: (!audiences.is_empty())
                .then(|| audiences.iter().map(|a| a.to_string()).collect()),
        },
        ..Default::default()
    };
    let answer = api
        .create(&PostParams::default(), &tr)
        .await
        .expect("tokenreview");
    serde_json::to_value(answer.status).expect("status")
}

fn pod(name: &str, sa: &str, node: Option<&str>, extra: Value) -> Pod {
    let mut p = json!({"metadata": {"name": name}, "spec": {
        "serviceAccountName": sa,
        "initContainers": [{"name": "init", "image": "busybox"}],
        "containers": [{"name": "c", "image": "busybox"}]}});
    if let Some(n) = node {
        p["spec"]["nodeName"] = json!(n);
    }
    if let Value::Object(m) = extra {
        for (k, v) in m {
            p["spec"][k] = v;
        }
    }
    serde_json::from_value(p).expect("pod")
}

#[tokio::test]
async fn service_account_tokens_end_to_end() {
    if !have_kubectl() {
        return;
    }
    let api = ApiServer::start(&[]);
    let admin = api.kubeconfig();
    let client = api.client().await;
    let ns = "sa-test";
    ok(&api, &admin, &["create", "namespace", ns]);

    // The serviceaccount and root-ca-cert-publisher controllers fill a new
    // namespace, and put back what is deleted or changed.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let ca = std::fs::read_to_string(api.data_dir().join("pki/ca.crt")).expect("ca");
    let has_ca = |cms: Api<ConfigMap>, ca: String| async move {
        let cm = cms.get_opt("kube-root-ca.crt").await.ok().flatten()?;
        (cm.data?.get("ca.crt")? == &ca).then_some(())
    };
    eventually(10, || {
        let sas = sas.clone();
        async move { sas.get_opt("default").await.ok().flatten().map(drop) }
    })
    .await;
    eventually(10, || has_ca(cms.clone(), ca.clone())).await;
    let old_uid = sas.get("default").await.expect("sa").metadata.uid;
    sas.delete("default", &DeleteParams::default())
        .await
        .expect("delete sa");
    cms.delete("kube-root-ca.crt", &DeleteParams::default())
        .await
        .expect("delete cm");
    eventually(10, || {
        let sas = sas.clone();
        let old = old_uid.clone();
        async move {
            let sa = sas.get_opt("default").await.ok().flatten()?;
            (sa.metadata.uid != old).then_some(())
        }
    })
    .await;
    eventually(10, || has_ca(cms.clone(), ca.clone())).await;
    ok(
        &api,
        &admin,
        &[
            "-n",
            ns,
            "patch",
            "configmap",
            "kube-root-ca.crt",
            "-p",
            r#"{"data":{"ca.crt":"forged"}}"#,
        ],
    );
    eventually(10, || has_ca(cms.clone(), ca.clone())).await;

    // kubectl create token: audience and duration honoured, upstream's
    // validation and errors.
    ok(
        &api,
        &admin,
        &["-n", ns, "create", "serviceaccount", "robot"],
    );
    let robot_uid = sas
        .get("robot")
        .await
        .expect("robot")
        .metadata
        .uid
        .expect("uid");
    let t = ok(
        &api,
        &admin,
        &[
            "-n",
            ns,
            "create",
            "token",
            "robot",
            "--audience",
            "vault",
            "--audience",
            "other",
            "--duration",
            "20m",
        ],
    );
    let c = claims_of(&t);
    assert_eq!(c["aud"], json!(["vault", "other"]));
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["sub"], format!("system:serviceaccount:{ns}:robot"));
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        1200
    );
    assert_eq!(
        c["kubernetes.io"]["serviceaccount"]["uid"],
        robot_uid.as_str()
    );
    let plain = ok(&api, &admin, &["-n", ns, "create", "token", "robot"]);
    let c = claims_of(&plain);
    assert_eq!(c["aud"], json!([ISSUER]));
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        3600
    );
    // Longer than 48 h: cut to 48 h.
    let long = ok(
        &api,
        &admin,
        &["-n", ns, "create", "token", "robot", "--duration", "1000h"],
    );
    let c = claims_of(&long);
    assert_eq!(
        c["exp"].as_i64().expect("exp") - c["iat"].as_i64().expect("iat"),
        48 * 3600
    );
    assert_eq!(
        fails(
            &api,
            &admin,
            &["-n", ns, "create", "token", "robot", "--duration", "1m"]
        ),
        "error: failed to create token: TokenRequest.authentication.k8s.io \"robot\" is invalid: spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"
    );
    assert_eq!(
        fails(&api, &admin, &["-n", ns, "create", "token", "ghost"]),
        "error: failed to create token: serviceaccounts \"ghost\" not found"
    );

    // TokenReview: who a token is, and who it is not.
    let r = review(&client, &plain, &[]).await;
    assert_eq!(r["authenticated"], true, "{r}");
    assert_eq!(
        r["user"]["username"],
        format!("system:serviceaccount:{ns}:robot")
    );
    assert_eq!(r["user"]["uid"], robot_uid.as_str());
    assert_eq!(
        r["user"]["groups"],
        json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated"
        ])
    );
    assert_eq!(r["audiences"], json!([ISSUER]));
    let r = review(&client, &t, &["vault"]).await;
    assert_eq!(r["authenticated"], true, "{r}");
    assert_eq!(r["audiences"], json!(["vault"]));
    // A token for vault does not reach the API, nor is it the API's.
    assert_eq!(review(&client, &t, &[]).await["authenticated"], false);
    assert_eq!(
        fails(&api, &admin, &["--token", &t, "get", "svc"]),
        "error: You must be logged in to the server (Unauthorized)"
    );
    // Forged: the claims changed under the signature.
    let mut parts: Vec<String> = plain.split('.').map(String::from).collect();
    let mut forged = claims_of(&plain);
    forged["sub"] = json!("system:serviceaccount:kube-system:default");
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
    let r = review(&client, &parts.join("."), &[]).await;
    assert_eq!(r["authenticated"], false, "{r}");
    // Signed by the apiserver's own key but expired, or by another key.
    let key = Signer::load_or_create(&api.data_dir().join("pki/sa.key")).expect("the key");
    let sa_ref = ObjectRef {
        name: "robot".into(),
        uid: robot_uid.clone(),
    };
    let now = jiff::Timestamp::now().as_second();
    let expired = Claims::new(ns, sa_ref.clone(), vec![ISSUER.into()], now - 7200, 3600);
    let r = review(&client, &key.sign(&expired).expect("sign"), &[]).await;
    assert_eq!(r["authenticated"], false, "{r}");
    assert!(
        r["error"].as_str().expect("error").contains("expired"),
        "{r}"
    );
    let fresh = Claims::new(ns, sa_ref, vec![ISSUER.into()], now, 3600);
    assert_eq!(
        review(&client, &key.sign(&fresh).expect("sign"), &[]).await["authenticated"],
        true
    );
    let dir = tempfile::tempdir().expect("tmp");
    let other = Signer::load_or_create(&dir.path().join("k")).expect("other key");
    let r = review(&client, &other.sign(&fresh).expect("sign"), &[]).await;
    assert_eq!(r["authenticated"], false, "{r}");
    // The static token file answers too.
    let admin_token = std::fs::read_to_string(&admin)
        .expect("kubeconfig")
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: ").map(String::from))
        .expect("admin token");
    let r = review(&client, &admin_token, &[]).await;
    assert_eq!(r["user"]["username"], "admin");
    assert_eq!(
        review(&client, "garbage", &[]).await["authenticated"],
        false
    );

    // A token is a credential: 403 naming the account until a binding
    // grants it, then it works.
    assert_eq!(
        fails(&api, &admin, &["--token", &plain, "-n", ns, "get", "svc"]),
        format!(
            "Error from server (Forbidden): services is forbidden: User \"system:serviceaccount:{ns}:robot\" cannot list resource \"services\" in API group \"\" in the namespace \"{ns}\""
        )
    );
    ok(
        &api,
        &admin,
        &[
            "-n",
            ns,
            "create",
            "rolebinding",
            "robot-view",
            "--clusterrole=view",
            &format!("--serviceaccount={ns}:robot"),
        ],
    );
    ok(&api, &admin, &["--token", &plain, "-n", ns, "get", "svc"]);
    // Every ServiceAccount may read the issuer's discovery documents.
    let jwks: Value = serde_json::from_str(&ok(
        &api,
        &admin,
        &["--token", &plain, "get", "--raw", "/openid/v1/jwks"],
    ))
    .expect("jwks");
    let oidc: Value = serde_json::from_str(&ok(
        &api,
        &admin,
        &[
            "--token",
            &plain,
            "get",
            "--raw",
            "/.well-known/openid-configuration",
        ],
    ))
    .expect("openid configuration");
    assert_eq!(oidc["issuer"], ISSUER);
    // The JWKS verifies the token: P-256 point from x and y, ES256.
    let k = &jwks["keys"][0];
    assert_eq!(k["alg"], "ES256");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(plain.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("header json");
    assert_eq!(header["kid"], k["kid"]);
    let mut point = vec![4u8];
    for c in ["x", "y"] {
        point.extend(
            URL_SAFE_NO_PAD
                .decode(k[c].as_str().expect("coordinate"))
                .expect("b64"),
        );
    }
    let (signed, sig) = plain.rsplit_once('.').expect("three parts");
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, &point)
        .verify(
            signed.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).expect("b64"),
        )
        .expect("the JWKS key verifies the token");

    // Pod admission: the token volume, mounted read-only everywhere;
    // automount false on the pod or the account leaves it out; an
    // account that does not exist is refused.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = pods
        .create(
            &PostParams::default(),
            &pod("mounted", "robot", None, json!({})),
        )
        .await
        .expect("pod");
    let spec = p.spec.expect("spec");
    assert_eq!(spec.service_account.as_deref(), Some("robot"));
    let vols = spec.volumes.expect("volumes");
    let vol = vols
        .iter()
        .find(|v| v.name.starts_with("kube-api-access-"))
        .expect("the token volume");
    assert_eq!(vol.name.len(), "kube-api-access-".len() + 5);
    let projected = serde_json::to_value(vol.projected.as_ref().expect("projected")).expect("json");
    assert_eq!(
        projected,
        json!({"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]})
    );
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
    {
        let m = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == MOUNT)
            .unwrap_or_else(|| panic!("{} has no token mount", c.name));
        assert_eq!(m.name, vol.name);
        assert_eq!(m.read_only, Some(true));
    }
    let off = pods
        .create(
            &PostParams::default(),
            &pod(
                "off",
                "robot",
                None,
                json!({"automountServiceAccountToken": false}),
            ),
        )
        .await
        .expect("pod");
    assert!(off.spec.expect("spec").volumes.is_none());
    ok(
        &api,
        &admin,
        &["-n", ns, "create", "serviceaccount", "quiet"],
    );
    ok(
        &api,
        &admin,
        &[
            "-n",
            ns,
            "patch",
            "serviceaccount",
            "quiet",
            "-p",
            r#"{"automountServiceAccountToken":false}"#,
        ],
    );
    let quiet = pods
        .create(
            &PostParams::default(),
            &pod("quiet", "quiet", None, json!({})),
        )
        .await
        .expect("pod");
    assert!(quiet.spec.expect("spec").volumes.is_none());
    let err = pods
        .create(
            &PostParams::default(),
            &pod("ghostly", "ghost", None, json!({})),
        )
        .await
        .expect_err("no such account");
    match err {
        kube::Error::Api(e) => {
            assert_eq!(e.code, 403);
            assert_eq!(
                e.message,
                format!(
                    "pods \"ghostly\" is forbidden: error looking up service account {ns}/ghost: serviceaccount \"ghost\" not found"
                )
            );
        }
        other => panic!("{other}"),
    }

    // A node mints tokens only for the accounts of its own pods, bound to
    // such a pod; the token names the pod and the node.
    for n in ["n1", "n2"] {
        let o = api.kubectl_as(
            &admin,
            &["create", "-f", "-"],
            Some(&format!(
                r#"{{"apiVersion":"v1","kind":"Node","metadata":{{"name":"{n}"}}}}"#
            )),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let on_n1 = pods
        .create(
            &PostParams::default(),
            &pod("on-n1", "robot", Some("n1"), json!({})),
        )
        .await
        .expect("pod");
    let pod_uid = on_n1.metadata.uid.expect("uid");
    let n1 = mint(&api, "system:node:n1");
    let n2 = mint(&api, "system:node:n2");
    let bound = [
        "-n",
        ns,
        "create",
        "token",
        "robot",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "on-n1",
        "--bound-object-uid",
        &pod_uid,
    ];
    let node_token = ok(&api, &n1, &bound);
    let c = claims_of(&node_token);
    assert_eq!(c["kubernetes.io"]["pod"]["uid"], pod_uid.as_str());
    assert_eq!(c["kubernetes.io"]["node"]["name"], "n1");
    let n1_uid = kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .get("n1")
        .await
        .expect("node")
        .metadata
        .uid
        .expect("uid");
    assert_eq!(c["kubernetes.io"]["node"]["uid"], n1_uid.as_str());
    let r = review(&client, &node_token, &[]).await;
    assert_eq!(
        r["user"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["n1"])
    );
    assert!(
        fails(&api, &n1, &["-n", ns, "create", "token", "robot"])
            .contains("node requested token not bound to a pod"),
    );
    assert!(
        fails(&api, &n2, &bound).contains(&format!(
            "User \"system:node:n2\" cannot create resource \"serviceaccounts/token\" in API group \"\" in the namespace \"{ns}\""
        ))
    );
    assert!(
        fails(&api, &n1, &["-n", ns, "create", "token", "quiet"])
            .contains("cannot create resource \"serviceaccounts/token\""),
    );
    // Bound to a pod running as another account: upstream's refusal.
    assert_eq!(
        fails(
            &api,
            &admin,
            &[
                "-n",
                ns,
                "create",
                "token",
                "quiet",
                "--bound-object-kind",
                "Pod",
                "--bound-object-name",
                "on-n1"
            ]
        ),
        "error: failed to create token: cannot bind token for serviceaccount \"quiet\" to pod running with different serviceaccount name."
    );

    // Revocation: the pod goes, its token stops working (within the
    // verification cache's bound); the account goes, all its tokens do.
    assert_eq!(
        review(&client, &node_token, &[]).await["authenticated"],
        true
    );
    pods.delete("on-n1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete pod");
    eventually(12, || {
        let client = client.clone();
        let t = node_token.clone();
        async move { (review(&client, &t, &[]).await["authenticated"] == false).then_some(()) }
    })
    .await;
    ok(&api, &admin, &["--token", &plain, "-n", ns, "get", "svc"]);
    sas.delete("robot", &DeleteParams::default())
        .await
        .expect("delete sa");
    eventually(12, || {
        let client = client.clone();
        let t = plain.clone();
        async move { (review(&client, &t, &[]).await["authenticated"] == false).then_some(()) }
    })
    .await;
    assert_eq!(
        fails(&api, &admin, &["--token", &plain, "-n", ns, "get", "svc"]),
        "error: You must be logged in to the server (Unauthorized)"
    );
    let log = std::fs::read_to_string(api.dir.path().join("apiserver.log")).expect("log");
    assert!(
        log.contains("has been deleted"),
        "the refusal is logged with its reason"
    );
    assert!(!log.contains(&plain), "a token is never logged");
}
