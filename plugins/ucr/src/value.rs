//! The values UCR expressions compute with, and Python's rules for them.
//!
//! CommCare evaluates data sources in Python, on documents read with
//! `json`: a value is `None`, a `bool`, an `int`, a `float`, a `Decimal`, a
//! `str`, a `date`, a `datetime`, a `time`, a `list` or a `dict`. [`Val`]
//! is that, borrowing strings from the document where it can, and the
//! functions here are Python's equality ([`Val::py_eq`]), ordering
//! ([`Val::py_cmp`], `None` where Python raises `TypeError`), truthiness
//! and `str()`.

use crate::dates::{Date, DateTime, Time};
use crate::reads::Reads;
use pillowtop_sdk::json::{self, Kind, Reader, Value};
use pillowtop_sdk::python;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write as _;
use std::rc::Rc;

/// A `dict`: members in first-insertion order; a key written twice keeps
/// its first place and its last value, as Python's `json` reads it.
pub type Dict<'a> = Vec<(Cow<'a, str>, Val<'a>)>;

/// Set `key` as Python's `json` reads a member: a key written twice keeps
/// its first place and its last value.
fn set_member<'a>(dict: &mut Dict<'a>, key: Cow<'a, str>, value: Val<'a>) {
    match dict.iter_mut().find(|(k, _)| *k == key) {
        Some(slot) => slot.1 = value,
        None => dict.push((key, value)),
    }
}

/// A Python value.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    /// `None`.
    Null,
    /// `True` or `False`.
    Bool(bool),
    /// An `int` (one that fits 64 bits; see the README for larger ones).
    Int(i64),
    /// A `float`.
    Float(f64),
    /// A `Decimal`: its value as a float, and its text (`str()` keeps it).
    Decimal(f64, Rc<str>),
    /// A `str`.
    Str(Cow<'a, str>),
    /// A `date`.
    Date(Date),
    /// A naive `datetime`.
    DateTime(DateTime),
    /// A `time`.
    Time(Time),
    /// A `list`.
    List(Rc<Vec<Val<'a>>>),
    /// A `dict`.
    Dict(Rc<Dict<'a>>),
}

impl<'a> Val<'a> {
    /// The value Python's `json.loads` gives for `value`.
    pub fn from_json(value: Value<'a>) -> Val<'a> {
        match value.kind() {
            Kind::Null => Val::Null,
            Kind::Bool => Val::Bool(value.raw() == "true"),
            Kind::Number => number(value.raw()),
            Kind::String => Val::Str(value.as_str().unwrap_or_default()),
            Kind::Array => Val::List(Rc::new(value.elements().map(Val::from_json).collect())),
            Kind::Object => {
                let mut dict: Dict<'a> = Vec::new();
                for (key, member) in value.members() {
                    set_member(&mut dict, key.decoded(), Val::from_json(member));
                }
                Val::Dict(Rc::new(dict))
            }
        }
    }

    /// Read the value at `reader` as Python's `json.loads` gives it, as
    /// far as `reads` reads: an object keeps only the keys read, each
    /// converted as far as read, and anything else is converted whole.
    /// What is not read is still validated, in the same pass.
    ///
    /// # Errors
    ///
    /// Where and why the text is not JSON.
    pub fn read(reader: &mut Reader<'a>, reads: &Reads) -> Result<Val<'a>, json::Error> {
        let Reads::Keys(keys) = reads else {
            return Val::read_all(reader);
        };
        if reader.kind()? != Kind::Object {
            return Val::read_all(reader);
        }
        reader.object()?;
        let mut dict: Dict<'a> = Vec::with_capacity(keys.len());
        while let Some(key) = reader.key()? {
            // A few keys are read of many: comparing each as written
            // costs less (in fuel) than decoding it to look it up.
            match keys.iter().find(|(name, _)| key.is(name)) {
                Some((_, sub)) => {
                    let value = Val::read(reader, sub)?;
                    set_member(&mut dict, key.decoded(), value);
                }
                None => {
                    reader.value()?;
                }
            }
        }
        Ok(Val::Dict(Rc::new(dict)))
    }

    /// Read the value at `reader` whole, as [`Val::from_json`] converts it.
    fn read_all(reader: &mut Reader<'a>) -> Result<Val<'a>, json::Error> {
        match reader.kind()? {
            Kind::Object => {
                reader.object()?;
                let mut dict: Dict<'a> = Vec::new();
                while let Some(key) = reader.key()? {
                    let value = Val::read_all(reader)?;
                    set_member(&mut dict, key.decoded(), value);
                }
                Ok(Val::Dict(Rc::new(dict)))
            }
            Kind::Array => {
                reader.array()?;
                let mut items = Vec::new();
                while reader.element()? {
                    items.push(Val::read_all(reader)?);
                }
                Ok(Val::List(Rc::new(items)))
            }
            _ => Ok(Val::from_json(reader.value()?)),
        }
    }

    /// A string value.
    pub fn str(s: impl Into<Cow<'a, str>>) -> Val<'a> {
        Val::Str(s.into())
    }

    /// The value of `key` when this is a dict that has it.
    pub fn get(&self, key: &str) -> Option<&Val<'a>> {
        match self {
            Val::Dict(d) => d.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The text, when this is a `str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items, when this is a `list`.
    pub fn as_list(&self) -> Option<&[Val<'a>]> {
        match self {
            Val::List(l) => Some(l),
            _ => None,
        }
    }

    /// The integer, when this is an `int` or a `bool` (Python's
    /// `isinstance(x, int)` is true for both).
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Val::Int(i) => Some(*i),
            Val::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    /// The number, for `bool`, `int`, `float` and `Decimal`.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Val::Bool(b) => Some(*b as i64 as f64),
            Val::Int(i) => Some(*i as f64),
            Val::Float(f) | Val::Decimal(f, _) => Some(*f),
            _ => None,
        }
    }

    /// True for `None`.
    pub fn is_null(&self) -> bool {
        matches!(self, Val::Null)
    }

    /// A `dict` or a `list` (values a SQL column cannot hold as they are).
    pub fn is_container(&self) -> bool {
        matches!(self, Val::List(_) | Val::Dict(_))
    }

    /// Python's truthiness.
    pub fn truthy(&self) -> bool {
        match self {
            Val::Null => false,
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
            Val::Float(f) | Val::Decimal(f, _) => *f != 0.0,
            Val::Str(s) => !s.is_empty(),
            Val::Date(_) | Val::DateTime(_) => true,
            // `time` is always true in Python 3.5 and later.
            Val::Time(_) => true,
            Val::List(l) => !l.is_empty(),
            Val::Dict(d) => !d.is_empty(),
        }
    }

    /// Python's `a == b`.
    pub fn py_eq(&self, other: &Val<'_>) -> bool {
        use Val::*;
        match (self, other) {
            (Null, Null) => true,
            (Str(a), Str(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Date(a), Date(b)) => a == b,
            (DateTime(a), DateTime(b)) => a == b,
            (Time(a), Time(b)) => a == b,
            (List(a), List(b)) => {
                a.len() == b.len() && a.iter().zip(b.iter()).all(|(x, y)| x.py_eq(y))
            }
            (Dict(a), Dict(b)) => {
                a.len() == b.len()
                    && a.iter().all(|(k, v)| {
                        b.iter()
                            .find(|(bk, _)| bk == k)
                            .is_some_and(|(_, bv)| v.py_eq(bv))
                    })
            }
            _ => match (self.as_number(), other.as_number()) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            },
        }
    }

    /// Python's ordering of `a` and `b`: `None` where `a < b` raises
    /// `TypeError` (mismatched types, `None`, dicts) or is undefined (NaN).
    pub fn py_cmp(&self, other: &Val<'_>) -> Option<Ordering> {
        use Val::*;
        match (self, other) {
            (Str(a), Str(b)) => Some(a.as_ref().cmp(b.as_ref())),
            (Int(a), Int(b)) => Some(a.cmp(b)),
            (Date(a), Date(b)) => Some(a.cmp(b)),
            (DateTime(a), DateTime(b)) => Some(a.cmp(b)),
            (Time(a), Time(b)) => Some(a.cmp(b)),
            (List(a), List(b)) => {
                // Lexicographic: the first unequal pair decides.
                for (x, y) in a.iter().zip(b.iter()) {
                    if !x.py_eq(y) {
                        return x.py_cmp(y);
                    }
                }
                Some(a.len().cmp(&b.len()))
            }
            _ => match (self.as_number(), other.as_number()) {
                (Some(a), Some(b)) => a.partial_cmp(&b),
                _ => None,
            },
        }
    }

    /// Python's `str()` of the value.
    pub fn py_str(&self) -> String {
        let mut out = String::new();
        self.write_py(&mut out, false);
        out
    }

    /// Append `str()` (or, with `repr`, `repr()`) of the value to `out`.
    pub fn write_py(&self, out: &mut String, repr: bool) {
        match self {
            Val::Null => out.push_str("None"),
            Val::Bool(true) => out.push_str("True"),
            Val::Bool(false) => out.push_str("False"),
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::Float(f) => python::write_float(out, *f),
            Val::Decimal(_, text) if repr => {
                let _ = write!(out, "Decimal('{text}')");
            }
            Val::Decimal(_, text) => out.push_str(text),
            Val::Str(s) if repr => python::write_str_repr(out, s),
            Val::Str(s) => out.push_str(s),
            Val::Date(d) if repr => {
                let (y, m, day) = d.ymd();
                let _ = write!(out, "datetime.date({y}, {m}, {day})");
            }
            Val::Date(d) => {
                let _ = write!(out, "{d}");
            }
            Val::DateTime(d) if repr => {
                let (y, m, day) = d.date.ymd();
                let _ = write!(out, "datetime.datetime({y}, {m}, {day}, ");
                write_time_args(out, d.micros);
                out.push(')');
            }
            Val::DateTime(d) => {
                let _ = write!(out, "{d}");
            }
            Val::Time(t) if repr => {
                out.push_str("datetime.time(");
                write_time_args(out, t.0);
                out.push(')');
            }
            Val::Time(t) => {
                let _ = write!(out, "{t}");
            }
            Val::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write_py(out, true);
                }
                out.push(']');
            }
            Val::Dict(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    python::write_str_repr(out, k);
                    out.push_str(": ");
                    v.write_py(out, true);
                }
                out.push('}');
            }
        }
    }

    /// The value as JSON (dates as ISO text, a `Decimal` as a number), for
    /// a JSON column and for `pillowtop ucr eval`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Val::Null => out.push_str("null"),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::Float(f) | Val::Decimal(f, _) if !f.is_finite() => out.push_str("null"),
            Val::Float(f) => {
                let _ = write!(out, "{f:?}");
            }
            Val::Decimal(_, text) => out.push_str(text),
            Val::Str(s) => pillowtop_sdk::json::write_str(out, s),
            Val::Date(_) | Val::DateTime(_) | Val::Time(_) => {
                pillowtop_sdk::json::write_str(out, &self.iso())
            }
            Val::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Val::Dict(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    pillowtop_sdk::json::write_str(out, k);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// ISO text of a date, datetime or time (`isoformat()`), else `str()`.
    pub fn iso(&self) -> String {
        match self {
            Val::DateTime(d) => d.to_string().replacen(' ', "T", 1),
            other => other.py_str(),
        }
    }
}

/// `h, m[, s[, us]]`, as the `repr` of a `time` or `datetime` lists them.
fn write_time_args(out: &mut String, micros: i64) {
    let secs = micros / 1_000_000;
    let (h, m, s, us) = (secs / 3600, secs / 60 % 60, secs % 60, micros % 1_000_000);
    let _ = write!(out, "{h}, {m}");
    if s != 0 || us != 0 {
        let _ = write!(out, ", {s}");
    }
    if us != 0 {
        let _ = write!(out, ", {us}");
    }
}

/// A JSON number as Python's `json` reads it: an `int` unless it has a
/// fraction or an exponent. An integer too large for 64 bits becomes a
/// float (Python keeps every digit; see the README).
fn number(raw: &str) -> Val<'static> {
    if !raw.contains(['.', 'e', 'E'])
        && let Ok(i) = raw.parse()
    {
        return Val::Int(i);
    }
    Val::Float(raw.parse().unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Val<'_> {
        Val::from_json(Value::parse(text).unwrap())
    }

    #[test]
    fn json_reads_as_python_reads_it() {
        assert!(matches!(v("1"), Val::Int(1)));
        assert!(matches!(v("1.0"), Val::Float(f) if f == 1.0));
        assert!(matches!(v("1e2"), Val::Float(f) if f == 100.0));
        let d = v(r#"{"a": 1, "b": 2, "a": 3}"#);
        assert_eq!(d.py_str(), "{'a': 3, 'b': 2}");
        assert_eq!(
            v(r#"[1, "x", null, true, 1.5]"#).py_str(),
            "[1, 'x', None, True, 1.5]"
        );
    }

    #[test]
    fn equality_and_order_follow_python() {
        assert!(v("1").py_eq(&v("1.0")));
        assert!(v("true").py_eq(&v("1")));
        assert!(!v(r#""1""#).py_eq(&v("1")));
        assert!(!v("null").py_eq(&v("0")));
        assert!(v(r#"{"a": [1, 2]}"#).py_eq(&v(r#"{"a": [1, 2.0]}"#)));
        assert_eq!(v(r#""a""#).py_cmp(&v("1")), None);
        assert_eq!(v("null").py_cmp(&v("null")), None);
        assert_eq!(v("[1, 2]").py_cmp(&v("[1, 3]")), Some(Ordering::Less));
        assert_eq!(v("[1, 2]").py_cmp(&v("[1]")), Some(Ordering::Greater));
        assert_eq!(v("[1]").py_cmp(&v(r#"["a"]"#)), None);
        assert_eq!(v("false").py_cmp(&v("0.5")), Some(Ordering::Less));
    }

    #[test]
    fn truthiness_and_str() {
        for falsy in ["null", "false", "0", "0.0", r#""""#, "[]", "{}"] {
            assert!(!v(falsy).truthy(), "{falsy}");
        }
        for truthy in ["true", "1", r#""false""#, r#""0""#, "[0]", r#"{"a": null}"#] {
            assert!(v(truthy).truthy(), "{truthy}");
        }
        let date = Date::from_ymd(2015, 1, 2).unwrap();
        assert_eq!(Val::Date(date).py_str(), "2015-01-02");
        let dt = DateTime {
            date,
            micros: 3_600_000_000,
        };
        assert_eq!(Val::DateTime(dt).py_str(), "2015-01-02 01:00:00");
        assert_eq!(Val::DateTime(dt).iso(), "2015-01-02T01:00:00");
        let list = Val::List(Rc::new(vec![Val::Date(date), Val::DateTime(dt)]));
        assert_eq!(
            list.py_str(),
            "[datetime.date(2015, 1, 2), datetime.datetime(2015, 1, 2, 1, 0)]"
        );
        let mut json = String::new();
        list.write_json(&mut json);
        assert_eq!(json, r#"["2015-01-02","2015-01-02T01:00:00"]"#);
    }
}
