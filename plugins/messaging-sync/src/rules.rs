//! The rules, as CommCare applies them: `get_phone_info` and
//! `apply_leniency` (corehq/apps/sms/mixin.py), `sync_case_phone_number`
//! (corehq/apps/sms/tasks.py) and the `PhoneNumber` model's two-way
//! rule. Plain Rust: unit-tested natively.

use pillowtop_sdk::json::{Kind, Value};
use pillowtop_sdk::time::{format_rfc3339_ms, parse_rfc3339_ms};

/// The plugin's `[config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The phone numbers table.
    pub table: String,
    /// The lookup resource of that table's rows by phone number.
    pub lookup: String,
    /// The case property holding the number.
    pub phone_property: String,
    /// The case property saying it is verified (any truthy value).
    pub verified_property: String,
    /// The case property naming the SMS backend.
    pub backend_property: String,
    /// The case property naming the IVR backend.
    pub ivr_backend_property: String,
}

const KEYS: [(&str, &str); 6] = [
    ("table", "messaging_phone_numbers"),
    ("lookup", "phone-numbers"),
    ("phone_property", "contact_phone_number"),
    ("verified_property", "contact_phone_number_is_verified"),
    ("backend_property", "contact_backend_id"),
    ("ivr_backend_property", "contact_ivr_backend_id"),
];

impl Config {
    /// Read `[config]` (JSON text); every key has a default.
    ///
    /// # Errors
    ///
    /// An unknown key, or a value that is not a non-empty string.
    pub fn parse(text: &str) -> Result<Config, String> {
        let config = Value::parse(text).map_err(|e| format!("config: {e}"))?;
        if let Some((key, _)) = config
            .members()
            .find(|(k, _)| !KEYS.iter().any(|(n, _)| k.is(n)))
        {
            let known: Vec<&str> = KEYS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "config has unknown key {}; known keys: {}",
                key.raw(),
                known.join(", ")
            ));
        }
        let mut values = Vec::with_capacity(KEYS.len());
        for (key, default) in KEYS {
            values.push(match config.get(key) {
                None => default.to_owned(),
                Some(v) => match v.as_str() {
                    Some(s) if !s.is_empty() => s.into_owned(),
                    _ => {
                        return Err(format!(
                            "config.{key} must be a non-empty string, got {}",
                            v.raw()
                        ));
                    }
                },
            });
        }
        let mut values = values.into_iter();
        let mut next = || values.next().expect("one value per key");
        Ok(Config {
            table: next(),
            lookup: next(),
            phone_property: next(),
            verified_property: next(),
            backend_property: next(),
            ivr_backend_property: next(),
        })
    }
}

/// The table's columns, in row order: name, type (`text`, `boolean`,
/// `timestamp`), nullable.
pub const COLUMNS: [(&str, &str, bool); 12] = [
    ("doc_id", "text", false),
    ("domain", "text", true),
    ("owner_doc_type", "text", false),
    ("owner_id", "text", false),
    ("phone_number", "text", false),
    ("backend_id", "text", true),
    ("ivr_backend_id", "text", true),
    ("verified", "boolean", false),
    ("pending_verification", "boolean", false),
    ("is_two_way", "boolean", false),
    ("contact_last_modified", "timestamp", true),
    ("created_on", "timestamp", false),
];

/// One row of the phone numbers table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneRow {
    /// The case id (also `owner_id`).
    pub case_id: String,
    /// The case's domain.
    pub domain: Option<String>,
    /// The number, normalised.
    pub phone_number: String,
    /// The SMS backend.
    pub backend_id: Option<String>,
    /// The IVR backend.
    pub ivr_backend_id: Option<String>,
    /// Verified and two-way (they go together).
    pub two_way: bool,
    /// The case's `server_modified_on` (RFC 3339), if usable.
    pub contact_last_modified: Option<String>,
    /// When the entry was created (RFC 3339).
    pub created_on: String,
}

/// What a case change means for its row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a case: nothing.
    Skip,
    /// The case needs no entry (deleted, closed, no valid number): its
    /// row goes.
    Delete,
    /// The case has an entry; `wants_two_way` when it qualifies, which
    /// the rows already holding the number decide ([`settle`]).
    Entry {
        /// The row, one-way, created now.
        row: PhoneRow,
        /// Whether it qualifies as two-way.
        wants_two_way: bool,
    },
}

/// CommCare's `apply_leniency`: an integer becomes its text; text loses
/// `(`, `)`, `-`, `.` and whitespace, then one leading `+`; anything else
/// is no number.
pub fn apply_leniency(value: Option<&Value<'_>>) -> Option<String> {
    let value = value?;
    let text = match value.kind() {
        // Python's int (a JSON number without fraction or exponent; a
        // bool is an int too, and str(True) is "True").
        Kind::Number if value.raw().bytes().all(|b| b.is_ascii_digit() || b == b'-') => {
            value.raw().to_owned()
        }
        Kind::Bool => {
            if value.as_bool() == Some(true) {
                "True".into()
            } else {
                "False".into()
            }
        }
        Kind::String => value.as_str()?.into_owned(),
        _ => return None,
    };
    let kept: String = text
        .chars()
        .filter(|c| !matches!(c, '(' | ')' | '-' | '.') && !c.is_whitespace())
        .collect();
    Some(kept.strip_prefix('+').map(str::to_owned).unwrap_or(kept))
}

/// CommCare's format check: non-empty, digits only.
pub fn valid_number(number: &str) -> bool {
    !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit())
}

/// What `decide` reads of a case, each the last member of its name (as
/// Python's `json` reads a repeated key), found in one pass over the
/// case's members and one over its `case_json`.
#[derive(Default)]
struct Read<'a> {
    doc_type: Option<Value<'a>>,
    deleted: Option<Value<'a>>,
    closed: Option<Value<'a>>,
    server_modified_on: Option<Value<'a>>,
    domain: Option<Value<'a>>,
    /// The four configured properties (phone, verified, backend, IVR
    /// backend): in `case_json` (how SQL cases serialise their dynamic
    /// properties), else at the top level (Couch-era documents).
    properties: [Option<Value<'a>>; 4],
}

impl<'a> Read<'a> {
    fn case(case: &Value<'a>, config: &Config) -> Read<'a> {
        let names = [
            config.phone_property.as_str(),
            &config.verified_property,
            &config.backend_property,
            &config.ivr_backend_property,
        ];
        let mut read = Read::default();
        let mut case_json = None;
        for (key, value) in case.members() {
            let slot = if key.is("doc_type") {
                Some(&mut read.doc_type)
            } else if key.is("deleted") {
                Some(&mut read.deleted)
            } else if key.is("closed") {
                Some(&mut read.closed)
            } else if key.is("server_modified_on") {
                Some(&mut read.server_modified_on)
            } else if key.is("domain") {
                Some(&mut read.domain)
            } else if key.is("case_json") {
                Some(&mut case_json)
            } else {
                None
            };
            if let Some(slot) = slot {
                *slot = Some(value);
            }
            // A configured property may share a name with the above.
            for (name, slot) in names.iter().zip(read.properties.iter_mut()) {
                if key.is(name) {
                    *slot = Some(value);
                }
            }
        }
        if let Some(case_json) = case_json.filter(|c| c.kind() == Kind::Object) {
            let mut inner: [Option<Value<'a>>; 4] = Default::default();
            for (key, value) in case_json.members() {
                for (name, slot) in names.iter().zip(inner.iter_mut()) {
                    if key.is(name) {
                        *slot = Some(value);
                    }
                }
            }
            for (top, inner) in read.properties.iter_mut().zip(inner) {
                if inner.is_some() {
                    *top = inner;
                }
            }
        }
        read
    }
}

/// A text property's value; `null` and absent are none, other JSON is
/// kept as written.
fn text(v: Option<Value<'_>>) -> Option<String> {
    let v = v?;
    match v.kind() {
        Kind::Null => None,
        Kind::String => v.as_str().map(|s| s.into_owned()),
        _ => Some(v.raw().to_owned()),
    }
}

/// Whether `t` is a time the host takes in a `timestamp` cell.
fn usable_time(t: &str) -> bool {
    parse_rfc3339_ms(t).is_some()
}

/// What a case change means, as `get_phone_info` decides it.
/// `processing_time_ms` stamps a new entry's `created_on`.
///
/// # Errors
///
/// When the document is not a JSON object.
pub fn decide(
    config: &Config,
    case_id: &str,
    is_deletion: bool,
    document: Option<&str>,
    processing_time_ms: i64,
) -> Result<Decision, String> {
    // A deleted case, or one the feed has no document for (CommCare:
    // `case is None or case.is_deleted`), has no entry.
    let Some(document) = document.filter(|_| !is_deletion) else {
        return Ok(Decision::Delete);
    };
    let case = Value::parse(document).map_err(|e| format!("case document: {e}"))?;
    if case.kind() != Kind::Object {
        return Err("case document is not a JSON object".into());
    }
    let read = Read::case(&case, config);
    let doc_type = read.doc_type.and_then(|t| t.as_str());
    if let Some(t) = &doc_type {
        if t.ends_with("-Deleted") {
            return Ok(Decision::Delete);
        }
        if !t.starts_with("CommCareCase") {
            return Ok(Decision::Skip);
        }
    }
    let flag = |v: Option<Value<'_>>| v.is_some_and(|v| v.truthy());
    if flag(read.deleted) || flag(read.closed) {
        return Ok(Decision::Delete);
    }
    let [phone, verified, backend, ivr_backend] = read.properties;
    let number = apply_leniency(phone.as_ref());
    let Some(number) = number.filter(|n| valid_number(n) && n != "0") else {
        return Ok(Decision::Delete);
    };
    let wants_two_way = number.len() > 3 && flag(verified);
    let modified = read
        .server_modified_on
        .and_then(|v| v.as_str().map(|s| s.into_owned()))
        .filter(|t| usable_time(t));
    Ok(Decision::Entry {
        row: PhoneRow {
            case_id: case_id.to_owned(),
            domain: text(read.domain),
            phone_number: number,
            backend_id: text(backend),
            ivr_backend_id: text(ivr_backend),
            two_way: false,
            contact_last_modified: modified,
            created_on: format_rfc3339_ms(processing_time_ms),
        },
        wants_two_way,
    })
}

/// Settle an entry against the rows already holding its number (the
/// lookup's JSON array, `None` when there are none): it keeps its own
/// row's `created_on` when the number did not change (CommCare keeps the
/// entry), and becomes two-way only when it qualifies and no other
/// case's row with the number is two-way (CommCare's
/// `PhoneNumberInUseException` leaves it one-way).
///
/// # Errors
///
/// When the lookup's answer is not an array of row objects.
pub fn settle(
    mut row: PhoneRow,
    wants_two_way: bool,
    rows: Option<&str>,
) -> Result<PhoneRow, String> {
    let mut taken = false;
    if let Some(rows) = rows {
        let rows = Value::parse(rows).map_err(|e| format!("phone numbers lookup: {e}"))?;
        if rows.kind() != Kind::Array {
            return Err("phone numbers lookup: not an array of rows".into());
        }
        for other in rows.elements() {
            let owner = other.get_last("doc_id").and_then(|v| v.as_str());
            if owner.as_deref() == Some(row.case_id.as_str()) {
                if let Some(created) = other.get_last("created_on").and_then(|v| v.as_str())
                    && usable_time(&created)
                {
                    row.created_on = created.into_owned();
                }
            } else if other.get_last("is_two_way").is_some_and(|v| v.truthy()) {
                taken = true;
            }
        }
    }
    row.two_way = wants_two_way && !taken;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lenient(raw: &str) -> Option<String> {
        apply_leniency(Some(&Value::parse(raw).unwrap()))
    }

    #[test]
    fn leniency_is_commcares() {
        assert_eq!(lenient("15551234567").as_deref(), Some("15551234567"));
        assert_eq!(
            lenient(r#""+1 (555) 123-4567""#).as_deref(),
            Some("15551234567")
        );
        assert_eq!(
            lenient(r#""555.123.4567\t""#).as_deref(),
            Some("5551234567")
        );
        // One leading plus goes; a second stays, and fails the format.
        assert_eq!(lenient(r#""++1555""#).as_deref(), Some("+1555"));
        assert_eq!(lenient("true").as_deref(), Some("True"));
        assert_eq!(lenient("1.5"), None);
        assert_eq!(lenient("1e9"), None);
        assert_eq!(lenient("null"), None);
        assert_eq!(lenient("[1]"), None);
        assert!(!valid_number("+1555") && !valid_number("") && !valid_number("12a"));
        assert!(valid_number("0123"));
    }

    fn entry(config: &Config, case: &str) -> (PhoneRow, bool) {
        match decide(config, "c1", false, Some(case), 0).unwrap() {
            Decision::Entry { row, wants_two_way } => (row, wants_two_way),
            other => panic!("expected an entry, got {other:?}"),
        }
    }

    #[test]
    fn properties_come_from_case_json_else_the_top_level_the_last_of_a_repeated_key() {
        let config = Config::parse("{}").unwrap();
        let (row, two_way) = entry(
            &config,
            r#"{"doc_type": "CommCareCase", "domain": "d0", "domain": "d1",
                "contact_phone_number": "999", "contact_backend_id": "top-backend",
                "contact_ivr_backend_id": "top-ivr",
                "case_json": {"contact_phone_number": "+1 555", "contact_phone_number": "+1 (555) 123-4567",
                              "contact_phone_number_is_verified": "yes", "contact_ivr_backend_id": "ivr"},
                "server_modified_on": "2026-11-01T10:00:00.000000Z"}"#,
        );
        assert_eq!(row.domain.as_deref(), Some("d1"));
        assert_eq!(row.phone_number, "15551234567");
        assert!(two_way);
        assert_eq!(row.backend_id.as_deref(), Some("top-backend"));
        assert_eq!(row.ivr_backend_id.as_deref(), Some("ivr"));
        assert_eq!(
            row.contact_last_modified.as_deref(),
            Some("2026-11-01T10:00:00.000000Z")
        );

        // case_json that is not an object: the top level; a property named
        // like a field the rules read too.
        let config = Config::parse(r#"{"backend_property": "domain"}"#).unwrap();
        let (row, two_way) = entry(
            &config,
            r#"{"domain": "d2", "case_json": "none", "contact_phone_number": "0712 345"}"#,
        );
        assert_eq!(row.phone_number, "0712345");
        assert!(!two_way);
        assert_eq!(row.backend_id.as_deref(), Some("d2"));
        assert_eq!(row.domain.as_deref(), Some("d2"));
        assert_eq!(
            decide(
                &config,
                "c1",
                false,
                Some(r#"{"closed": true, "contact_phone_number": "0712"}"#),
                0
            )
            .unwrap(),
            Decision::Delete
        );
    }

    #[test]
    fn times_format_and_check() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        // Checked against Python: datetime.fromtimestamp(1795000000.123, timezone.utc).
        assert_eq!(
            format_rfc3339_ms(1_795_000_000_123),
            "2026-11-18T11:06:40.123Z"
        );
        assert!(usable_time("2026-11-01T10:00:00.000000Z"));
        assert!(usable_time("2026-11-01T10:00:00"));
        assert!(usable_time("2026-11-01T10:00:00+05:30"));
        assert!(!usable_time("2026-11-01"));
        assert!(!usable_time("yesterday at noon!!"));
    }
}
