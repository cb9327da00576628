//! The admin HTTP endpoint of a running host, and the client the CLI uses
//! to talk to it.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus metrics ([`crate::metrics`]) |
//! | `GET /healthz` | `ok` while the process runs |
//! | `GET /plugins` | live version and last refusal of every plugin |
//! | `POST /plugins/reload` | reload every plugin now |
//! | `POST /plugins/{name}/reload` | reload one plugin now; answers with the outcome |
//! | `POST /plugins/{name}/shadow` | run the candidate in `{"manifest": PATH}` beside the live version |
//! | `DELETE /plugins/{name}/shadow` | stop the candidate |
//! | `POST /plugins/{name}/promote` | make the candidate live |
//! | `POST /plugins/{name}/rollback` | bring the previous version back |
//!
//! It listens on loopback by default and has no authentication: whoever
//! can reach it can reload, shadow, promote and roll back plugins (and
//! name a manifest on the host's machine to shadow). Bind it to a
//! non-loopback address only behind a network policy.

use crate::reload::{Deploy, DeployOutcome, Plugins, Refusal, ReloadOutcome};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{self, post};
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error(
    "admin endpoint: cannot listen on {address}: {source}; set [admin] listen_address to a free IP:PORT (port 0 picks one) or enabled = false"
)]
pub struct BindError {
    /// The address.
    pub address: String,
    /// The I/O error.
    pub source: std::io::Error,
}

/// A bound, not yet serving, admin endpoint.
pub struct Admin {
    listener: tokio::net::TcpListener,
    url: String,
}

impl Admin {
    /// Bind `address` (`IP:PORT`; port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// When the address is invalid or taken.
    pub async fn bind(address: &str) -> Result<Admin, BindError> {
        let err = |source| BindError {
            address: address.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(address).await.map_err(err)?;
        let local: SocketAddr = listener.local_addr().map_err(err)?;
        Ok(Admin {
            listener,
            url: format!("http://{local}"),
        })
    }

    /// `http://IP:PORT` it answers on.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serve until `shutdown`.
    pub async fn serve(self, plugins: Arc<Plugins>, shutdown: CancellationToken) {
        let app = Router::new()
            .route("/metrics", routing::get(metrics))
            .route("/healthz", routing::get(|| async { "ok\n" }))
            .route("/plugins", routing::get(list))
            .route("/plugins/reload", post(reload_all))
            .route("/plugins/{name}/reload", post(reload_one))
            .route(
                "/plugins/{name}/shadow",
                post(shadow_one).delete(|s, n| deploy_one(s, n, Deploy::StopShadow)),
            )
            .route(
                "/plugins/{name}/promote",
                post(|s, n| deploy_one(s, n, Deploy::Promote)),
            )
            .route(
                "/plugins/{name}/rollback",
                post(|s, n| deploy_one(s, n, Deploy::Rollback)),
            )
            .with_state(plugins);
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    }
}

async fn metrics(State(plugins): State<Arc<Plugins>>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        plugins.metrics().render(),
    )
}

/// A plugin as `GET /plugins` shows it.
#[derive(Debug, Serialize)]
struct PluginView {
    plugin: String,
    manifest: String,
    live: String,
    refused: Option<Refusal>,
    /// The candidate running beside the live version.
    shadow: Option<String>,
    /// The version a rollback brings back.
    previous: Option<String>,
}

async fn list(State(plugins): State<Arc<Plugins>>) -> Json<Vec<PluginView>> {
    Json(
        plugins
            .slots()
            .iter()
            .map(|s| PluginView {
                plugin: s.name().to_owned(),
                manifest: s.manifest_path().display().to_string(),
                live: s.live().0.version().to_string(),
                refused: s.refusal().0,
                shadow: s.shadow().map(|p| p.version().to_string()),
                previous: s.previous().map(|p| p.version().to_string()),
            })
            .collect(),
    )
}

async fn reload_all(State(plugins): State<Arc<Plugins>>) -> Json<Vec<ReloadOutcome>> {
    Json(plugins.reload_named(None).await)
}

async fn reload_one(
    State(plugins): State<Arc<Plugins>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ReloadOutcome>>, (StatusCode, String)> {
    loaded(&plugins, &name)?;
    Ok(Json(plugins.reload_named(Some(&name)).await))
}

/// 404 naming what is loaded, unless plugin `name` is.
fn loaded(plugins: &Plugins, name: &str) -> Result<(), (StatusCode, String)> {
    if plugins.slots().iter().any(|s| s.name() == name) {
        return Ok(());
    }
    let names: Vec<String> = plugins.slots().iter().map(|s| s.name().into()).collect();
    Err((
        StatusCode::NOT_FOUND,
        format!(
            "no plugin named {name:?} is loaded here; loaded: {}\n",
            names.join(", ")
        ),
    ))
}

/// The body of `POST /plugins/{name}/shadow`.
#[derive(Debug, Serialize, serde::Deserialize)]
struct ShadowRequest {
    /// The candidate's manifest, a path on the host's machine.
    manifest: std::path::PathBuf,
}

async fn shadow_one(
    state: State<Arc<Plugins>>,
    name: Path<String>,
    Json(request): Json<ShadowRequest>,
) -> Result<Json<Vec<DeployOutcome>>, (StatusCode, String)> {
    deploy_one(
        state,
        name,
        Deploy::Shadow {
            manifest: request.manifest,
        },
    )
    .await
}

async fn deploy_one(
    State(plugins): State<Arc<Plugins>>,
    Path(name): Path<String>,
    command: Deploy,
) -> Result<Json<Vec<DeployOutcome>>, (StatusCode, String)> {
    loaded(&plugins, &name)?;
    Ok(Json(plugins.deploy_named(&name, command).await))
}

/// Why a request to a host's admin endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Not reachable.
    #[error("cannot reach {url}: {source}")]
    Connect {
        /// The endpoint.
        url: String,
        /// The error.
        source: std::io::Error,
    },
    /// It answered with an error.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// The answer is not what the endpoint sends.
    #[error("{url} sent an unexpected answer: {message}")]
    Protocol {
        /// The endpoint.
        url: String,
        /// What was wrong.
        message: String,
    },
}

/// Ask the host at `base_url` to reload plugin `name` (every plugin when
/// `None`) and wait for the outcomes.
///
/// The endpoint is our own and answers small JSON bodies with a
/// `Content-Length`, so a plain HTTP/1.1 request over a socket is enough.
///
/// # Errors
///
/// See [`ClientError`].
pub async fn request_reload(
    base_url: &str,
    name: Option<&str>,
) -> Result<Vec<ReloadOutcome>, ClientError> {
    let path = match name {
        Some(n) => format!("/plugins/{n}/reload"),
        None => "/plugins/reload".into(),
    };
    let body = request(base_url, "POST", &path, None).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Protocol {
        url: base_url.into(),
        message: format!("{e}: {body}"),
    })
}

/// Ask the host at `base_url` to apply `command` to plugin `name`.
///
/// # Errors
///
/// See [`ClientError`].
pub async fn request_deploy(
    base_url: &str,
    name: &str,
    command: &Deploy,
) -> Result<Vec<DeployOutcome>, ClientError> {
    let (method, path, body) = match command {
        Deploy::Shadow { manifest } => (
            "POST",
            "shadow",
            Some(serde_json::json!({ "manifest": manifest }).to_string()),
        ),
        Deploy::StopShadow => ("DELETE", "shadow", None),
        Deploy::Promote => ("POST", "promote", None),
        Deploy::Rollback => ("POST", "rollback", None),
    };
    let answer = request(
        base_url,
        method,
        &format!("/plugins/{name}/{path}"),
        body.as_deref(),
    )
    .await?;
    serde_json::from_str(&answer).map_err(|e| ClientError::Protocol {
        url: base_url.into(),
        message: format!("{e}: {answer}"),
    })
}

/// Why `pillowtop plugin reload` could not ask the running hosts.
#[derive(Debug, thiserror::Error)]
pub enum ReloadRequestError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// No live process with an admin endpoint is recorded.
    #[error(
        "no running pillowtop process with an admin endpoint is recorded in the {0}; start one with `pillowtop run`, or send it SIGHUP"
    )]
    NoneRunning(String),
    /// A process did not answer.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Ask every live host process recorded in `store` (by the liveness rule)
/// to reload plugin `name` (every plugin when `None`); each admin URL with
/// what it answered.
///
/// # Errors
///
/// See [`ReloadRequestError`].
pub async fn reload_running(
    store: &crate::store::Store,
    name: Option<&str>,
) -> Result<Vec<(String, Vec<ReloadOutcome>)>, ReloadRequestError> {
    let mut out = Vec::new();
    for url in running_urls(store).await? {
        let outcomes = request_reload(&url, name).await?;
        out.push((url, outcomes));
    }
    Ok(out)
}

/// Ask every live host process recorded in `store` to apply `command`
/// to plugin `name`; each admin URL with what it answered.
///
/// # Errors
///
/// See [`ReloadRequestError`].
pub async fn deploy_running(
    store: &crate::store::Store,
    name: &str,
    command: &Deploy,
) -> Result<Vec<(String, Vec<DeployOutcome>)>, ReloadRequestError> {
    let mut out = Vec::new();
    for url in running_urls(store).await? {
        let outcomes = request_deploy(&url, name, command).await?;
        out.push((url, outcomes));
    }
    Ok(out)
}

/// The admin URLs of the live host processes recorded in `store` (by the
/// liveness rule).
async fn running_urls(store: &crate::store::Store) -> Result<Vec<String>, ReloadRequestError> {
    let now = crate::time::now_ms();
    let mut urls: Vec<String> = store
        .processes()
        .await?
        .into_iter()
        .filter(|p| p.liveness(now) == crate::store::Liveness::Running)
        .filter_map(|p| p.admin_url)
        .collect();
    urls.sort();
    urls.dedup();
    if urls.is_empty() {
        return Err(ReloadRequestError::NoneRunning(store.location().to_owned()));
    }
    Ok(urls)
}

/// `GET path` from the host at `base_url` (e.g. `/metrics`); the body.
///
/// # Errors
///
/// See [`ClientError`].
pub async fn get(base_url: &str, path: &str) -> Result<String, ClientError> {
    request(base_url, "GET", path, None).await
}

/// One request (with a JSON `body`, if any); returns the body of a 2xx
/// answer.
async fn request(
    base_url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<String, ClientError> {
    let url = format!("{base_url}{path}");
    let protocol = |message: String| ClientError::Protocol {
        url: url.clone(),
        message,
    };
    let authority = base_url
        .strip_prefix("http://")
        .ok_or_else(|| protocol("only http:// admin URLs are supported".into()))?;
    let connect = |source| ClientError::Connect {
        url: url.clone(),
        source,
    };
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(connect)?;
    let content = body.unwrap_or("");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
        content.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(connect)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(connect)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| protocol("no HTTP header".into()))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| protocol(format!("bad status line {:?}", head.lines().next())))?;
    if !(200..300).contains(&status) {
        return Err(ClientError::Status {
            url,
            status,
            body: body.trim().to_owned(),
        });
    }
    Ok(body.to_owned())
}
