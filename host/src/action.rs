//! What plugins return and declare, in host types.
//!
//! These mirror `wit/processor.wit`; the [`crate::wasm`] module converts the
//! generated bindings into them (by move, without copying strings) so sinks
//! never depend on the Wasm runtime.

/// One typed row value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    /// SQL NULL.
    Null,
    /// A boolean.
    Boolean(bool),
    /// A signed 64-bit integer.
    Integer(i64),
    /// A 64-bit float.
    Float(f64),
    /// Text (also dates, timestamps and JSON, per the column type).
    Text(String),
}

/// A column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// UTF-8 text.
    Text,
    /// 64-bit integer.
    Integer,
    /// 64-bit float.
    Float,
    /// Boolean.
    Boolean,
    /// ISO 8601 date, as text.
    Date,
    /// RFC 3339 timestamp, as text.
    Timestamp,
    /// JSON, as text.
    Json,
}

impl ColumnType {
    /// The name used in errors and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "integer",
            ColumnType::Float => "float",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date",
            ColumnType::Timestamp => "timestamp",
            ColumnType::Json => "json",
        }
    }
}

/// A column of a table spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// Column type.
    pub kind: ColumnType,
    /// Whether NULL is allowed.
    pub nullable: bool,
}

impl Column {
    /// A column named `name` of `kind`.
    pub fn new(name: &str, kind: ColumnType, nullable: bool) -> Column {
        Column {
            name: name.to_owned(),
            kind,
            nullable,
        }
    }
}

/// A table a plugin writes rows to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSpec {
    /// Table name.
    pub name: String,
    /// Columns in row order.
    pub columns: Vec<Column>,
    /// Primary key column names.
    pub primary_key: Vec<String>,
    /// The column whose value orders versions of a row: an upsert
    /// replaces a stored row only when its value is not lower.
    pub version_column: Option<String>,
    /// What decides the rows beyond the columns (opaque; e.g. a hash of a
    /// UCR data source): kept with the table, and a table built by
    /// another definition is not written (see `sink::sql`).
    pub definition: Option<String>,
}

impl TableSpec {
    /// The position of the `doc_id` column (every valid spec has one).
    pub fn doc_id_column(&self) -> Option<usize> {
        self.columns.iter().position(|c| c.name == "doc_id")
    }
}

/// An index a plugin writes documents to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    /// Index name.
    pub name: String,
    /// Mappings as JSON text.
    pub mappings: String,
    /// Aliases pointed at the index (Elasticsearch only).
    pub aliases: Vec<String>,
}

/// What a plugin's `init` declared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PluginInfo {
    /// Tables it writes.
    pub tables: Vec<TableSpec>,
    /// Indices it writes.
    pub indices: Vec<IndexSpec>,
}

/// One action returned for a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Index (create or replace) a document.
    IndexDocument {
        /// Target index.
        index: String,
        /// Document id.
        id: String,
        /// The document, JSON text of an object (validated by the host).
        document: String,
    },
    /// Index a document only if its index has none with this id
    /// (Elasticsearch's `op_type=create`); an existing one stays.
    CreateDocument {
        /// Target index.
        index: String,
        /// Document id.
        id: String,
        /// The document, JSON text of an object (validated by the host).
        document: String,
    },
    /// Delete a document.
    DeleteDocument {
        /// Target index.
        index: String,
        /// Document id.
        id: String,
    },
    /// Upsert rows.
    UpsertRows {
        /// Target table.
        table: String,
        /// Rows, one value per column in spec order (validated by the host).
        rows: Vec<Vec<Cell>>,
    },
    /// Delete a document's rows.
    DeleteRows {
        /// Target table.
        table: String,
        /// The document id whose rows go.
        doc_id: String,
    },
}

impl Action {
    /// A short name of the action's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::IndexDocument { .. } => "index-document",
            Action::CreateDocument { .. } => "create-document",
            Action::DeleteDocument { .. } => "delete-document",
            Action::UpsertRows { .. } => "upsert-rows",
            Action::DeleteRows { .. } => "delete-rows",
        }
    }
}
