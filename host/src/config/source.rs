//! A pillow's document source: where the documents of changes that carry
//! only metadata (CommCare's `ChangeMeta`) are read, one query per chunk.
//!
//! ```toml
//! [pillows.document_source]
//! type = "postgres"
//! # $1 is the chunk's document ids (text[]); two columns back: the id
//! # (text) and the document (json, jsonb or text holding a JSON object).
//! query = "SELECT case_id, doc FROM cases WHERE case_id = ANY($1)"
//! url = "postgres://commcare@db/commcarehq"
//!
//! # or CommCare's sharded primary database: shards as in its
//! # PARTITION_DATABASE_CONFIG, one URL per database
//! # [pillows.document_source.shards]
//! # p1 = [0, 511]
//! # p2 = [512, 1023]
//! # [pillows.document_source.databases]
//! # p1 = "postgres://commcare@db1/commcarehq_p1"
//! # p2 = "postgres://commcare@db2/commcarehq_p2"
//!
//! # or an Elasticsearch index, by document id (one multi-get per chunk)
//! # type = "elasticsearch"
//! # url = "http://127.0.0.1:9200"
//! # index = "hqcases"
//! ```

use crate::shard::ShardMap;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::str::FromStr;

/// Where a pillow reads the documents its changes do not carry. A tagged
/// enum: `type = "postgres"` or `type = "elasticsearch"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum DocumentSourceConfig {
    /// A SQL query over one PostgreSQL database, or over CommCare's
    /// sharded set of them.
    Postgres(PostgresSource),
    /// An Elasticsearch (or OpenSearch) index holding the documents by id:
    /// one multi-get per chunk.
    Elasticsearch(ElasticSource),
}

/// An Elasticsearch index as a document source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticSource {
    /// `http[s]://[USER:PASSWORD@]HOST:PORT` of the node.
    pub url: String,
    /// The index (or alias), exactly as named on the server: no
    /// `index_prefix` applies.
    pub index: String,
    /// Timeout of one request, in milliseconds; a timed-out request is an
    /// outage and the chunk waits.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    30_000
}

/// A SQL document source, validated.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawPostgresSource")]
pub struct PostgresSource {
    /// The query: `$1` is the ids (`text[]`); it returns (id, document).
    pub query: String,
    /// The database, or the shard map and a database per shard range.
    pub databases: SourceDatabases,
    /// Connections per database.
    pub max_connections: u32,
}

/// One database, or CommCare's sharded layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceDatabases {
    /// Every document in one database.
    One {
        /// Its URL.
        url: String,
    },
    /// Documents spread by CommCare's shard hash.
    Sharded {
        /// Which database holds which shards.
        map: ShardMap,
        /// The URL of each database of the map.
        urls: BTreeMap<String, String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgresSource {
    /// See [`PostgresSource::query`].
    query: String,
    /// One database.
    #[serde(default)]
    url: Option<String>,
    /// CommCare's shard ranges per database name.
    #[serde(default)]
    shards: Option<ShardMap>,
    /// A URL per database name of `shards`.
    #[serde(default)]
    databases: Option<BTreeMap<String, String>>,
    #[serde(default = "default_max_connections")]
    max_connections: u32,
}

fn default_max_connections() -> u32 {
    4
}

impl TryFrom<RawPostgresSource> for PostgresSource {
    type Error = String;

    fn try_from(raw: RawPostgresSource) -> Result<PostgresSource, String> {
        if !raw.query.contains("$1") {
            return Err(format!(
                "query must take the ids as $1 (a text[]: a chunk's document ids, or a lookup's keys), e.g. `SELECT id, doc FROM docs WHERE id = ANY($1)`; got {:?}",
                raw.query
            ));
        }
        if !(1..=64).contains(&raw.max_connections) {
            return Err(format!(
                "max_connections must be 1 to 64, got {}",
                raw.max_connections
            ));
        }
        let databases = match (raw.url, raw.shards, raw.databases) {
            (Some(url), None, None) => SourceDatabases::One { url },
            (None, Some(map), Some(urls)) => {
                let named: Vec<&str> = map.databases().collect();
                if let Some(missing) = named.iter().find(|d| !urls.contains_key(**d)) {
                    return Err(format!(
                        "shards names database {missing:?}, which databases gives no URL"
                    ));
                }
                if let Some(extra) = urls.keys().find(|d| !named.contains(&d.as_str())) {
                    return Err(format!(
                        "databases gives a URL for {extra:?}, which shards does not name"
                    ));
                }
                SourceDatabases::Sharded { map, urls }
            }
            (None, Some(_), None) | (None, None, Some(_)) => {
                return Err("a sharded document_source needs both `shards` (ranges per database) and `databases` (a URL per database)".into());
            }
            (None, None, None) => {
                return Err("document_source of type \"postgres\" needs `url`, or `shards` and `databases` for a sharded database".into());
            }
            (Some(_), _, _) => {
                return Err("document_source: give `url` (one database) or `shards` and `databases` (a sharded one), not both".into());
            }
        };
        let urls: Vec<(&str, &str)> = match &databases {
            SourceDatabases::One { url } => vec![("url", url.as_str())],
            SourceDatabases::Sharded { urls, .. } => {
                urls.iter().map(|(d, u)| (d.as_str(), u.as_str())).collect()
            }
        };
        for (name, url) in urls {
            if let Err(e) = sqlx::postgres::PgConnectOptions::from_str(url) {
                return Err(format!(
                    "document_source: the URL of {name} is not a PostgreSQL URL (postgres://USER@HOST:PORT/DATABASE): {e}"
                ));
            }
        }
        Ok(PostgresSource {
            query: raw.query,
            databases,
            max_connections: raw.max_connections,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<DocumentSourceConfig, String> {
        toml::from_str(toml).map_err(|e| e.to_string())
    }

    #[test]
    fn one_database_or_commcares_shards() {
        let one = parse(
            "type = \"postgres\"\nquery = \"SELECT id, doc FROM d WHERE id = ANY($1)\"\nurl = \"postgres://x/db\"\n",
        )
        .unwrap();
        let DocumentSourceConfig::Postgres(p) = one else {
            panic!("postgres");
        };
        assert_eq!(
            p.databases,
            SourceDatabases::One {
                url: "postgres://x/db".into()
            }
        );
        assert_eq!(p.max_connections, 4);
        let sharded = parse(
            "type = \"postgres\"\nquery = \"SELECT id, doc FROM d WHERE id = ANY($1)\"\n\
             [shards]\np1 = [0, 511]\np2 = [512, 1023]\n[databases]\np1 = \"postgres://a/p1\"\np2 = \"postgres://b/p2\"\n",
        )
        .unwrap();
        let DocumentSourceConfig::Postgres(p) = sharded else {
            panic!("postgres");
        };
        let SourceDatabases::Sharded { map, urls } = p.databases else {
            panic!("sharded");
        };
        assert_eq!(map.databases().collect::<Vec<_>>(), ["p1", "p2"]);
        assert_eq!(urls.len(), 2);
    }

    #[test]
    fn an_elasticsearch_index() {
        let es = parse("type = \"elasticsearch\"\nurl = \"http://h:9200\"\nindex = \"hqcases\"\n")
            .unwrap();
        assert_eq!(
            es,
            DocumentSourceConfig::Elasticsearch(ElasticSource {
                url: "http://h:9200".into(),
                index: "hqcases".into(),
                timeout_ms: 30_000,
            })
        );
        let e = parse("type = \"elasticsearch\"\nurl = \"http://h:9200\"\n").unwrap_err();
        assert!(e.contains("missing field `index`"), "{e}");
    }

    #[test]
    fn bad_sources_say_what_to_give() {
        let q = "type = \"postgres\"\nquery = \"SELECT id, doc FROM d WHERE id = ANY($1)\"\n";
        for (toml, expected) in [
            (q.to_string(), "needs `url`"),
            (
                format!("{q}url = \"postgres://h/d\"\n[shards]\na = [0, 0]\n"),
                "not both",
            ),
            (format!("{q}[shards]\na = [0, 0]\n"), "needs both"),
            (
                format!("{q}[shards]\na = [0, 0]\n[databases]\nb = \"postgres://h/b\"\n"),
                "names database \"a\"",
            ),
            (
                format!(
                    "{q}[shards]\na = [0, 0]\n[databases]\na = \"postgres://h/a\"\nb = \"postgres://h/b\"\n"
                ),
                "URL for \"b\"",
            ),
            (
                format!("{q}[shards]\na = [0, 2]\n[databases]\na = \"postgres://h/a\"\n"),
                "power of 2",
            ),
            (
                "type = \"postgres\"\nquery = \"SELECT 1\"\nurl = \"postgres://h/d\"\n".into(),
                "as $1",
            ),
            (
                format!("{q}url = \"postgres://h/d\"\nmax_connections = 0\n"),
                "1 to 64",
            ),
            (
                format!("{q}url = \"db.example.org\"\n"),
                "not a PostgreSQL URL",
            ),
            (
                format!("{q}url = \"postgres://h/d\"\nurls = 1\n"),
                "unknown field `urls`",
            ),
            ("type = \"couch\"\n".into(), "unknown variant `couch`"),
        ] {
            let e = parse(&toml).unwrap_err();
            assert!(e.contains(expected), "{toml}: {e}");
        }
    }
}
