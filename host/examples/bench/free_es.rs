//! A cost-free Elasticsearch endpoint, for section 13 only: it answers
//! the requests the host's Elasticsearch sink and lookups make (index
//! exists/create, mapping, aliases, bulk, multi-get, count) at once and
//! keeps no documents. Every bulk write succeeds (201 per item, in
//! order), a multi-get finds nothing. It lets the bench measure the
//! host where the local test server (osmem-server, about 200 case-search
//! documents/s) would otherwise bound the rate. Tests never use it: it
//! cannot tell right writes from wrong ones.
//!
//! It runs on one thread of its own (a current-thread runtime), so its
//! cost to the machine stays small: walking a bulk body's lines to count
//! its operations is all it does per document.

use axum::body::Bytes;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Mappings by index name, as created.
    indices: Mutex<HashMap<String, serde_json::Value>>,
    bulks: AtomicU64,
    operations: AtomicU64,
    other: AtomicU64,
}

/// The endpoint, stopped on drop.
pub struct FreeEs {
    url: String,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The serving thread under /proc: "PID/task/TID".
    task: String,
}

impl FreeEs {
    /// Listen on a free loopback port.
    pub fn start() -> FreeEs {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = state.clone();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            // "PID/task/TID"
            let _ = tid_tx.send(std::fs::read_link("/proc/thread-self").unwrap_or_default());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                // Elasticsearch takes bodies up to http.max_content_length
                // (100 MB by default); axum's own default of 2 MB answered
                // a chunk's bulk with 413, which the sink then wrote one
                // document at a time.
                let app = axum::Router::new()
                    .fallback(answer)
                    .layer(axum::extract::DefaultBodyLimit::max(100 << 20))
                    .with_state(served);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let task = tid_rx.recv().unwrap();
        FreeEs {
            url,
            state,
            stop: Some(stop),
            thread: Some(thread),
            task: task.display().to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// CPU seconds (user + system) the serving thread has used so far:
    /// how close the endpoint comes to being a bottleneck.
    pub fn cpu_seconds(&self) -> f64 {
        super::stat_cpu(&self.task, 14)
    }

    /// (bulk requests, operations in them, other requests) answered so
    /// far.
    pub fn requests(&self) -> (u64, u64, u64) {
        (
            self.state.bulks.load(Ordering::Relaxed),
            self.state.operations.load(Ordering::Relaxed),
            self.state.other.load(Ordering::Relaxed),
        )
    }
}

impl Drop for FreeEs {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn json(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-elastic-product",
        HeaderValue::from_static("Elasticsearch"),
    );
    r
}

fn ok(body: serde_json::Value) -> Response {
    json(StatusCode::OK, body.to_string())
}

async fn answer(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let parts: Vec<&str> = uri.path().split('/').filter(|p| !p.is_empty()).collect();
    let not_found = || {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": {"type": "index_not_found_exception"}, "status": 404})
                .to_string(),
        )
    };
    if parts != ["_bulk"] {
        state.other.fetch_add(1, Ordering::Relaxed);
    }
    match (&method, parts.as_slice()) {
        (_, ["_bulk"]) => bulk(&state, &body),
        (&Method::HEAD, [index]) => {
            if state.indices.lock().unwrap().contains_key(*index) {
                ok(serde_json::json!({}))
            } else {
                not_found()
            }
        }
        (&Method::PUT, [index]) => {
            let mappings = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("mappings").cloned())
                .unwrap_or_default();
            state
                .indices
                .lock()
                .unwrap()
                .insert((*index).to_owned(), mappings);
            ok(serde_json::json!({"acknowledged": true, "index": index}))
        }
        (&Method::GET, [index, "_mapping"]) => match state.indices.lock().unwrap().get(*index) {
            Some(m) => ok(serde_json::json!({ *index: { "mappings": m } })),
            None => not_found(),
        },
        (&Method::PUT, [_, "_mapping"]) | (&Method::PUT, [_, "_alias", _]) => {
            ok(serde_json::json!({"acknowledged": true}))
        }
        (&Method::GET, ["_alias", _]) => json(StatusCode::NOT_FOUND, "{}".into()),
        (_, [_, "_mget"]) => {
            let ids = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("ids").cloned())
                .unwrap_or_default();
            let docs: Vec<serde_json::Value> = ids
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .map(|id| serde_json::json!({"_id": id, "found": false}))
                        .collect()
                })
                .unwrap_or_default();
            ok(serde_json::json!({ "docs": docs }))
        }
        (&Method::GET, [_, "_doc", id]) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"_id": id, "found": false}).to_string(),
        ),
        (_, [_, "_refresh"]) => ok(serde_json::json!({})),
        (_, [_, "_count"]) => ok(serde_json::json!({"count": 0})),
        (&Method::GET, []) => ok(serde_json::json!({"version": {"number": "8.0.0"}})),
        _ => not_found(),
    }
}

/// One item per operation, in order: an action line (`index`, `create`,
/// `delete`), followed by its source unless it is a delete.
fn bulk(state: &State, body: &[u8]) -> Response {
    let mut out = String::with_capacity(64 + body.len() / 64);
    out.push_str(r#"{"errors":false,"items":["#);
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let mut n = 0u64;
    while let Some(action) = lines.next() {
        let op = ["index", "create", "delete", "update"]
            .into_iter()
            .find(|op| action.get(2..2 + op.len()) == Some(op.as_bytes()))
            .unwrap_or("index");
        if op != "delete" {
            lines.next();
        }
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"");
        out.push_str(op);
        out.push_str("\":{\"status\":201}}");
        n += 1;
    }
    out.push_str("]}");
    state.bulks.fetch_add(1, Ordering::Relaxed);
    state.operations.fetch_add(n, Ordering::Relaxed);
    json(StatusCode::OK, out)
}
