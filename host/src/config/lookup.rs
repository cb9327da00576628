//! Lookup resources: the read-only data plugins may read beyond their
//! change, declared by the host and granted per plugin (a manifest's
//! `capabilities.lookups`). See [`crate::lookup`].
//!
//! ```toml
//! [lookups.users]                  # the name manifests grant
//! cache_entries = 100000           # answers kept (default 100,000; 0: none)
//! ttl_seconds = 60                 # how long one is kept (default 60; 0: none)
//! [lookups.users.source]
//! type = "postgres"                # $1 is the keys (text[]); two columns back:
//! url = "postgres://commcare@db/commcarehq"   # the key and its value (a JSON object)
//! query = "SELECT id, json_build_object('username', username) FROM users WHERE id = ANY($1)"
//! # shards / databases as a document source takes them (CommCare's sharded layout)
//!
//! [lookups.users-index.source]
//! type = "elasticsearch"           # a document by id: its _source
//! url = "http://127.0.0.1:9200"
//! index = "hqusers"
//!
//! [lookups.phone-numbers.source]
//! type = "table"                   # a table of this host's store: every row
//! table = "messaging_phone_numbers"   # whose `key` column equals the key,
//! key = "phone_number"             # as a JSON array of row objects
//! ```

use super::source::{ElasticSource, PostgresSource};
use serde::Deserialize;

/// One lookup resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LookupConfig {
    /// Where its answers come from.
    pub source: LookupSource,
    /// Answers kept in memory, by key (absent keys too).
    #[serde(default = "default_cache_entries")]
    pub cache_entries: usize,
    /// How long an answer is kept, in seconds.
    #[serde(default = "default_ttl_seconds")]
    pub ttl_seconds: u64,
}

fn default_cache_entries() -> usize {
    100_000
}

fn default_ttl_seconds() -> u64 {
    60
}

/// Where a lookup resource's answers come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LookupSource {
    /// A SQL query over one PostgreSQL database (or CommCare's sharded
    /// set): `$1` is the keys, it returns (key, JSON object).
    Postgres(PostgresSource),
    /// An Elasticsearch index: the document whose id is the key.
    Elasticsearch(ElasticSource),
    /// A table of this host's store (one a plugin writes, say).
    Table(TableLookup),
}

/// A table of the store as a lookup resource.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTableLookup")]
pub struct TableLookup {
    /// The table.
    pub table: String,
    /// The column keys are matched against (compared as text).
    pub key: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableLookup {
    table: String,
    key: String,
}

/// Whether `name` is a plain SQL identifier as plugins name tables and
/// columns (lowercase letters, digits and `_`, starting with a letter).
fn plain_identifier(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && name.len() <= 63
}

impl TryFrom<RawTableLookup> for TableLookup {
    type Error = String;

    fn try_from(raw: RawTableLookup) -> Result<TableLookup, String> {
        for (what, name) in [("table", &raw.table), ("key", &raw.key)] {
            if !plain_identifier(name) {
                return Err(format!(
                    "{what} {name:?} is not a table or column name as plugins declare them (lowercase letters, digits and '_', starting with a letter)"
                ));
            }
        }
        Ok(TableLookup {
            table: raw.table,
            key: raw.key,
        })
    }
}

/// Whether `name` can name a lookup resource: what manifests grant and
/// metrics label (lowercase letters, digits, `-` and `_`, 1 to 64).
pub fn valid_resource_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_kinds_parse_with_cache_defaults() {
        let configs: std::collections::BTreeMap<String, LookupConfig> = toml::from_str(
            r#"
            [users]
            ttl_seconds = 5
            [users.source]
            type = "postgres"
            url = "postgres://u@h/db"
            query = "SELECT id, doc FROM users WHERE id = ANY($1)"
            [users-index.source]
            type = "elasticsearch"
            url = "http://127.0.0.1:9200"
            index = "hqusers"
            [phones]
            cache_entries = 0
            source = { type = "table", table = "phone_numbers", key = "phone_number" }
            "#,
        )
        .unwrap();
        assert_eq!(configs["users"].ttl_seconds, 5);
        assert_eq!(configs["users"].cache_entries, 100_000);
        assert!(matches!(configs["users"].source, LookupSource::Postgres(_)));
        assert!(matches!(
            configs["users-index"].source,
            LookupSource::Elasticsearch(_)
        ));
        assert_eq!(
            configs["phones"].source,
            LookupSource::Table(TableLookup {
                table: "phone_numbers".into(),
                key: "phone_number".into()
            })
        );
        assert_eq!(configs["phones"].cache_entries, 0);
    }

    #[test]
    fn bad_resources_say_what_to_write() {
        for (text, needle) in [
            (
                "[source]\ntype = \"table\"\ntable = \"Phone Numbers\"\nkey = \"k\"",
                "is not a table or column name",
            ),
            (
                "[source]\ntype = \"postgres\"\nurl = \"postgres://h/db\"\nquery = \"SELECT 1\"",
                "must take the ids as $1",
            ),
            ("[source]\ntype = \"redis\"", "unknown variant `redis`"),
            (
                "ttl = 5\n[source]\ntype = \"table\"\ntable = \"t\"\nkey = \"k\"",
                "unknown field `ttl`",
            ),
        ] {
            let err = toml::from_str::<LookupConfig>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert!(valid_resource_name("users-index"));
        assert!(!valid_resource_name("Users") && !valid_resource_name(""));
    }
}
