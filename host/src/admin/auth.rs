//! Who may use the admin endpoint.
//!
//! On loopback (the default) anyone on the machine may, as before. Bound
//! anywhere else, a bearer token is required ([`crate::config::AdminConfig::token`],
//! or `PILLOWTOP_ADMIN_TOKEN`) on every route but the open ones (`/healthz`
//! and `/metrics` by default, for load balancers and Prometheus) and the
//! page itself (`/`: static HTML with no data; its requests carry the
//! token given in the page's `#token=` fragment).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// The rule, built once from the config.
#[derive(Debug, Clone)]
pub(super) struct Guard {
    token: Option<String>,
    open: Vec<String>,
}

impl Guard {
    /// Requests need `Authorization: Bearer TOKEN` when `token` is set,
    /// except on the `open` paths (exact matches) and `/`.
    pub(super) fn new(token: Option<String>, open: Vec<String>) -> Guard {
        Guard { token, open }
    }

    /// Whether a request for `path` with this `Authorization` header may
    /// pass.
    pub(super) fn allows(&self, path: &str, authorization: Option<&str>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        if path == "/" || self.open.iter().any(|p| p == path) {
            return true;
        }
        authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes()))
    }
}

/// Compare without stopping at the first difference, so the time an
/// answer takes tells nothing about how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// The middleware: 401 with a `WWW-Authenticate` challenge for a request
/// the guard refuses.
pub(super) async fn require(
    State(guard): State<Arc<Guard>>,
    request: Request,
    next: Next,
) -> Response {
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if guard.allows(request.uri().path(), authorization) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"pillowtop\"")],
        "this admin endpoint needs `Authorization: Bearer TOKEN` (the [admin] token of the host's config, or PILLOWTOP_ADMIN_TOKEN)\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Guard {
        Guard::new(
            Some("s3cret".into()),
            vec!["/healthz".into(), "/metrics".into()],
        )
    }

    #[test]
    fn without_a_token_everything_is_open() {
        let g = Guard::new(None, vec![]);
        assert!(g.allows("/plugins/reload", None));
    }

    #[test]
    fn with_a_token_only_open_paths_and_the_page_pass_without_it() {
        let g = guard();
        for open in ["/", "/healthz", "/metrics"] {
            assert!(g.allows(open, None), "{open}");
        }
        for guarded in [
            "/status",
            "/status/live",
            "/plugins",
            "/errors/1",
            "/healthz/x",
            "/metricsx",
        ] {
            assert!(!g.allows(guarded, None), "{guarded}");
            assert!(!g.allows(guarded, Some("Bearer wrong")), "{guarded}");
            assert!(!g.allows(guarded, Some("Bearer s3cre")), "{guarded}");
            assert!(!g.allows(guarded, Some("Bearer s3crett")), "{guarded}");
            assert!(!g.allows(guarded, Some("s3cret")), "{guarded}");
            assert!(g.allows(guarded, Some("Bearer s3cret")), "{guarded}");
        }
    }

    #[test]
    fn comparison_needs_the_same_bytes_and_length() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"", b"abc"));
        assert!(!same(b"abc", b""));
    }
}
