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
//!
//! It listens on loopback by default and has no authentication: whoever
//! can reach it can reload plugins (not change them). Bind it to a
//! non-loopback address only behind a network policy.

use crate::reload::{Plugins, Refusal, ReloadOutcome};
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
    if !plugins.slots().iter().any(|s| s.name() == name) {
        let names: Vec<String> = plugins.slots().iter().map(|s| s.name().into()).collect();
        return Err((
            StatusCode::NOT_FOUND,
            format!(
                "no plugin named {name:?} is loaded here; loaded: {}\n",
                names.join(", ")
            ),
        ));
    }
    Ok(Json(plugins.reload_named(Some(&name)).await))
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
    let body = request(base_url, "POST", &path).await?;
    serde_json::from_str(&body).map_err(|e| ClientError::Protocol {
        url: base_url.into(),
        message: format!("{e}: {body}"),
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
    let mut out = Vec::with_capacity(urls.len());
    for url in urls {
        let outcomes = request_reload(&url, name).await?;
        out.push((url, outcomes));
    }
    Ok(out)
}

/// `GET path` from the host at `base_url` (e.g. `/metrics`); the body.
///
/// # Errors
///
/// See [`ClientError`].
pub async fn get(base_url: &str, path: &str) -> Result<String, ClientError> {
    request(base_url, "GET", path).await
}

/// One request; returns the body of a 2xx answer.
async fn request(base_url: &str, method: &str, path: &str) -> Result<String, ClientError> {
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
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
