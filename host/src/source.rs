//! Document sources: CommCare's changes carry only metadata, and every
//! pillow reads the document from the primary database by id. A pillow
//! with a `document_source` reads the documents of a whole chunk before
//! its processors run: one query per database (one database, or each
//! shard database holding some of the chunk's ids, in parallel), never
//! one per change. An inline `document` wins; a deletion needs none.
//!
//! An Elasticsearch index can serve instead: one multi-get per chunk.
//!
//! This module fetches; deciding what a missing document means (CommCare's
//! `DocumentMissingError`: a retryable pillow error) is the caller's.

use crate::change::Change;
use crate::config::ElasticConfig;
use crate::config::source::{DocumentSourceConfig, SourceDatabases};
use crate::errors::ErrorKind;
use crate::shard::ShardMap;
use crate::sink::elastic::{ElasticError, ElasticSink};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Column, Row, TypeInfo};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Why documents could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database failed (or is unreachable: see [`SourceError::is_outage`]).
    #[error(
        "document source {database}: {source}; check the database runs and document_source names it"
    )]
    Database {
        /// Which database (host and name, no password).
        database: String,
        /// The error.
        source: sqlx::Error,
    },
    /// The query's result does not have the shape a document source
    /// returns.
    #[error("document source {database}: {message}")]
    Shape {
        /// Which database.
        database: String,
        /// What is wrong and what to return instead.
        message: String,
    },
    /// The Elasticsearch index could not be read.
    #[error("document source: {0}")]
    Elastic(#[from] ElasticError),
    /// A URL does not parse.
    #[error("document source: invalid URL for database {database}: {message}")]
    Url {
        /// The database's name (`url`, or its name in `databases`).
        database: String,
        /// The parser's message.
        message: String,
    },
}

impl SourceError {
    /// Whether the same read may succeed later (the database is down or
    /// busy), as opposed to a query that can never work.
    pub fn is_outage(&self) -> bool {
        match self {
            SourceError::Database { source, .. } => crate::db::is_outage(source),
            SourceError::Elastic(e) => e.is_outage(),
            SourceError::Shape { .. } | SourceError::Url { .. } => false,
        }
    }
}

impl crate::outage::Outage for SourceError {
    fn is_outage(&self) -> bool {
        SourceError::is_outage(self)
    }
}

/// One database of a source.
#[derive(Debug, Clone)]
struct Database {
    /// For messages: host and database, no user or password.
    label: String,
    pool: PgPool,
}

/// A pillow's document source, ready to read (connections are made on
/// first use: a source that is down at startup is an outage of the first
/// chunk that needs it, not a failed start).
#[derive(Debug, Clone)]
pub struct DocumentSource {
    inner: Arc<Inner>,
}

enum Inner {
    Postgres {
        query: String,
        /// In the shard map's order; one when unsharded.
        databases: Vec<Database>,
        map: Option<ShardMap>,
    },
    Elastic {
        sink: ElasticSink,
        index: String,
    },
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inner::Postgres {
                query, databases, ..
            } => f
                .debug_struct("Postgres")
                .field("query", query)
                .field(
                    "databases",
                    &databases.iter().map(|d| &d.label).collect::<Vec<_>>(),
                )
                .finish(),
            Inner::Elastic { sink, index } => f
                .debug_struct("Elastic")
                .field("server", &sink.location())
                .field("index", index)
                .finish(),
        }
    }
}

/// Documents read, by id: JSON text of an object, or why the stored value
/// is not one (that change fails alone; the rest of the chunk goes on).
pub type Documents = HashMap<String, Result<String, String>>;

/// Why a change that needs a document has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// The source has no document with the change's id (CommCare's
    /// `DocumentMissingError`).
    Missing,
    /// The stored value is not a JSON object.
    Invalid(String),
}

impl Unavailable {
    /// The pillow error kind and message of document `id` being
    /// unavailable this way: `missing` (always retried, as the document
    /// may not be written yet), or `decode` for a value that is not a
    /// document.
    pub fn describe(self, id: &str) -> (ErrorKind, String) {
        match self {
            Unavailable::Missing => (
                ErrorKind::Missing,
                format!(
                    "document {id:?} is not in the document source (CommCare's DocumentMissingError); retried, as it may not be written yet"
                ),
            ),
            Unavailable::Invalid(why) => (ErrorKind::Decode, why),
        }
    }
}

impl DocumentSource {
    /// The source `config` describes.
    ///
    /// # Errors
    ///
    /// [`SourceError::Url`] when a URL does not parse.
    pub fn open(config: &DocumentSourceConfig) -> Result<DocumentSource, SourceError> {
        let config = match config {
            DocumentSourceConfig::Postgres(config) => config,
            DocumentSourceConfig::Elasticsearch(es) => {
                let sink = ElasticSink::connect(&ElasticConfig {
                    timeout_ms: es.timeout_ms,
                    ..ElasticConfig::new(es.url.clone())
                })?;
                return Ok(DocumentSource {
                    inner: Arc::new(Inner::Elastic {
                        sink,
                        index: es.index.clone(),
                    }),
                });
            }
        };
        let pool = |name: &str, url: &str| -> Result<Database, SourceError> {
            let options = PgConnectOptions::from_str(url)
                .map_err(|e| SourceError::Url {
                    database: name.to_owned(),
                    message: e.to_string(),
                })?
                .application_name("pillowtop-document-source");
            let label = format!(
                "{name} ({}/{})",
                options.get_host(),
                options.get_database().unwrap_or_default()
            );
            let pool = PgPoolOptions::new()
                .max_connections(config.max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect_lazy_with(options);
            Ok(Database { label, pool })
        };
        let (databases, map) = match &config.databases {
            SourceDatabases::One { url } => (vec![pool("url", url)?], None),
            SourceDatabases::Sharded { map, urls } => (
                map.databases()
                    .map(|d| pool(d, &urls[d]))
                    .collect::<Result<_, _>>()?,
                Some(map.clone()),
            ),
        };
        Ok(DocumentSource {
            inner: Arc::new(Inner::Postgres {
                query: config.query.clone(),
                databases,
                map,
            }),
        })
    }

    /// The documents of `ids` that exist: one query per database holding
    /// some of them, the databases in parallel.
    ///
    /// # Errors
    ///
    /// The first database that fails, or a result of the wrong shape; no
    /// partial result.
    pub async fn fetch(&self, ids: &[&str]) -> Result<Documents, SourceError> {
        if ids.is_empty() {
            return Ok(Documents::new());
        }
        let (databases, map, query) = match &*self.inner {
            Inner::Elastic { sink, index } => {
                let found = sink.documents(index, ids).await?;
                return Ok(found
                    .into_iter()
                    .map(|(id, doc)| {
                        let doc = json_object(doc).map(|doc| with_id(&id, doc));
                        (id, doc)
                    })
                    .collect());
            }
            Inner::Postgres {
                databases,
                map,
                query,
            } => (databases, map, query),
        };
        let groups: Vec<(usize, Vec<&str>)> = match map {
            None => vec![(0, ids.to_vec())],
            Some(map) => map.group(ids.iter().copied()),
        };
        let mut reads = tokio::task::JoinSet::new();
        for (at, ids) in groups {
            let (db, query) = (databases[at].clone(), query.clone());
            let ids: Vec<String> = ids.into_iter().map(str::to_owned).collect();
            reads.spawn(async move { read(&db, &query, ids).await });
        }
        let mut documents = Documents::with_capacity(ids.len());
        while let Some(joined) = reads.join_next().await {
            let part = joined.expect("a document read does not panic")?;
            documents.extend(part);
        }
        Ok(documents)
    }
}

/// Whether `change` needs its document read: it carries none and is not a
/// deletion.
pub fn needs_document(change: &Change) -> bool {
    change.document().is_none() && !change.is_deletion
}

/// Give `change` its document from `documents` (what the source returned
/// for the ids that [`needs_document`] picked); why it has none when that
/// fails. A change that needs no document is left as it is.
pub fn attach(change: &mut Change, documents: &Documents) -> Option<Unavailable> {
    if !needs_document(change) {
        return None;
    }
    match documents.get(&change.id) {
        Some(Ok(doc)) => {
            change.set_document(doc.clone());
            None
        }
        Some(Err(why)) => Some(Unavailable::Invalid(why.clone())),
        None => Some(Unavailable::Missing),
    }
}

/// `doc` (a JSON object) with `"_id": id` first when it has no `_id`:
/// Elasticsearch keeps a document's id out of its `_source` (it refuses
/// `_id` inside one), while CommCare's documents carry it.
fn with_id(id: &str, doc: String) -> String {
    let has_id = serde_json::from_str::<HashMap<String, serde::de::IgnoredAny>>(&doc)
        .is_ok_and(|fields| fields.contains_key("_id"));
    if has_id {
        return doc;
    }
    let id = serde_json::to_string(id).expect("a string serializes");
    let rest = doc[1..].trim_start();
    if rest.starts_with('}') {
        format!("{{\"_id\":{id}}}")
    } else {
        format!("{{\"_id\":{id},{rest}")
    }
}

/// `text` if it is a JSON object, else why not.
fn json_object(text: String) -> Result<String, String> {
    match serde_json::from_str::<&serde_json::value::RawValue>(&text) {
        Ok(raw) if raw.get().starts_with('{') => Ok(raw.get().to_owned()),
        Ok(raw) => Err(format!(
            "the document source returned {:.40} for this id, not a JSON object",
            raw.get()
        )),
        Err(e) => Err(format!(
            "the document source returned text that is not JSON for this id: {e}"
        )),
    }
}

async fn read(db: &Database, query: &str, ids: Vec<String>) -> Result<Documents, SourceError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(query.to_owned()))
        .bind(&ids)
        .fetch_all(&db.pool)
        .await
        .map_err(|source| SourceError::Database {
            database: db.label.clone(),
            source,
        })?;
    let shape = |message: String| SourceError::Shape {
        database: db.label.clone(),
        message,
    };
    let mut documents = Documents::with_capacity(rows.len());
    for row in rows {
        if row.columns().len() != 2 {
            return Err(shape(format!(
                "the query returned {} columns; return two: the id, or lookup key (text), and the JSON object (json, jsonb or text)",
                row.columns().len()
            )));
        }
        let id: String = row.try_get(0).map_err(|e| {
            shape(format!(
                "the first column must be the id, or lookup key, as text: {e}"
            ))
        })?;
        let doc = match row.columns()[1].type_info().name() {
            "JSON" | "JSONB" => row
                .try_get::<sqlx::types::Json<Box<serde_json::value::RawValue>>, _>(1)
                .map(|j| j.0.get().to_owned()),
            _ => row.try_get::<String, _>(1),
        }
        .map_err(|e| {
            shape(format!(
                "the second column must be the document as json, jsonb or text: {e}"
            ))
        })?;
        documents.insert(id, json_object(doc));
    }
    Ok(documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_elasticsearch_source_gets_its_id_back() {
        assert_eq!(with_id("a", r#"{"x":1}"#.into()), r#"{"_id":"a","x":1}"#);
        assert_eq!(with_id("a", "{ }".into()), r#"{"_id":"a"}"#);
        assert_eq!(with_id("a\"b", "{}".into()), r#"{"_id":"a\"b"}"#);
        let kept = r#"{"x":1,"_id":"other"}"#;
        assert_eq!(with_id("a", kept.into()), kept);
        let kept = r#"{"\u005fid":"escaped","x":1}"#;
        assert_eq!(with_id("a", kept.into()), kept);
    }
}
