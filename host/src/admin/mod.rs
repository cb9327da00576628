//! The admin HTTP endpoint of a running host, and the client the CLI uses
//! to talk to it ([`Client`]).
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the firefighting page: need-processing, rate, lag, versions, sinks, errors; polls `/status` |
//! | `GET /status` | the pillows' [`crate::status::Status`] as JSON, positions of this process laid over |
//! | `GET /status/live` | the positions this process holds ahead of its checkpoints ([`crate::status::Live`]) |
//! | `GET /healthz` | `ok`, or 503 with the reasons ([`crate::status::health`]) |
//! | `GET /metrics` | Prometheus metrics ([`crate::metrics`]) |
//! | `GET /errors/{id}` | one pillow error in full, as `pillowtop errors show` prints it |
//! | `GET /plugins` | live version and last refusal of every plugin |
//! | `POST /plugins/reload` | reload every plugin now |
//! | `POST /plugins/{name}/reload` | reload one plugin now; answers with the outcome |
//! | `POST /plugins/{name}/shadow` | run the candidate in `{"manifest": PATH}` beside the live version |
//! | `DELETE /plugins/{name}/shadow` | stop the candidate |
//! | `POST /plugins/{name}/promote` | make the candidate live |
//! | `POST /plugins/{name}/rollback` | bring the previous version back |
//!
//! It listens on loopback by default, where anyone on the machine may use
//! it. Bound to any other address it requires a bearer token
//! ([`crate::config::AdminConfig::token`]) on every route but
//! `[admin] open_routes` (`/healthz` and `/metrics` by default) and the
//! page; it refuses to start there without one ([`auth`]).

mod auth;
mod client;
mod observe;

pub use client::{Client, ClientError, ReloadRequestError, running_urls};
pub use observe::Gathered;

use crate::config::{AdminConfig, HostConfig, PillowConfig};
use crate::feed::Feed;
use crate::reload::{Deploy, DeployOutcome, Plugins, Refusal, ReloadOutcome};
use crate::store::Store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Html;
use axum::routing::{self, post};
use axum::{Json, Router};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The address is invalid or taken.
    #[error(
        "admin endpoint: cannot listen on {address}: {source}; set [admin] listen_address to a free IP:PORT (port 0 picks one) or enabled = false"
    )]
    Listen {
        /// The address.
        address: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Off loopback without a token.
    #[error(
        "admin endpoint: {address} is not a loopback address, and anyone who can reach it could reload, shadow and promote plugins; set [admin] token (or PILLOWTOP_ADMIN_TOKEN) to require a bearer token, or listen on 127.0.0.1"
    )]
    TokenRequired {
        /// The address.
        address: String,
    },
}

/// What the endpoint serves from: the plugins, and what status is
/// gathered from.
pub struct Context {
    /// The plugins (and the metrics registry).
    pub plugins: Arc<Plugins>,
    /// The pillows this process runs.
    pub pillows: Vec<PillowConfig>,
    /// The feed.
    pub feed: Feed,
    /// The store.
    pub store: Store,
    /// This process's number.
    pub process_num: u32,
    /// The host config (health rules, component size bound).
    pub config: Arc<HostConfig>,
    /// The latest status gathered, shared by the requests that read it
    /// (start with `Gathered::default()`).
    pub gathered: Gathered,
}

/// A bound, not yet serving, admin endpoint.
pub struct Admin {
    listener: tokio::net::TcpListener,
    url: String,
    token: Option<String>,
    open_routes: Vec<String>,
}

impl Admin {
    /// Bind `config.listen_address` (`IP:PORT`; port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// When the address is invalid or taken, or not loopback and no token
    /// is set.
    pub async fn bind(config: &AdminConfig) -> Result<Admin, BindError> {
        let address = config.listen_address.as_str();
        let err = |source| BindError::Listen {
            address: address.to_owned(),
            source,
        };
        let listener = tokio::net::TcpListener::bind(address).await.map_err(err)?;
        let local: SocketAddr = listener.local_addr().map_err(err)?;
        let token = config.token();
        if !local.ip().is_loopback() && token.is_none() {
            return Err(BindError::TokenRequired {
                address: address.to_owned(),
            });
        }
        Ok(Admin {
            listener,
            url: format!("http://{local}"),
            token,
            open_routes: config.open_routes.clone(),
        })
    }

    /// `http://IP:PORT` it answers on.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Serve until `shutdown`.
    pub async fn serve(self, context: Context, shutdown: CancellationToken) {
        let guard = Arc::new(auth::Guard::new(self.token, self.open_routes));
        let app = Router::new()
            .route("/", routing::get(|| async { Html(PAGE) }))
            .route("/status", routing::get(observe::status))
            .route("/status/live", routing::get(observe::live))
            .route("/healthz", routing::get(observe::healthz))
            .route("/metrics", routing::get(observe::metrics))
            .route("/errors/{id}", routing::get(observe::error))
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
            .layer(axum::middleware::from_fn_with_state(guard, auth::require))
            .with_state(Arc::new(context));
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    }
}

/// The firefighting page: static, no build step, no CDN.
const PAGE: &str = include_str!("page.html");

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

async fn list(State(context): State<Arc<Context>>) -> Json<Vec<PluginView>> {
    Json(
        context
            .plugins
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

async fn reload_all(State(context): State<Arc<Context>>) -> Json<Vec<ReloadOutcome>> {
    Json(context.plugins.reload_named(None).await)
}

async fn reload_one(
    State(context): State<Arc<Context>>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ReloadOutcome>>, (StatusCode, String)> {
    loaded(&context.plugins, &name)?;
    Ok(Json(context.plugins.reload_named(Some(&name)).await))
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
    state: State<Arc<Context>>,
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
    State(context): State<Arc<Context>>,
    Path(name): Path<String>,
    command: Deploy,
) -> Result<Json<Vec<DeployOutcome>>, (StatusCode, String)> {
    loaded(&context.plugins, &name)?;
    Ok(Json(context.plugins.deploy_named(&name, command).await))
}
