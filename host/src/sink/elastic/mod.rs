//! The Elasticsearch sink: documents of `index-document` and
//! `delete-document` actions, written with the official client.
//!
//! - **Indices** are created from the plugins' index specs when missing
//!   (named `index_prefix` + the plugin's index name). An existing index
//!   whose fields are mapped with other types is a startup error naming
//!   the field; declared fields it lacks are added. Declared aliases are
//!   pointed at the index (prefixed too); one that points elsewhere is a
//!   startup error.
//! - **Bulk** writes carry the change's offset as an external version, so
//!   a replay (after a crash or a checkpoint rewind) can never overwrite a
//!   newer document: the server answers 409 and that counts as done. A
//!   delete of a missing document is done too.
//! - **Per-item failures** map back to the change that produced the write
//!   ([`Rejection`]), which becomes a pillow error for that change only.
//!   A request refused as a whole for a data reason (400) is retried
//!   one document at a time, so one bad document cannot hold back its
//!   chunk; one larger than the server takes (413) is sent again in
//!   halves, down to single documents.
//! - **Outages** (connection refused, timeouts, 429, 5xx) are
//!   [`ElasticError::Unavailable`]: the caller retries the same writes
//!   later; nothing becomes a pillow error. Retrying is safe because of
//!   the external versions.
//!
//! Versions are offsets within one partition. A document is normally
//! written only from changes of its own id, which share a partition; a
//! plugin that writes one document id from changes in several partitions
//! gets the highest offset, not the latest change.

pub mod bulk;
pub mod mapping;

use super::{DocumentWrite, Origin};
use crate::action::IndexSpec;
use crate::config::ElasticConfig;
use bulk::{Op, Reply};
use elasticsearch::Elasticsearch;
use elasticsearch::auth::Credentials;
use elasticsearch::http::headers::HeaderMap;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, Url};
use elasticsearch::indices::{
    IndicesCreateParts, IndicesExistsParts, IndicesGetAliasParts, IndicesGetMappingParts,
    IndicesPutAliasParts, IndicesPutMappingParts, IndicesRefreshParts,
};
use elasticsearch::{CountParts, GetParts, MgetParts};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Why the Elasticsearch sink failed.
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    /// The server cannot be reached or cannot serve now (connection
    /// refused, timeout, 429, 5xx). Retry the same writes later.
    #[error("{sink} is unavailable: {detail}")]
    Unavailable {
        /// Which server.
        sink: String,
        /// What failed.
        detail: String,
    },
    /// An existing index maps a field with another type than the plugin declares.
    #[error(
        "{sink}: index {index:?} already exists and maps field `{field}` as `{existing}`, but the plugin declares `{declared}`; a field's type cannot change in place: delete the index, or write to a new one (rename the index in the plugin or set elasticsearch.index_prefix) and reindex"
    )]
    MappingConflict {
        /// Which server.
        sink: String,
        /// The index.
        index: String,
        /// The field, dotted.
        field: String,
        /// Its type in the index.
        existing: String,
        /// The declared type.
        declared: String,
    },
    /// An alias a plugin declares already points at another index.
    #[error(
        "{sink}: alias {alias:?} of index {index:?} already points at {holders:?}; readers of the alias would see both: move it (POST /_aliases with remove and add), or drop the alias from the plugin's config"
    )]
    AliasTaken {
        /// Which server.
        sink: String,
        /// The alias.
        alias: String,
        /// The index it should point at.
        index: String,
        /// The other indices it points at.
        holders: Vec<String>,
    },
    /// The server refused a request that retrying cannot fix.
    #[error("{sink}: {what} was refused ({reason}); {hint}")]
    Refused {
        /// Which server.
        sink: String,
        /// The request.
        what: String,
        /// The server's reason.
        reason: String,
        /// What to do.
        hint: &'static str,
    },
    /// `elasticsearch.url` cannot be used.
    #[error("elasticsearch.url {url:?}: {message}")]
    Url {
        /// The URL, without password.
        url: String,
        /// What is wrong.
        message: String,
    },
}

impl ElasticError {
    /// Whether the server is down or overloaded, so the same writes may
    /// succeed later.
    pub fn is_outage(&self) -> bool {
        matches!(self, ElasticError::Unavailable { .. })
    }
}

impl crate::outage::Outage for ElasticError {
    fn is_outage(&self) -> bool {
        ElasticError::is_outage(self)
    }
}

/// A document write the server refused, and the change behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The plugin's index name.
    pub index: String,
    /// Document id.
    pub id: String,
    /// The change and processor that produced the write.
    pub origin: Origin,
    /// The server's reason.
    pub reason: String,
}

/// A stored document, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredDocument {
    /// The source.
    pub source: serde_json::Value,
    /// Its version: the offset of the change that wrote it.
    pub version: u64,
}

/// A connection to one Elasticsearch (or OpenSearch) node. Cheap to clone.
#[derive(Clone)]
pub struct ElasticSink {
    client: Elasticsearch,
    prefix: Arc<str>,
    location: Arc<str>,
    bulk_max_bytes: usize,
}

impl ElasticSink {
    /// A client for `config` (no request is made yet).
    ///
    /// # Errors
    ///
    /// [`ElasticError::Url`] when the URL cannot be parsed.
    pub fn connect(config: &ElasticConfig) -> Result<ElasticSink, ElasticError> {
        let shown = config.to_string();
        let bad = |message: String| ElasticError::Url {
            url: config.url_without_password(),
            message,
        };
        let mut url = Url::parse(&config.url).map_err(|e| bad(e.to_string()))?;
        let credentials = (!url.username().is_empty()).then(|| {
            Credentials::Basic(
                percent_decode(url.username()),
                url.password().map(percent_decode).unwrap_or_default(),
            )
        });
        // The credentials go in a header, not in every request line.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_millis(config.timeout_ms))
            .disable_proxy();
        if let Some(c) = credentials {
            builder = builder.auth(c);
        }
        let transport = builder.build().map_err(|e| bad(e.to_string()))?;
        Ok(ElasticSink {
            client: Elasticsearch::new(transport),
            prefix: config.index_prefix.as_str().into(),
            location: shown.into(),
            bulk_max_bytes: config.bulk_max_bytes,
        })
    }

    /// Which server, for messages (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The Elasticsearch index holding a plugin's `index`.
    pub fn index_name(&self, index: &str) -> String {
        format!("{}{index}", self.prefix)
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> ElasticError {
        ElasticError::Unavailable {
            sink: self.location.to_string(),
            detail: detail.to_string(),
        }
    }

    fn transport(&self, e: elasticsearch::Error) -> ElasticError {
        // The client's message hides the cause ("connection refused")
        // several sources deep.
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !detail.contains(&text) {
                detail.push_str(": ");
                detail.push_str(&text);
            }
            source = s.source();
        }
        self.unavailable(detail)
    }

    /// Send a request and read its status and body.
    async fn read(
        &self,
        sent: Result<elasticsearch::http::response::Response, elasticsearch::Error>,
    ) -> Result<(u16, bytes::Bytes), ElasticError> {
        let response = sent.map_err(|e| self.transport(e))?;
        let status = response.status_code().as_u16();
        let body = response.bytes().await.map_err(|e| self.transport(e))?;
        Ok((status, body))
    }

    /// A response that is not 2xx: an outage for 429/5xx, else refused.
    fn refused(&self, what: String, status: u16, body: &[u8], hint: &'static str) -> ElasticError {
        let reason = format!("HTTP {status}: {}", bulk::reason(body));
        if status == 429 || status >= 500 {
            self.unavailable(format!("{what}: {reason}"))
        } else {
            ElasticError::Refused {
                sink: self.location.to_string(),
                what,
                reason,
                hint,
            }
        }
    }

    /// Create the index for `spec` when missing; check an existing one's
    /// mapping and add the declared fields it lacks.
    ///
    /// # Errors
    ///
    /// [`ElasticError::MappingConflict`] naming the field when types
    /// differ; [`ElasticError::Refused`] when the server rejects the
    /// mappings; [`ElasticError::Unavailable`] when it cannot be reached.
    pub async fn ensure_index(&self, spec: &IndexSpec) -> Result<(), ElasticError> {
        let name = self.index_name(&spec.name);
        let declared: serde_json::Value =
            serde_json::from_str(&spec.mappings).map_err(|e| ElasticError::Refused {
                sink: self.location.to_string(),
                what: format!("the mappings of index {name:?}"),
                reason: e.to_string(),
                hint: "the plugin's init must return mappings as a JSON object",
            })?;
        let sent = self
            .client
            .indices()
            .exists(IndicesExistsParts::Index(&[&name]))
            .send()
            .await;
        let (status, _) = self.read(sent).await?;
        if status == 404 {
            let sent = self
                .client
                .indices()
                .create(IndicesCreateParts::Index(&name))
                .body(serde_json::json!({ "mappings": declared }))
                .send()
                .await;
            let (status, body) = self.read(sent).await?;
            if (200..300).contains(&status) {
                tracing::info!(sink = %self.location, index = %name, "created index");
                return self.ensure_aliases(&name, &spec.aliases).await;
            }
            // Another process may have created it meanwhile: check it.
            if !String::from_utf8_lossy(&body).contains("resource_already_exists_exception") {
                return Err(self.refused(
                    format!("creating index {name:?}"),
                    status,
                    &body,
                    "fix the index mappings the plugin's init returns",
                ));
            }
        } else if !(200..300).contains(&status) {
            return Err(self.refused(
                format!("checking index {name:?}"),
                status,
                &[],
                "check elasticsearch.url and the user's privileges",
            ));
        }
        let existing = self.mapping_of(&name).await?;
        let comparison = mapping::compare(&existing, &declared);
        if let Some(c) = comparison.conflicts.into_iter().next() {
            return Err(ElasticError::MappingConflict {
                sink: self.location.to_string(),
                index: name,
                field: c.field,
                existing: c.existing,
                declared: c.declared,
            });
        }
        if !comparison.missing.is_empty() {
            let sent = self
                .client
                .indices()
                .put_mapping(IndicesPutMappingParts::Index(&[&name]))
                .body(declared)
                .send()
                .await;
            let (status, body) = self.read(sent).await?;
            if !(200..300).contains(&status) {
                return Err(self.refused(
                    format!("adding fields {:?} to index {name:?}", comparison.missing),
                    status,
                    &body,
                    "fix the plugin's mappings, or write to a new index",
                ));
            }
            tracing::info!(sink = %self.location, index = %name, fields = ?comparison.missing, "added declared fields to an existing index");
        }
        self.ensure_aliases(&name, &spec.aliases).await
    }

    /// Point each of `aliases` (prefixed like index names) at index `name`;
    /// an alias that already points only at it is left as it is.
    ///
    /// # Errors
    ///
    /// [`ElasticError::AliasTaken`] when an alias points at another index.
    async fn ensure_aliases(&self, name: &str, aliases: &[String]) -> Result<(), ElasticError> {
        for alias in aliases {
            let alias = self.index_name(alias);
            let sent = self
                .client
                .indices()
                .get_alias(IndicesGetAliasParts::Name(&[&alias]))
                .send()
                .await;
            let (status, body) = self.read(sent).await?;
            let holders: Vec<String> = match status {
                404 => Vec::new(),
                200..=299 => {
                    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
                        .map_err(|e| {
                            self.unavailable(format!("unreadable aliases of {alias:?}: {e}"))
                        })?
                        .into_iter()
                        .map(|(index, _)| index)
                        .collect()
                }
                _ => {
                    return Err(self.refused(
                        format!("reading alias {alias:?}"),
                        status,
                        &body,
                        "check elasticsearch.url and the user's privileges",
                    ));
                }
            };
            let others: Vec<String> = holders.iter().filter(|h| *h != name).cloned().collect();
            if !others.is_empty() {
                return Err(ElasticError::AliasTaken {
                    sink: self.location.to_string(),
                    alias,
                    index: name.to_string(),
                    holders: others,
                });
            }
            if holders.is_empty() {
                let sent = self
                    .client
                    .indices()
                    .put_alias(IndicesPutAliasParts::IndexName(&[name], &alias))
                    .send()
                    .await;
                let (status, body) = self.read(sent).await?;
                if !(200..300).contains(&status) {
                    return Err(self.refused(
                        format!("pointing alias {alias:?} at index {name:?}"),
                        status,
                        &body,
                        "an alias cannot have the name of an existing index: rename the alias in the plugin's config",
                    ));
                }
                tracing::info!(sink = %self.location, index = %name, alias = %alias, "pointed alias at index");
            }
        }
        Ok(())
    }

    /// The `mappings` of a plugin's `index` as the server has them.
    ///
    /// # Errors
    ///
    /// When the server fails or the index does not exist.
    pub async fn mapping(&self, index: &str) -> Result<serde_json::Value, ElasticError> {
        self.mapping_of(&self.index_name(index)).await
    }

    async fn mapping_of(&self, name: &str) -> Result<serde_json::Value, ElasticError> {
        let sent = self
            .client
            .indices()
            .get_mapping(IndicesGetMappingParts::Index(&[name]))
            .send()
            .await;
        let (status, body) = self.read(sent).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(
                format!("reading the mapping of index {name:?}"),
                status,
                &body,
                "check elasticsearch.url and the user's privileges",
            ));
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("unreadable mapping of {name:?}: {e}")))?;
        // Keyed by the concrete index (which differs when `name` is an alias).
        Ok(answer
            .as_object()
            .and_then(|m| m.values().next())
            .and_then(|v| v.get("mappings"))
            .cloned()
            .unwrap_or_default())
    }

    /// Write a chunk's documents (per plugin index, per id), in bulk
    /// requests of at most `bulk_max_bytes`.
    ///
    /// Returns the writes the server refused, each with the change behind
    /// it; everything else landed (or was a replay of older data).
    ///
    /// # Errors
    ///
    /// [`ElasticError::Unavailable`] when the server is down or overloaded
    /// (some writes may have landed; writing the same documents again is
    /// safe); [`ElasticError::Refused`] when it refuses us (401, 403).
    pub async fn write(
        &self,
        documents: &BTreeMap<String, BTreeMap<String, DocumentWrite>>,
    ) -> Result<Vec<Rejection>, ElasticError> {
        let names: Vec<(&str, String)> = documents
            .keys()
            .map(|i| (i.as_str(), self.index_name(i)))
            .collect();
        let mut ops = Vec::new();
        let mut writes = Vec::new();
        for ((index, name), docs) in names.iter().zip(documents.values()) {
            for w in docs.values() {
                ops.push(Op {
                    index: name,
                    id: &w.id,
                    document: w.document.as_deref(),
                    version: w.version,
                    create: w.create,
                });
                writes.push((*index, w));
            }
        }
        let refused = bulk::deliver(&ops, self.bulk_max_bytes, self)
        .await
        .map_err(|stop| match stop {
            bulk::Stop::Send(e) => e,
            bulk::Stop::Retry(why) => self.unavailable(why),
            bulk::Stop::Fatal(reason) => ElasticError::Refused {
                sink: self.location.to_string(),
                what: "a bulk write".into(),
                reason,
                hint: "check the user and password in elasticsearch.url and its privileges on the indices",
            },
        })?;
        Ok(refused
            .into_iter()
            .map(|(at, reason)| {
                let (index, w) = writes[at];
                Rejection {
                    index: index.to_owned(),
                    id: w.id.clone(),
                    origin: w.origin,
                    reason,
                }
            })
            .collect())
    }

    async fn send_bulk(&self, ops: &[Op<'_>]) -> Result<Reply, ElasticError> {
        let mut body = Vec::with_capacity(ops.iter().map(Op::size).sum());
        for op in ops {
            bulk::append(&mut body, op);
        }
        // The request the bulk API's builder makes, sent as is: its body
        // type writes every line into a fresh buffer that starts at 1 KiB
        // and doubles, so a bulk of 500 case documents (1.4 MB) was copied
        // about twice more and grew through freshly mapped pages on every
        // request; a `Bytes` body goes to the connection without a copy.
        let query = [("filter_path", bulk::FILTER_PATH)];
        let sent = self
            .client
            .send(
                Method::Post,
                "/_bulk",
                HeaderMap::new(),
                Some(&query),
                Some(bytes::Bytes::from(body)),
                None,
            )
            .await;
        let (status, body) = self.read(sent).await?;
        Ok(bulk::classify(status, &body, ops.len()))
    }

    /// Read a document back (a realtime get: no refresh needed).
    ///
    /// # Errors
    ///
    /// When the server fails.
    pub async fn document(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<StoredDocument>, ElasticError> {
        let name = self.index_name(index);
        let sent = self.client.get(GetParts::IndexId(&name, id)).send().await;
        let (status, body) = self.read(sent).await?;
        if status == 404 {
            return Ok(None);
        }
        if !(200..300).contains(&status) {
            return Err(self.refused(format!("reading {id:?} from {name:?}"), status, &body, ""));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("unreadable document: {e}")))?;
        if v.get("found") == Some(&serde_json::Value::Bool(false)) {
            return Ok(None);
        }
        Ok(Some(StoredDocument {
            version: v.get("_version").and_then(|v| v.as_u64()).unwrap_or(0),
            source: v.get("_source").cloned().unwrap_or_default(),
        }))
    }

    /// The `_source` of each of `ids` found in `index` (the name as is, no
    /// prefix), as JSON text, by id: one multi-get. Ids not found are
    /// absent; an index that does not exist is refused.
    ///
    /// # Errors
    ///
    /// When the server fails (an outage for connection errors, 429 and
    /// 5xx) or refuses the request.
    pub async fn documents(
        &self,
        index: &str,
        ids: &[&str],
    ) -> Result<std::collections::HashMap<String, String>, ElasticError> {
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        if ids.is_empty() {
            return Ok(found);
        }
        let sent = self
            .client
            .mget(MgetParts::Index(index))
            .body(serde_json::json!({ "ids": ids }))
            .send()
            .await;
        let (status, body) = self.read(sent).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(
                format!("reading {} documents from {index:?}", ids.len()),
                status,
                &body,
                "check that the document source's index exists and the user may read it",
            ));
        }
        #[derive(serde::Deserialize)]
        struct Reply<'a> {
            #[serde(borrow)]
            docs: Vec<Doc<'a>>,
        }
        #[derive(serde::Deserialize)]
        struct Doc<'a> {
            #[serde(rename = "_id")]
            id: String,
            #[serde(default)]
            found: bool,
            #[serde(rename = "_source", borrow, default)]
            source: Option<&'a serde_json::value::RawValue>,
        }
        let reply: Reply<'_> = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("unreadable multi-get reply: {e}")))?;
        for d in reply.docs {
            if let (true, Some(source)) = (d.found, d.source) {
                found.insert(d.id, source.get().to_owned());
            }
        }
        Ok(found)
    }

    /// Make recent writes to `index` visible to search and count.
    ///
    /// # Errors
    ///
    /// When the server fails.
    pub async fn refresh(&self, index: &str) -> Result<(), ElasticError> {
        let name = self.index_name(index);
        let sent = self
            .client
            .indices()
            .refresh(IndicesRefreshParts::Index(&[&name]))
            .send()
            .await;
        let (status, body) = self.read(sent).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(format!("refreshing {name:?}"), status, &body, ""));
        }
        Ok(())
    }

    /// Documents in `index` (as of the last refresh).
    ///
    /// # Errors
    ///
    /// When the server fails.
    pub async fn count(&self, index: &str) -> Result<u64, ElasticError> {
        let name = self.index_name(index);
        let sent = self.client.count(CountParts::Index(&[&name])).send().await;
        let (status, body) = self.read(sent).await?;
        if !(200..300).contains(&status) {
            return Err(self.refused(format!("counting {name:?}"), status, &body, ""));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.unavailable(format!("unreadable count: {e}")))?;
        Ok(v.get("count").and_then(|c| c.as_u64()).unwrap_or(0))
    }
}

impl bulk::Sender for &ElasticSink {
    type Error = ElasticError;
    fn send(&mut self, ops: &[Op<'_>]) -> impl Future<Output = Result<Reply, ElasticError>> + Send {
        self.send_bulk(ops)
    }
}

/// Decode `%XX` escapes of a URL's user or password.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_decoded() {
        assert_eq!(percent_decode("p%40ss%3Aw"), "p@ss:w");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
