//! Tests of the JSON helpers, across their parts.

use super::scan::{self, special_mask16, string_special_mask};
use super::validate::quick_validate;
use super::*;
use std::borrow::Cow;

/// Valid texts that exercise every part of the grammar: strings with
/// escapes, scalars at every offset within a 64-byte block, and nesting at
/// and past the limit.
fn sample_texts() -> Vec<String> {
    let samples = [
        r#"{"a": [1, -2.5e+3, 0, true, false, null, "x\"\\\/\b\f\n\r\t\u00e9"], "b": {"c": {}}, "d": []}"#,
        r#"[{"key":"@case_id","value":"abc"},{"key":"k","value":"a long value that needs more than one word"}]"#,
        " \t\r\n\"str\" ",
        "-0.5E-7",
        "ż",
        r#"{"żółć": "✓ ünïcödé"}"#,
    ];
    let mut cases: Vec<String> = samples.iter().map(|s| s.to_string()).collect();
    // Longer than one 64-byte block, with strings, escapes (runs of
    // backslashes too) and scalars at every offset within a block: each
    // shifted by 0..64 leading blanks.
    let long = [
        r#"{"_id":"c-1","name":"Ada \"the\" first \\","case_properties":[{"key":"@case_id","value":"c-1"},{"key":"age","value":"36"},{"key":"x\\\"y","value":"\u00e9\/\b"}],"n":-12.5e-3,"t":true,"f":false,"z":null,"e":{},"a":[]}"#,
        r#"[["a long string value that crosses a block boundary for sure, yes it does", 1, 22, 333, "\\", "\\\\\"", "\\\"\\"], {"k\n": [null, true, {"deep": [0.5, -0, 1E+2]}]}]"#,
    ];
    for text in long {
        for shift in 0..64 {
            cases.push(" ".repeat(shift) + text);
        }
    }
    cases.push("[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH));
    cases.push("[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1));
    cases.push("{\"a\":".repeat(MAX_DEPTH) + "1" + &"}".repeat(MAX_DEPTH));
    cases.push("{\"a\":".repeat(MAX_DEPTH + 1) + "1" + &"}".repeat(MAX_DEPTH + 1));
    cases
}

/// Call `check` on `rounds` random corruptions of `cases` (one to three
/// bytes replaced, inserted or deleted, drawn mostly from JSON's own
/// punctuation) that are still UTF-8.
fn for_corruptions(cases: &[String], rounds: usize, mut check: impl FnMut(&str)) {
    const ALPHABET: &[u8] = b"{}[]:,\"\\ \n0123456789.-+eEtrufalsnx/\x01";
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for round in 0..rounds {
        let base = cases[round % cases.len()].as_bytes();
        let mut bytes = base.to_vec();
        for _ in 0..1 + next(3) {
            let at = next(bytes.len() + 1);
            let c = ALPHABET[next(ALPHABET.len())];
            match next(3) {
                0 if at < bytes.len() => bytes[at] = c,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, c),
            }
        }
        if let Ok(text) = std::str::from_utf8(&bytes) {
            check(text);
        }
    }
}

/// `validate`'s fast path agrees with `Value::parse` on valid text and
/// on thousands of random corruptions of it (a disagreement would let
/// invalid JSON through, or refuse valid JSON, in the host's checks).
#[test]
fn validate_agrees_with_parse() {
    let cases = sample_texts();
    let fast = |text: &str| {
        let scalar = quick_validate(text.as_bytes());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(blocks::quick_validate(text.as_bytes()), scalar, "{text:?}");
        scalar
    };
    for s in &cases {
        assert_eq!(fast(s), Value::parse(s).ok().map(|v| v.kind()), "{s}");
    }
    let mut accepted = 0;
    let mut rejected = 0;
    for_corruptions(&cases, 100_000, |text| {
        let slow = Value::parse(text).map(|v| v.kind());
        assert_eq!(fast(text), slow.ok(), "{text:?}");
        assert_eq!(validate(text), slow, "{text:?}");
        if slow.is_ok() {
            accepted += 1;
        } else {
            rejected += 1;
        }
    });
    // Both answers were exercised many times.
    assert!(
        accepted > 2_500 && rejected > 25_000,
        "{accepted} accepted, {rejected} rejected"
    );
}

/// [`Value::parse`] byte by byte, never taking a container with the block
/// validator.
fn parse_byte_by_byte(text: &str) -> Result<Value<'_>, Error> {
    Value::parse_with(scan::Scanner::byte_by_byte(text))
}

/// Taking objects and arrays whole with the block validator changes no
/// answer of the scanner: the same values, the same errors at the same
/// offsets, on valid text and on its random corruptions.
#[test]
fn containers_taken_whole_change_no_answer() {
    let cases = sample_texts();
    let mut checked = 0;
    for_corruptions(&cases, 100_000, |text| {
        let reference = parse_byte_by_byte(text);
        assert_eq!(Value::parse(text), reference, "{text:?}");
        #[cfg(target_arch = "x86_64")]
        {
            let t = text.trim_start_matches([' ', '\t', '\r', '\n']);
            let bytewise = scan::Scanner::byte_by_byte(t).value(0).ok();
            let end = blocks::quick_container_end(t.as_bytes(), 0);
            if let Some(end) = end {
                // Accepted: exactly the container the scanner reads.
                assert_eq!(Some(end), bytewise.map(|v| v.raw().len()), "{t:?}");
                checked += 1;
            } else if reference.is_ok() && matches!(t.as_bytes()[0], b'{' | b'[') {
                panic!("a valid container was refused: {t:?}");
            }
        }
    });
    #[cfg(target_arch = "x86_64")]
    assert!(checked > 2_500, "{checked} containers taken whole");
    for s in &cases {
        assert_eq!(Value::parse(s), parse_byte_by_byte(s), "{s}");
    }
}

/// The block validator counts the containers a value sits in toward the
/// nesting limit, and does not read past the container.
#[cfg(target_arch = "x86_64")]
#[test]
fn a_container_taken_whole_keeps_the_nesting_limit_and_ignores_what_follows() {
    let nested = "[".repeat(3) + &" ".repeat(64) + &"]".repeat(3);
    assert_eq!(
        blocks::quick_container_end(nested.as_bytes(), MAX_DEPTH - 3),
        Some(nested.len())
    );
    assert_eq!(
        blocks::quick_container_end(nested.as_bytes(), MAX_DEPTH - 2),
        None
    );
    let mut s = scan::Scanner::byte_by_byte(&nested);
    assert_eq!(
        s.value(MAX_DEPTH - 2).unwrap_err().reason,
        "nesting too deep"
    );
    let followed = format!("{{\"a\":[1,2,\"{}\"]}}, ] not json at all", "x".repeat(64));
    let end = followed.find(", ]").unwrap();
    assert_eq!(
        blocks::quick_container_end(followed.as_bytes(), 0),
        Some(end)
    );
    // A byte no JSON text may hold, in the container's last block: refused
    // (the caller then reads the container byte by byte).
    assert_eq!(
        blocks::quick_container_end(format!("{followed}\u{1}").as_bytes(), 0),
        None
    );
    assert_eq!(
        blocks::quick_container_end(b"\"a string, not a container\"", 0),
        None
    );
    // Invalid text is tried whole once, then read byte by byte, which
    // says where it fails.
    let bad = format!("{{\"a\":{{\"b\":[{}tru]}}}}", "1,".repeat(40));
    assert_eq!(Value::parse(&bad), parse_byte_by_byte(&bad));
    assert_eq!(
        Value::parse(&bad).unwrap_err().reason,
        "expected true, false or null"
    );
}

/// Read the next value with `reader`, going into objects and arrays
/// where `enter` says so (by depth and position) and taking the rest
/// whole; return the value's text put back together, compacted.
fn read_steered(
    reader: &mut Reader<'_>,
    depth: usize,
    enter: &impl Fn(usize, usize) -> bool,
    at: usize,
) -> Result<String, Error> {
    let kind = reader.kind()?;
    if !enter(depth, at) || !matches!(kind, Kind::Object | Kind::Array) {
        let mut out = String::new();
        write_compact(&mut out, reader.value()?.raw());
        return Ok(out);
    }
    let mut out = String::new();
    let mut i = 0;
    if kind == Kind::Object {
        reader.object()?;
        out.push('{');
        while let Some(key) = reader.key()? {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key.raw());
            out.push(':');
            out.push_str(&read_steered(reader, depth + 1, enter, i)?);
            i += 1;
        }
        out.push('}');
    } else {
        reader.array()?;
        out.push('[');
        while reader.element()? {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&read_steered(reader, depth + 1, enter, i)?);
            i += 1;
        }
        out.push(']');
    }
    Ok(out)
}

/// A `Reader` steered anywhere (into everything, into nothing, into
/// every other item) accepts exactly what `Value::parse` accepts,
/// refuses the rest at the same byte for the same reason, and reads
/// the same value.
#[test]
fn a_reader_steered_anywhere_agrees_with_parse() {
    let steerings: [&dyn Fn(usize, usize) -> bool; 4] = [
        &|_, _| true,
        &|_, _| false,
        &|depth, _| depth < 2,
        &|depth, at| (depth + at) % 2 == 0,
    ];
    let check = |text: &str| {
        let parsed = Value::parse(text).map(|v| {
            let mut out = String::new();
            write_compact(&mut out, v.raw());
            out
        });
        for (n, enter) in steerings.iter().enumerate() {
            let mut reader = Reader::new(text);
            let read = read_steered(&mut reader, 0, enter, 0).and_then(|out| {
                reader.end()?;
                Ok(out)
            });
            assert_eq!(read, parsed, "steering {n}: {text:?}");
        }
    };
    let cases = sample_texts();
    for s in &cases {
        check(s);
    }
    for_corruptions(&cases, 30_000, check);
}

#[test]
fn a_reader_refuses_an_unfinished_value_and_misplaced_steps() {
    let mut reader = Reader::new(r#"{"a": [1"#);
    reader.object().unwrap();
    reader.key().unwrap().unwrap();
    reader.array().unwrap();
    assert!(reader.element().unwrap());
    reader.value().unwrap();
    assert_eq!(
        reader.element().unwrap_err().reason,
        "expected ',' or ']' in array"
    );
    let mut early = Reader::new(r#"{"a": 1}"#);
    early.object().unwrap();
    assert_eq!(early.end().unwrap_err().reason, "the value is not complete");
    assert_eq!(
        Reader::new("[1]").object().unwrap_err().reason,
        "expected an object"
    );
    assert_eq!(
        Reader::new("{}").array().unwrap_err().reason,
        "expected an array"
    );
    assert_eq!(Reader::new("  ").kind().unwrap_err().offset, 2);
}

#[test]
fn accepts_valid_documents() {
    for text in [
        "null",
        " true ",
        "-0.5e+10",
        r#""a\u00e9\n""#,
        r#"{"a": [1, 2, {"b": null}], "c": "d"}"#,
        "[]",
        "{}",
    ] {
        assert!(Value::parse(text).is_ok(), "{text}");
    }
}

#[test]
fn rejects_invalid_documents_with_position() {
    for (text, offset) in [
        ("{", 1),
        (r#"{"a" 1}"#, 5),
        ("[1,]", 3),
        ("01", 1),
        ("1.", 2),
        ("\"abc", 4),
        ("\"a\u{1}\"", 2),
        (r#""\x""#, 2),
        ("{} x", 3),
        ("tru", 0),
        (r#"{"a":1,}"#, 7),
    ] {
        let err = Value::parse(text).unwrap_err();
        assert_eq!(err.offset, offset, "{text}: {err}");
    }
}

#[test]
fn rejects_deep_nesting() {
    let text = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
    assert_eq!(Value::parse(&text).unwrap_err().reason, "nesting too deep");
    let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
    assert!(Value::parse(&ok).is_ok());
}

#[test]
fn keys_compare_by_their_decoded_text() {
    let v = Value::parse(
        r#"{"case_json":1,"case\u005fjson":2,"a\nb":3,"\u00e9":4,"é":5,"cas":6,"\"ab":7}"#,
    )
    .unwrap();
    let keys: Vec<Key<'_>> = v.members().map(|(k, _)| k).collect();
    let is = |i: usize, name: &str| keys[i].is(name);
    assert!(is(0, "case_json") && is(1, "case_json"));
    assert!(is(2, "a\nb"), "an escaped newline is a newline");
    assert!(
        !is(2, r"a\nb"),
        "the key is a, newline, b; not a, backslash, n, b"
    );
    assert!(is(3, "é") && is(4, "é"));
    assert!(!is(3, r"\u00e9"));
    assert!(!is(5, "case_json") && !is(0, "cas"));
    assert!(is(6, "\"ab") && !is(6, r#"\"ab"#));
    // Every key agrees with its decoded text.
    for k in &keys {
        assert!(k.is(&k.decoded()), "{}", k.raw());
    }
}

#[test]
fn key_comparison_agrees_with_decoding_on_every_small_key() {
    // Every key of up to three pieces, plain or escaped, against every
    // such key's decoded and written text: `is` must answer exactly
    // what decoding and comparing answers.
    let pieces = ["a", "b", r"\\", r"\n", r"\u0061", r#"\""#, r"\/", "/"];
    let mut written = vec![String::new()];
    for _ in 0..3 {
        let longer: Vec<String> = written
            .iter()
            .flat_map(|w| pieces.iter().map(move |p| format!("{w}{p}")))
            .collect();
        written.extend(longer);
    }
    written.sort();
    written.dedup();
    let texts: Vec<String> = written.iter().map(|w| format!("{{\"{w}\":0}}")).collect();
    let keys: Vec<Key<'_>> = texts
        .iter()
        .map(|t| Value::parse(t).unwrap().members().next().unwrap().0)
        .collect();
    let mut names: Vec<String> = keys.iter().map(|k| k.decoded().into_owned()).collect();
    names.extend(written.iter().cloned());
    for k in &keys {
        let decoded = k.decoded();
        for name in &names {
            assert_eq!(
                k.is(name),
                *decoded == **name,
                "key {} name {name:?}",
                k.raw()
            );
        }
    }
}

#[test]
fn walks_members_and_elements() {
    let v = Value::parse(r#"{"a": 1, "b\"c": [true, "x"], "d": {}}"#).unwrap();
    let keys: Vec<_> = v.members().map(|(k, _)| k.decoded().into_owned()).collect();
    assert_eq!(keys, ["a", "b\"c", "d"]);
    let b = v.get("b\"c").unwrap();
    assert_eq!(b.kind(), Kind::Array);
    let elems: Vec<_> = b.elements().map(|e| e.raw()).collect();
    assert_eq!(elems, ["true", "\"x\""]);
    assert_eq!(v.get("a").unwrap().as_i64(), Some(1));
    assert!(v.get("missing").is_none());
    assert_eq!(v.get("d").unwrap().members().count(), 0);
}

#[test]
fn walk_validates_lazily_and_checks_the_end() {
    let members: Result<Vec<_>, _> = walk_object(r#" {"a": 1, "b": [2]} "#).unwrap().collect();
    assert_eq!(members.unwrap().len(), 2);
    let mut bad = walk_object(r#"{"a": 1, "b": [2,]}"#).unwrap();
    assert!(bad.next().unwrap().is_ok());
    assert_eq!(bad.next().unwrap().unwrap_err().offset, 17);
    assert!(bad.next().is_none());
    let trailing: Vec<_> = walk_object(r#"{"a": 1} x"#).unwrap().collect();
    assert!(trailing.last().unwrap().is_err());
    assert!(walk_object("[1]").is_err());
}

#[test]
fn expanding_walk_reads_the_nested_object_in_the_same_pass() {
    let mut inner = Vec::new();
    let mut walk = walk_object(r#"{"a": 1, "m": {"x": "1", "y": [2]}, "z": {"q": 1}}"#).unwrap();
    let mut outer = Vec::new();
    while let Some(m) =
        walk.next_expanding("m", |k, v| inner.push((k.decoded().into_owned(), v.raw())))
    {
        let (k, v) = m.unwrap();
        outer.push((k.decoded().into_owned(), v.raw()));
    }
    assert_eq!(
        inner,
        [("x".to_string(), "\"1\""), ("y".to_string(), "[2]")]
    );
    assert_eq!(outer[1], ("m".to_string(), r#"{"x": "1", "y": [2]}"#));
    assert_eq!(outer.len(), 3, "z is not expanded");
    // Errors inside the expanded object surface, with their position.
    let mut bad = walk_object(r#"{"m": {"x": tru}}"#).unwrap();
    assert_eq!(
        bad.next_expanding("m", |_, _| {})
            .unwrap()
            .unwrap_err()
            .offset,
        12
    );
    let mut trailing = walk_object(r#"{"m": {}} x"#).unwrap();
    assert!(trailing.next_expanding("m", |_, _| {}).unwrap().is_ok());
    assert!(trailing.next_expanding("m", |_, _| {}).unwrap().is_err());
}

#[test]
fn unescapes_strings() {
    let v = Value::parse(r#""tab\there \"q\" \u00e9 \ud83d\ude00 \/""#).unwrap();
    assert_eq!(v.as_str().unwrap(), "tab\there \"q\" é 😀 /");
    let plain = Value::parse(r#""plain""#).unwrap();
    assert!(matches!(plain.as_str().unwrap(), Cow::Borrowed("plain")));
}

#[test]
fn word_scan_finds_every_special_byte_at_every_position() {
    for special in [b'"', b'\\', 0x00, 0x1f] {
        for at in 0..8 {
            let mut bytes = *b"abcdefgh";
            bytes[at] = special;
            assert!(
                string_special_mask(u64::from_le_bytes(bytes)).trailing_zeros() / 8 == at as u32,
                "{special:#x} at {at}"
            );
        }
    }
    for plain in [
        *b"abcdefgh",
        *b"        ",
        [0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'],
    ] {
        assert_eq!(
            string_special_mask(u64::from_le_bytes(plain)),
            0,
            "{plain:?}"
        );
    }
    // The 16-byte scan flags exactly the special bytes, lowest first.
    if special_mask16(&[b'a'; 16], 0).is_some() {
        for special in [b'"', b'\\', 0x00, 0x1f] {
            for at in 0..16 {
                let mut bytes = *b"abcdefghijklmnop";
                bytes[at] = special;
                assert_eq!(
                    special_mask16(&bytes, 0),
                    Some(1 << at),
                    "{special:#x} at {at}"
                );
            }
        }
        let plain = [
            0x20, 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']', b' ', b'a', b'/', b'{', b'}', b':',
            b',', b'0',
        ];
        assert_eq!(special_mask16(&plain, 0), Some(0));
        assert_eq!(special_mask16(&plain, 1), None, "fewer than 16 bytes left");
    }
    // Long strings with escapes and controls at every offset still validate exactly.
    for at in 0..40 {
        let mut s = "x".repeat(40);
        s.insert_str(at, "\\n");
        assert!(Value::parse(&format!("\"{s}\"")).is_ok());
        let mut bad = "x".repeat(40);
        bad.insert(at, '\u{1}');
        assert_eq!(
            Value::parse(&format!("\"{bad}\"")).unwrap_err().reason,
            "control character in string"
        );
    }
}

#[test]
fn compacts_outside_strings_only() {
    let mut out = String::new();
    write_compact(&mut out, "[ 1 ,\n {\"a b\" : \"c \\\" d\" } ]");
    assert_eq!(out, r#"[1,{"a b":"c \" d"}]"#);
}

#[test]
fn escapes_round_trip() {
    let original = "quote \" backslash \\ newline \n bell \u{7} é";
    let mut out = String::new();
    write_str(&mut out, original);
    assert_eq!(out, r#""quote \" backslash \\ newline \n bell \u0007 é""#);
    assert_eq!(Value::parse(&out).unwrap().as_str().unwrap(), original);
}

#[test]
fn python_truthiness_and_the_last_of_a_repeated_key() {
    for (raw, truthy) in [
        ("null", false),
        ("false", false),
        ("true", true),
        ("0", false),
        ("0.0", false),
        ("-1", true),
        ("\"\"", false),
        ("\"false\"", true),
        ("[]", false),
        ("[0]", true),
        ("{}", false),
        ("{\"a\":null}", true),
    ] {
        assert_eq!(Value::parse(raw).unwrap().truthy(), truthy, "{raw}");
    }
    let doc = Value::parse(r#"{"a": 1, "b": 2, "a": 3}"#).unwrap();
    assert_eq!(doc.get("a").unwrap().raw(), "1");
    assert_eq!(doc.get_last("a").unwrap().raw(), "3");
    assert_eq!(doc.get_last("c"), None);
}

#[test]
fn pointers_walk_objects_and_arrays_and_read_the_last_repeated_key() {
    let doc = Value::parse(
        r#"{"form": {"meta": {"userID": "x", "userID": "u1"}}, "a/b": [1, {"~k": 2}]}"#,
    )
    .unwrap();
    assert_eq!(doc.pointer("/form/meta/userID").unwrap().raw(), "\"u1\"");
    assert_eq!(doc.pointer("/a~1b/1/~0k").unwrap().raw(), "2");
    assert_eq!(doc.pointer("").unwrap().raw(), doc.raw());
    for absent in [
        "/form/nope",
        "/a~1b/7",
        "/a~1b/x",
        "/form/meta/userID/deeper",
        "no-slash",
    ] {
        assert_eq!(doc.pointer(absent), None, "{absent}");
    }
}
