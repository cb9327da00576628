//! Reading: a validated value as a slice of its input, keys as written,
//! lazy member and element iterators, and decoding string literals.

use super::scan::Scanner;
use super::{Error, Kind};
use std::borrow::Cow;

/// A validated JSON value: a slice of the input and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    pub(super) raw: &'a str,
    pub(super) kind: Kind,
}

/// An object member's key, kept as written (with quotes and escapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    pub(super) raw: &'a str,
    /// Whether the key has an escape (the scanner saw one): without, its
    /// text between the quotes is what it decodes to.
    pub(super) escaped: bool,
}

impl<'a> Value<'a> {
    /// Validate `text` as exactly one JSON value (surrounding whitespace allowed).
    ///
    /// # Errors
    ///
    /// Returns where and why `text` is not a single valid JSON value.
    pub fn parse(text: &'a str) -> Result<Value<'a>, Error> {
        Value::parse_with(Scanner::new(text))
    }

    /// [`Value::parse`] of the text `s` is at the start of.
    pub(super) fn parse_with(mut s: Scanner<'a>) -> Result<Value<'a>, Error> {
        s.skip_ws();
        let value = s.value(0)?;
        s.skip_ws();
        if s.pos != s.bytes.len() {
            return Err(s.error("trailing characters after the value"));
        }
        Ok(value)
    }

    /// The value exactly as written in the input.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The value's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        self.kind == Kind::Null
    }

    /// The boolean, if this is `true` or `false`.
    pub fn as_bool(&self) -> Option<bool> {
        match self.raw {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The number as `f64`, if this is a number.
    pub fn as_f64(&self) -> Option<f64> {
        (self.kind == Kind::Number)
            .then(|| self.raw.parse().ok())
            .flatten()
    }

    /// The number as `i64`, if this is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        (self.kind == Kind::Number)
            .then(|| self.raw.parse().ok())
            .flatten()
    }

    /// The unescaped string, if this is a string. Borrows when there is
    /// nothing to unescape.
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        (self.kind == Kind::String).then(|| unescape(self.raw))
    }

    /// The members of an object, in input order (empty for other kinds).
    pub fn members(&self) -> Members<'a> {
        let mut scanner = Scanner::new(self.raw);
        if self.kind == Kind::Object {
            scanner.pos = 1; // past `{`
        } else {
            scanner.pos = scanner.bytes.len();
        }
        Members {
            scanner,
            first: true,
            done: self.kind != Kind::Object,
        }
    }

    /// The elements of an array, in order (empty for other kinds).
    pub fn elements(&self) -> Elements<'a> {
        let mut scanner = Scanner::new(self.raw);
        scanner.pos = if self.kind == Kind::Array {
            1
        } else {
            scanner.bytes.len()
        };
        Elements {
            scanner,
            first: true,
            done: self.kind != Kind::Array,
        }
    }

    /// The value of the first member named `key`, if this is an object that has one.
    pub fn get(&self, key: &str) -> Option<Value<'a>> {
        self.members().find(|(k, _)| k.is(key)).map(|(_, v)| v)
    }

    /// The value of the last member named `key`: what Python's `json`
    /// (and so CommCare) reads from an object that has the key twice.
    pub fn get_last(&self, key: &str) -> Option<Value<'a>> {
        self.members()
            .filter(|(k, _)| k.is(key))
            .map(|(_, v)| v)
            .last()
    }

    /// The value at JSON pointer `pointer` (RFC 6901: `""` is the whole
    /// value, `/form/meta/userID` a path, `~1` a `/` and `~0` a `~` in a
    /// key, a number an array index); an object with a key twice gives
    /// the last, as [`Value::get_last`]. Only the members along the path
    /// are read.
    pub fn pointer(&self, pointer: &str) -> Option<Value<'a>> {
        if pointer.is_empty() {
            return Some(*self);
        }
        let mut at = *self;
        for token in pointer.strip_prefix('/')?.split('/') {
            let token: Cow<'_, str> = if token.contains('~') {
                Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(token)
            };
            at = match at.kind {
                Kind::Object => at.get_last(&token)?,
                Kind::Array => at.elements().nth(token.parse().ok()?)?,
                _ => return None,
            };
        }
        Some(at)
    }

    /// Python's truthiness of the value: `null`, `false`, `0`, `""`,
    /// `[]` and `{}` are false, everything else (the text `"false"`
    /// included) is true.
    pub fn truthy(&self) -> bool {
        match self.kind {
            Kind::Null => false,
            Kind::Bool => self.raw == "true",
            Kind::Number => self.as_f64().is_some_and(|n| n != 0.0),
            Kind::String => self.raw.len() > 2,
            Kind::Array => self.elements().next().is_some(),
            Kind::Object => self.members().next().is_some(),
        }
    }
}

impl<'a> Key<'a> {
    /// The key as written, with its quotes and escapes: ready to copy into JSON output.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The unescaped key (borrowed unless it has escapes).
    #[inline]
    pub fn decoded(&self) -> Cow<'a, str> {
        if self.escaped {
            unescape(self.raw)
        } else {
            Cow::Borrowed(self.inner())
        }
    }

    /// Whether the key equals `name`: a comparison of the text as written
    /// unless the key has escapes, which are rare enough to decode.
    #[inline]
    pub fn is(&self, name: &str) -> bool {
        if self.escaped {
            self.decoded() == name
        } else {
            self.inner() == name
        }
    }

    /// The text between the quotes, as written.
    #[inline]
    fn inner(&self) -> &'a str {
        // The quotes are one byte each, so both ends are char boundaries.
        &self.raw[1..self.raw.len() - 1]
    }
}

/// Walk the members of the object in `text`, validating as it goes.
///
/// This is the one-pass way to read a document: each member is validated
/// when it is reached, and the end of the object and anything after it are
/// checked when the walk reaches them. Stop at the first `Err`.
///
/// # Errors
///
/// Returns an error at once if `text` does not start with an object;
/// errors inside the object are yielded by the iterator.
pub fn walk_object(text: &str) -> Result<Walk<'_>, Error> {
    let mut scanner = Scanner::new(text);
    scanner.skip_ws();
    if scanner.peek() != Some(b'{') {
        return Err(scanner.error("expected a JSON object"));
    }
    scanner.pos += 1;
    Ok(Walk {
        scanner,
        first: true,
        done: false,
    })
}

/// The validating member iterator returned by [`walk_object`].
#[derive(Debug, Clone)]
pub struct Walk<'a> {
    pub(super) scanner: Scanner<'a>,
    pub(super) first: bool,
    pub(super) done: bool,
}

impl<'a> Walk<'a> {
    /// Like [`Iterator::next`], but when the member is named `key` and its
    /// value is an object, walks into it in the same pass: `inner` gets each
    /// of that object's members (validated once, never scanned again), and
    /// the member itself is still returned with the whole object as its value.
    ///
    /// This is how a transform reads a document and one nested map (like a
    /// case's `case_json`) touching each byte once.
    pub fn next_expanding(
        &mut self,
        key: &str,
        mut inner: impl FnMut(Key<'a>, Value<'a>),
    ) -> Option<Result<(Key<'a>, Value<'a>), Error>> {
        if self.done {
            return None;
        }
        let scanner = &mut self.scanner;
        let result = (|| {
            let Some(k) = scanner.member_key(&mut self.first)? else {
                return Ok(None);
            };
            if k.is(key) && scanner.peek() == Some(b'{') {
                let start = scanner.pos;
                scanner.pos += 1;
                let mut first = true;
                while let Some((ik, iv)) = scanner.next_member(&mut first, 2)? {
                    inner(ik, iv);
                }
                return Ok(Some((
                    k,
                    Value {
                        raw: &scanner.text[start..scanner.pos],
                        kind: Kind::Object,
                    },
                )));
            }
            scanner.value(1).map(|v| Some((k, v)))
        })();
        self.settle(result)
    }

    /// Turn one step's result into the iterator's item: at the end of the
    /// object, check that nothing but whitespace follows; after an error or
    /// the end, stop.
    fn settle(
        &mut self,
        result: Result<Option<(Key<'a>, Value<'a>)>, Error>,
    ) -> Option<Result<(Key<'a>, Value<'a>), Error>> {
        match result {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => {
                self.done = true;
                self.scanner.skip_ws();
                if self.scanner.pos != self.scanner.bytes.len() {
                    return Some(Err(self
                        .scanner
                        .error("trailing characters after the object")));
                }
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl<'a> Iterator for Walk<'a> {
    type Item = Result<(Key<'a>, Value<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let result = self.scanner.next_member(&mut self.first, 1);
        self.settle(result)
    }
}

/// Iterator over an object's members. Stops at the end of the object.
#[derive(Debug, Clone)]
pub struct Members<'a> {
    pub(super) scanner: Scanner<'a>,
    pub(super) first: bool,
    pub(super) done: bool,
}

impl<'a> Iterator for Members<'a> {
    type Item = (Key<'a>, Value<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        // The object was validated when its `Value` was made, so a failure
        // here cannot happen; end the iteration rather than panic.
        let item = self.scanner.next_member(&mut self.first, 1);
        match item {
            Ok(Some(item)) => Some(item),
            _ => {
                self.done = true;
                None
            }
        }
    }
}

/// Iterator over an array's elements.
#[derive(Debug, Clone)]
pub struct Elements<'a> {
    pub(super) scanner: Scanner<'a>,
    pub(super) first: bool,
    pub(super) done: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.scanner.next_element(&mut self.first, 1) {
            Ok(Some(item)) => Some(item),
            _ => {
                self.done = true;
                None
            }
        }
    }
}

/// Unescape a validated JSON string literal (with its quotes).
fn unescape(raw: &str) -> Cow<'_, str> {
    let inner = &raw[1..raw.len() - 1];
    if !inner.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('u') => {
                let hi = hex4(&mut chars);
                let code = if (0xD800..0xDC00).contains(&hi) {
                    // A surrogate pair: `\uD83D\uDE00`.
                    let mut look = chars.clone();
                    if look.next() == Some('\\') && look.next() == Some('u') {
                        let lo = hex4(&mut look);
                        if (0xDC00..0xE000).contains(&lo) {
                            chars = look;
                            0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                        } else {
                            0xFFFD
                        }
                    } else {
                        0xFFFD
                    }
                } else {
                    hi
                };
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            Some(other) => out.push(other), // `"`, `\`, `/`
            None => {}
        }
    }
    Cow::Owned(out)
}

fn hex4(chars: &mut std::str::Chars<'_>) -> u32 {
    (0..4).fold(0, |acc, _| {
        acc * 16 + chars.next().and_then(|c| c.to_digit(16)).unwrap_or(0)
    })
}
