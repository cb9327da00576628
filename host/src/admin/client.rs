//! The client the CLI uses to talk to running hosts' admin endpoints.
//!
//! The endpoint is our own and answers small bodies with a
//! `Content-Length`, so a plain HTTP/1.1 request over a socket is enough.

use crate::reload::{Deploy, DeployOutcome, ReloadOutcome};
use crate::status::Live;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a request may take before the host counts as not answering.
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Talks to admin endpoints, with the bearer token they need when bound
/// off loopback.
#[derive(Debug, Clone, Default)]
pub struct Client {
    token: Option<String>,
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

impl Client {
    /// A client sending `token` (none: for an endpoint on loopback).
    pub fn new(token: Option<String>) -> Client {
        Client { token }
    }

    /// A client with the token of `config` (or `PILLOWTOP_ADMIN_TOKEN`).
    pub fn for_config(config: &crate::config::AdminConfig) -> Client {
        Client::new(config.token())
    }

    /// Ask the host at `base_url` to reload plugin `name` (every plugin when
    /// `None`) and wait for the outcomes.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn request_reload(
        &self,
        base_url: &str,
        name: Option<&str>,
    ) -> Result<Vec<ReloadOutcome>, ClientError> {
        let path = match name {
            Some(n) => format!("/plugins/{n}/reload"),
            None => "/plugins/reload".into(),
        };
        let body = self.request(base_url, "POST", &path, None).await?;
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
        &self,
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
        let answer = self
            .request(
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

    /// Ask every live host process recorded in `store` (by the liveness rule)
    /// to reload plugin `name` (every plugin when `None`); each admin URL with
    /// what it answered.
    ///
    /// # Errors
    ///
    /// See [`ReloadRequestError`].
    pub async fn reload_running(
        &self,
        store: &crate::store::Store,
        name: Option<&str>,
    ) -> Result<Vec<(String, Vec<ReloadOutcome>)>, ReloadRequestError> {
        let mut out = Vec::new();
        for url in running_urls(store).await? {
            let outcomes = self.request_reload(&url, name).await?;
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
        &self,
        store: &crate::store::Store,
        name: &str,
        command: &Deploy,
    ) -> Result<Vec<(String, Vec<DeployOutcome>)>, ReloadRequestError> {
        let mut out = Vec::new();
        for url in running_urls(store).await? {
            let outcomes = self.request_deploy(&url, name, command).await?;
            out.push((url, outcomes));
        }
        Ok(out)
    }

    /// `GET path` from the host at `base_url` (e.g. `/metrics`); the body.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn get(&self, base_url: &str, path: &str) -> Result<String, ClientError> {
        self.request(base_url, "GET", path, None).await
    }

    /// The positions the host at `base_url` holds ahead of its checkpoints
    /// (`GET /status/live`).
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn live(&self, base_url: &str) -> Result<Vec<Live>, ClientError> {
        let body = self.get(base_url, "/status/live").await?;
        serde_json::from_str(&body).map_err(|e| ClientError::Protocol {
            url: format!("{base_url}/status/live"),
            message: format!("{e}: {body}"),
        })
    }

    /// One request (with a JSON `body`, if any); returns the body of a 2xx
    /// answer.
    ///
    /// # Errors
    ///
    /// See [`ClientError`].
    pub async fn request(
        &self,
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
        let content = body.unwrap_or("");
        let authorization = self
            .token
            .as_deref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\n{authorization}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{content}",
            content.len()
        );
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(authority).await?;
            stream.write_all(head.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| {
                connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer in {}s", TIMEOUT.as_secs()),
                ))
            })?
            .map_err(connect)?;
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

/// The admin URLs of the live host processes recorded in `store` (by the
/// liveness rule).
///
/// # Errors
///
/// When the store cannot be read, or no process is running.
pub async fn running_urls(store: &crate::store::Store) -> Result<Vec<String>, ReloadRequestError> {
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
