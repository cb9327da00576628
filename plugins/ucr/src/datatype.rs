//! Datatypes: how CommCare coerces a value for an expression's `datatype`
//! or an indicator's column (`transform_for_datatype` in its getters), and
//! the SQL column each becomes.
//!
//! Coercion never fails for bad input: a text that is not a date is null,
//! `"abc"` as an integer is null. It fails only where Python raises
//! something other than the `ValueError`/`TypeError` CommCare catches:
//! `int(float("inf"))` is an `OverflowError`, so an infinite number as an
//! integer is an error for that document, as it is in CommCare.

use crate::dates::{self, DateTime};
use crate::eval::EvalError;
use crate::value::Val;
use std::borrow::Cow;
use std::rc::Rc;

/// A UCR datatype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    /// `str()` of the value; null stays null.
    String,
    /// `int()`, falling back to `int(float())`.
    Integer,
    /// As `integer` (a `smallint` column in CommCare).
    SmallInteger,
    /// `Decimal()`.
    Decimal,
    /// A date from a date or datetime text, or a date(time) value.
    Date,
    /// A datetime from a datetime or date text, or a date(time) value.
    DateTime,
    /// The value as it is (a `boolean` column takes true, false, 1, 0 or null).
    Boolean,
    /// A list as it is; anything else in a list of one.
    Array,
}

/// Every datatype's name, for error messages.
pub const NAMES: &str = "string, integer, small_integer, decimal, date, datetime, boolean, array";

impl Datatype {
    /// The datatype called `name` in a spec.
    pub fn parse(name: &str) -> Option<Datatype> {
        Some(match name {
            "string" => Datatype::String,
            "integer" => Datatype::Integer,
            "small_integer" => Datatype::SmallInteger,
            "decimal" => Datatype::Decimal,
            "date" => Datatype::Date,
            "datetime" => Datatype::DateTime,
            "boolean" => Datatype::Boolean,
            "array" => Datatype::Array,
            _ => return None,
        })
    }

    /// Coerce `value` as CommCare does for this datatype.
    ///
    /// # Errors
    ///
    /// Where Python raises an error CommCare does not catch (see the module docs).
    pub fn transform<'a>(self, value: Val<'a>) -> Result<Val<'a>, EvalError> {
        Ok(match self {
            Datatype::String => match value {
                Val::Null => Val::Null,
                Val::Str(_) => value,
                other => Val::str(other.py_str()),
            },
            Datatype::Integer | Datatype::SmallInteger => to_int(&value)?,
            Datatype::Decimal => to_decimal(&value),
            Datatype::Date => to_date(&value),
            Datatype::DateTime => to_datetime(&value),
            Datatype::Boolean => value,
            Datatype::Array => match value {
                Val::List(_) => value,
                other => Val::List(Rc::new(vec![other])),
            },
        })
    }
}

/// Python's `int(x)`, then `int(float(x))`; null when both raise
/// `ValueError` or `TypeError`.
fn to_int(value: &Val<'_>) -> Result<Val<'static>, EvalError> {
    let float = match value {
        Val::Int(i) => return Ok(Val::Int(*i)),
        Val::Bool(b) => return Ok(Val::Int(*b as i64)),
        Val::Float(f) | Val::Decimal(f, _) => *f,
        Val::Str(s) => {
            if let Some(i) = parse_int(s) {
                return Ok(Val::Int(i));
            }
            match parse_float(s) {
                Some(f) => f,
                None => return Ok(Val::Null),
            }
        }
        _ => return Ok(Val::Null),
    };
    if float.is_nan() {
        return Ok(Val::Null);
    }
    if float.is_infinite() {
        return Err(EvalError::permanent(
            "cannot convert an infinite number to an integer (Python's OverflowError)",
        ));
    }
    let truncated = float.trunc();
    if truncated < i64::MIN as f64 || truncated >= i64::MAX as f64 {
        return Err(EvalError::permanent(format!(
            "the integer {truncated} does not fit a 64-bit column"
        )));
    }
    Ok(Val::Int(truncated as i64))
}

/// Python's `Decimal(x)`: null where it raises.
fn to_decimal(value: &Val<'_>) -> Val<'static> {
    match value {
        Val::Int(i) => Val::Decimal(*i as f64, i.to_string().into()),
        Val::Bool(b) => Val::Decimal(*b as i64 as f64, (*b as i64).to_string().into()),
        Val::Float(f) => {
            let mut text = String::new();
            pillowtop_sdk::python::write_float(&mut text, *f);
            Val::Decimal(*f, text.into())
        }
        Val::Decimal(f, text) => Val::Decimal(*f, text.clone()),
        Val::Str(s) => match parse_decimal(s) {
            Some((f, text)) => Val::Decimal(f, text.into()),
            None => Val::Null,
        },
        _ => Val::Null,
    }
}

/// CommCare's `transform_date`: a truthy text read as a date, else as a
/// datetime (its date), a date(time) value as its date; else null.
pub fn to_date(value: &Val<'_>) -> Val<'static> {
    match value {
        Val::Str(s) if !s.is_empty() => dates::parse_date(s)
            .or_else(|| dates::parse_datetime(s).map(|d| d.date))
            .map_or(Val::Null, Val::Date),
        Val::Date(d) => Val::Date(*d),
        Val::DateTime(d) => Val::Date(d.date),
        _ => Val::Null,
    }
}

/// CommCare's `transform_datetime`: a truthy text read as a datetime, else
/// as a date (at midnight); a date at midnight; else null.
pub fn to_datetime(value: &Val<'_>) -> Val<'static> {
    match value {
        Val::Str(s) if !s.is_empty() => dates::parse_datetime(s)
            .or_else(|| dates::parse_date(s).map(DateTime::midnight))
            .map_or(Val::Null, Val::DateTime),
        Val::Date(d) => Val::DateTime(DateTime::midnight(*d)),
        Val::DateTime(d) => Val::DateTime(*d),
        _ => Val::Null,
    }
}

/// Python's whitespace-trimmed text with `_` allowed between digits (as
/// `int()`, `float()` and `Decimal()` read numbers), or `None` when an
/// underscore is misplaced. Borrowed when there is none (nearly always).
fn without_underscores(s: &str) -> Option<Cow<'_, str>> {
    let s = s.trim();
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'_' {
            let before = i.checked_sub(1).map(|j| bytes[j]);
            let after = bytes.get(i + 1);
            if !before.is_some_and(|c| c.is_ascii_digit()) || !after.is_some_and(u8::is_ascii_digit)
            {
                return None;
            }
        }
    }
    Some(if bytes.contains(&b'_') {
        Cow::Owned(s.replace('_', ""))
    } else {
        Cow::Borrowed(s)
    })
}

/// Python's `int(s)` in base 10 (sign, digits, surrounding whitespace).
pub fn parse_int(s: &str) -> Option<i64> {
    let clean = without_underscores(s)?;
    let digits = clean.strip_prefix(['+', '-']).unwrap_or(&clean);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    clean.parse().ok()
}

/// Python's `float(s)`: decimal and exponent forms, `inf`, `infinity`, `nan`.
pub fn parse_float(s: &str) -> Option<f64> {
    let clean = without_underscores(s)?;
    let body = clean.strip_prefix(['+', '-']).unwrap_or(&clean);
    let numeric = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
        && body.bytes().any(|b| b.is_ascii_digit());
    let word = || {
        ["inf", "infinity", "nan"]
            .iter()
            .any(|w| body.eq_ignore_ascii_case(w))
    };
    if !(numeric || word()) {
        return None;
    }
    clean.parse().ok()
}

/// Python's `Decimal(s)`: its value and the text `str()` gives it.
fn parse_decimal(s: &str) -> Option<(f64, String)> {
    let clean = without_underscores(s)?;
    let (negative, body) = match clean.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, clean.strip_prefix('+').unwrap_or(&clean)),
    };
    let sign = if negative { "-" } else { "" };
    match body.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => {
            return Some((
                if negative {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                },
                format!("{sign}Infinity"),
            ));
        }
        "nan" => return Some((f64::NAN, format!("{sign}NaN"))),
        _ => {}
    }
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], body[at + 1..].parse::<i64>().ok()?),
        None => (body, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let value: f64 = format!(
        "{sign}{}.{}e{exponent}",
        if int.is_empty() { "0" } else { int },
        frac
    )
    .parse()
    .ok()?;
    // Python's Decimal.__str__: the coefficient's digits and exponent,
    // plain notation unless the exponent is positive or the number is
    // smaller than 1e-6.
    let all = format!("{int}{frac}");
    let digits = all.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let exp = exponent - frac.len() as i64;
    let left = exp + digits.len() as i64;
    let dot = if exp <= 0 && left > -6 { left } else { 1 };
    let len = digits.len() as i64;
    let mut text = sign.to_string();
    if dot <= 0 {
        text.push_str("0.");
        text.push_str(&"0".repeat((-dot) as usize));
        text.push_str(digits);
    } else if dot >= len {
        text.push_str(digits);
        text.push_str(&"0".repeat((dot - len) as usize));
    } else {
        text.push_str(&digits[..dot as usize]);
        text.push('.');
        text.push_str(&digits[dot as usize..]);
    }
    if left != dot {
        text.push_str(&format!("E{:+}", left - dot));
    }
    Some((value, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(v: Val<'_>) -> String {
        match Datatype::Integer.transform(v) {
            Ok(v) => v.py_str(),
            Err(e) => format!("error: {}", e.message),
        }
    }

    #[test]
    fn integers_as_python_reads_them() {
        assert_eq!(int(Val::str("12")), "12");
        assert_eq!(int(Val::str(" -12 ")), "-12");
        assert_eq!(int(Val::str("1_000")), "1000");
        assert_eq!(int(Val::str("1.9")), "1");
        assert_eq!(int(Val::str("-1.9")), "-1");
        assert_eq!(int(Val::str("1e3")), "1000");
        assert_eq!(int(Val::str("abc")), "None");
        assert_eq!(int(Val::str("")), "None");
        assert_eq!(int(Val::str("nan")), "None");
        assert!(int(Val::str("inf")).starts_with("error"));
        assert_eq!(int(Val::Float(2.5)), "2");
        assert_eq!(int(Val::Bool(true)), "1");
        assert_eq!(int(Val::Null), "None");
        assert_eq!(int(Val::List(Rc::new(vec![]))), "None");
    }

    #[test]
    fn decimals_keep_python_text() {
        let d = |s: &str| to_decimal(&Val::str(s)).py_str();
        assert_eq!(d("1.50"), "1.50");
        assert_eq!(d(" 007.5 "), "7.5");
        assert_eq!(d(".5"), "0.5");
        assert_eq!(d("5."), "5");
        assert_eq!(d("1e3"), "1E+3");
        assert_eq!(d("1.5e-7"), "1.5E-7");
        assert_eq!(d("0.000001"), "0.000001");
        assert_eq!(d("-0"), "-0");
        assert_eq!(d("Infinity"), "Infinity");
        assert_eq!(d("abc"), "None");
        assert_eq!(to_decimal(&Val::Int(3)).py_str(), "3");
        assert!(matches!(to_decimal(&Val::str("2.25")), Val::Decimal(f, _) if f == 2.25));
    }

    #[test]
    fn dates_and_strings() {
        let date = |s: &str| to_date(&Val::str(s)).py_str();
        assert_eq!(date("2015-01-05"), "2015-01-05");
        assert_eq!(date("2015-01-05T10:00:00.000000Z"), "2015-01-05");
        assert_eq!(date("2015-01-05T10:00:00+01:00"), "None");
        assert_eq!(date("not a date"), "None");
        assert_eq!(date(""), "None");
        let dt = |s: &str| to_datetime(&Val::str(s)).py_str();
        assert_eq!(dt("2015-01-05"), "2015-01-05 00:00:00");
        assert_eq!(dt("2015-01-05T10:00:00Z"), "2015-01-05 10:00:00");
        assert_eq!(to_date(&Val::Int(5)).py_str(), "None");
        let s = |v: Val<'static>| Datatype::String.transform(v).unwrap().py_str();
        assert_eq!(s(Val::Float(1.0)), "1.0");
        assert_eq!(s(Val::Bool(false)), "False");
        assert!(Datatype::String.transform(Val::Null).unwrap().is_null());
        assert_eq!(
            Datatype::Array.transform(Val::str("a")).unwrap().py_str(),
            "['a']"
        );
    }
}
