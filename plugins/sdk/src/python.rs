//! Python's `str()` and `repr()` of JSON values, as CommCare writes them.
//!
//! CommCare's processors are Python: they read a document with `json`, and
//! where they need text from a value they call `str()` on it (case-search's
//! case property values, UCR's string columns). A plugin that must produce
//! the same bytes uses [`write_str`] on the validated [`Value`]:
//!
//! ```
//! use pillowtop_sdk::json::Value;
//! use pillowtop_sdk::python;
//!
//! let mut out = String::new();
//! python::write_str(&mut out, Value::parse(r#"[1e5, true, null, "it's", {"a": 1}]"#).unwrap());
//! assert_eq!(out, r#"[100000.0, True, None, "it's", {'a': 1}]"#);
//! ```
//!
//! The rules are Python 3's: `json` reads a number with a fraction or an
//! exponent as a `float` (printed as the shortest text that reads back the
//! same, `1e+16` from 10^16 up and `1e-05` below 10^-4, `inf` past the
//! largest float) and any other as an `int` (every digit kept); an object
//! with a key twice keeps the first key's place and the last value;
//! strings inside a list or dict are quoted by `repr`, in `'` unless the
//! text holds a `'` and no `"`, with `\n`, `\t`, `\r`, `\\`, the quote and
//! characters Python does not print escaped.
//!
//! One difference is known and left: Python also escapes code points that
//! Unicode has not assigned yet (it carries the Unicode tables; this module
//! carries the ranges of the unprinted categories that are assigned, such
//! as controls, format characters, separators and private use), and a lone
//! UTF-16 surrogate escape in the input is read as U+FFFD.

use crate::json::{Kind, Value};
use std::borrow::Cow;
use std::fmt::Write as _;

/// Append Python's `str()` of `value` (as `json.loads` reads it) to `out`:
/// a string as it is, `None`, `True`, `False`, numbers as Python prints an
/// `int` or a `float`, lists and dicts as their `repr`.
pub fn write_str(out: &mut String, value: Value<'_>) {
    match value.kind() {
        Kind::String => out.push_str(&value.as_str().unwrap_or_default()),
        _ => write_repr(out, value),
    }
}

/// Python's `str()` of `value` as a new string; see [`write_str`].
pub fn str(value: Value<'_>) -> String {
    let mut out = String::new();
    write_str(&mut out, value);
    out
}

/// Append Python's `repr()` of `value` to `out`: like [`write_str`], but a
/// string is quoted and escaped.
pub fn write_repr(out: &mut String, value: Value<'_>) {
    match value.kind() {
        Kind::Null => out.push_str("None"),
        Kind::Bool => out.push_str(if value.raw() == "true" {
            "True"
        } else {
            "False"
        }),
        Kind::Number => write_number(out, value.raw()),
        Kind::String => write_str_repr(out, &value.as_str().unwrap_or_default()),
        Kind::Array => {
            out.push('[');
            for (i, element) in value.elements().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, element);
            }
            out.push(']');
        }
        Kind::Object => {
            out.push('{');
            for (i, (key, member)) in dict_items(value).into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_str_repr(out, &key);
                out.push_str(": ");
                write_repr(out, member);
            }
            out.push('}');
        }
    }
}

/// An object's members as a Python dict holds them: each key once, in the
/// place it first appeared, with the value it was given last.
pub fn dict_items<'a>(object: Value<'a>) -> Vec<(Cow<'a, str>, Value<'a>)> {
    let mut items: Vec<(Cow<'a, str>, Value<'a>)> = Vec::new();
    for (key, member) in object.members() {
        let key = key.decoded();
        match items.iter_mut().find(|(k, _)| *k == key) {
            Some(item) => item.1 = member,
            None => items.push((key, member)),
        }
    }
    items
}

/// A JSON number as Python prints what `json` reads from it.
fn write_number(out: &mut String, raw: &str) {
    if !raw.contains(['.', 'e', 'E']) {
        // An int: its digits, and `-0` is 0.
        let zero = raw.trim_start_matches('-') == "0";
        out.push_str(if zero { "0" } else { raw });
        return;
    }
    write_float(out, raw.parse().unwrap_or(f64::NAN));
}

/// Python's `repr(float)`: the shortest digits that read back as `x`, in
/// positional notation for 1e-4 <= |x| < 1e16 (with `.0` when whole) and
/// as `d.ddde+XX` outside it.
pub fn write_float(out: &mut String, x: f64) {
    if x.is_nan() {
        out.push_str("nan");
        return;
    }
    if x.is_infinite() {
        out.push_str(if x < 0.0 { "-inf" } else { "inf" });
        return;
    }
    // Rust's `{:e}` gives the shortest round-trip digits: `-1.5e-7`.
    let sci = format!("{x:e}");
    let (sign, sci) = match sci.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", sci.as_str()),
    };
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i32 = exponent.parse().unwrap_or(0);
    // The value is 0.DIGITS x 10^point.
    let point = exponent + 1;
    out.push_str(sign);
    let n = digits.len() as i32;
    if point > 16 || point <= -4 {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let e = point - 1;
        let _ = write!(out, "e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    } else if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-point) as usize));
        out.push_str(&digits);
    } else if point < n {
        out.push_str(&digits[..point as usize]);
        out.push('.');
        out.push_str(&digits[point as usize..]);
    } else {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (point - n) as usize));
        out.push_str(".0");
    }
}

/// Python's `repr(str)`.
pub fn write_str_repr(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if printable(c) => out.push(c),
            c => {
                let code = c as u32;
                let _ = match code {
                    0..=0xff => write!(out, "\\x{code:02x}"),
                    0x100..=0xffff => write!(out, "\\u{code:04x}"),
                    _ => write!(out, "\\U{code:08x}"),
                };
            }
        }
    }
    out.push(quote);
}

/// Whether Python's `repr` prints `c` as it is: not a control (Cc), format
/// character (Cf), surrogate, private-use character (Co), line or
/// paragraph separator, or space other than U+0020 (Zs), nor a
/// noncharacter.
fn printable(c: char) -> bool {
    let code = c as u32;
    if code < 0x7f {
        return code >= 0x20;
    }
    !NOT_PRINTED
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&code))
        && (code & 0xfffe) != 0xfffe
        && !(0xfdd0..=0xfdef).contains(&code)
}

/// Assigned code points of the categories Python does not print
/// (Cc, Cf, Co, Zl, Zp, and Zs but for the space).
const NOT_PRINTED: &[(u32, u32)] = &[
    (0x7f, 0xa0),
    (0xad, 0xad),
    (0x600, 0x605),
    (0x61c, 0x61c),
    (0x6dd, 0x6dd),
    (0x70f, 0x70f),
    (0x890, 0x891),
    (0x8e2, 0x8e2),
    (0x1680, 0x1680),
    (0x180e, 0x180e),
    (0x2000, 0x200f),
    (0x2028, 0x202f),
    (0x205f, 0x2064),
    (0x2066, 0x206f),
    (0x3000, 0x3000),
    (0xd800, 0xf8ff),
    (0xfeff, 0xfeff),
    (0xfff9, 0xfffb),
    (0x110bd, 0x110bd),
    (0x110cd, 0x110cd),
    (0x13430, 0x1343f),
    (0x1bca0, 0x1bca3),
    (0x1d173, 0x1d17a),
    (0xe0001, 0xe0001),
    (0xe0020, 0xe007f),
    (0xf0000, 0x10ffff),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn s(json: &str) -> String {
        str(Value::parse(json).unwrap())
    }

    // Expected texts are what CPython 3.11 prints for
    // `str(json.loads(JSON))`.
    #[test]
    fn scalars() {
        assert_eq!(s("true"), "True");
        assert_eq!(s("false"), "False");
        assert_eq!(s("null"), "None");
        assert_eq!(s(r#""text""#), "text");
        assert_eq!(s(r#""a\nb""#), "a\nb");
        assert_eq!(s("36"), "36");
        assert_eq!(s("-0"), "0");
        assert_eq!(
            s("123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
    }

    #[test]
    fn floats_as_python_prints_them() {
        for (json, python) in [
            ("61.5", "61.5"),
            ("1.0", "1.0"),
            ("1.50", "1.5"),
            ("-0.0", "-0.0"),
            ("0.0", "0.0"),
            ("1e5", "100000.0"),
            ("1E5", "100000.0"),
            ("0.1", "0.1"),
            ("0.0001", "0.0001"),
            ("0.00001", "1e-05"),
            ("0.000123", "0.000123"),
            ("0.0000123", "1.23e-05"),
            ("1e15", "1000000000000000.0"),
            ("1e16", "1e+16"),
            ("1.5e16", "1.5e+16"),
            ("123456789012345678.0", "1.2345678901234568e+17"),
            ("1e100", "1e+100"),
            ("2.5e-300", "2.5e-300"),
            ("1e400", "inf"),
            ("-1e400", "-inf"),
            ("3.141592653589793", "3.141592653589793"),
            ("0.30000000000000004", "0.30000000000000004"),
            ("-12.25", "-12.25"),
        ] {
            assert_eq!(s(json), python, "{json}");
        }
    }

    #[test]
    fn lists_and_dicts_as_their_repr() {
        assert_eq!(s(r#"["a", "b"]"#), "['a', 'b']");
        assert_eq!(s(r#"{"a": 1}"#), "{'a': 1}");
        assert_eq!(s("[]"), "[]");
        assert_eq!(s("{}"), "{}");
        assert_eq!(
            s(r#"{"k": [1, 2.0, null, true, {"x": "y"}], "n": -3}"#),
            "{'k': [1, 2.0, None, True, {'x': 'y'}], 'n': -3}"
        );
        // A repeated key: the first one's place, the last one's value.
        assert_eq!(s(r#"{"a": 1, "b": 2, "a": 3}"#), "{'a': 3, 'b': 2}");
    }

    #[test]
    fn string_repr_quotes_and_escapes() {
        assert_eq!(s(r#"["it's"]"#), r#"["it's"]"#);
        assert_eq!(s(r#"["say \"hi\""]"#), r#"['say "hi"']"#);
        assert_eq!(s(r#"["both ' and \""]"#), r#"['both \' and "']"#);
        assert_eq!(s(r#"["a\\b"]"#), r"['a\\b']");
        assert_eq!(s(r#"["tab\tnl\ncr\r"]"#), r"['tab\tnl\ncr\r']");
        assert_eq!(s(r#"["\u0001\u007f"]"#), r"['\x01\x7f']");
        assert_eq!(s(r#"["é ü 日本 😀"]"#), "['é ü 日本 😀']");
        assert_eq!(
            s(r#"["\u00a0\u00ad\u200b\u2028\ue000"]"#),
            r"['\xa0\xad\u200b\u2028\ue000']"
        );
        assert_eq!(s(r#"["\udb80\udc00"]"#), r"['\U000f0000']");
    }
}
