//! Lean JSON reading and writing for plugins.
//!
//! Plugins pay for every instruction (fuel), so these helpers avoid building
//! a tree: [`Value`] is a validated slice of the input, [`Value::members`]
//! walks an object's members lazily, and values can be copied to the output
//! verbatim with [`Value::raw`]. Everything is validated as it is walked, so
//! a raw slice that reaches the output is always well-formed JSON.
//!
//! ```
//! use pillowtop_sdk::json::{Value, Kind};
//!
//! let doc = Value::parse(r#"{"name": "Ada", "age": 36}"#).unwrap();
//! assert_eq!(doc.get("name").unwrap().as_str().unwrap(), "Ada");
//! assert_eq!(doc.get("age").unwrap().kind(), Kind::Number);
//! ```

use std::borrow::Cow;
use std::fmt;

#[cfg(target_arch = "x86_64")]
mod blocks;

/// Nesting deeper than this is rejected, so hostile input cannot exhaust the stack.
pub const MAX_DEPTH: usize = 128;

/// Why some text is not valid JSON, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    /// Byte offset in the text where the problem was found.
    pub offset: usize,
    /// What was expected or found.
    pub reason: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid JSON at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for Error {}

/// The kind of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// A number, e.g. `-1.5e3`
    Number,
    /// A string
    String,
    /// An array
    Array,
    /// An object
    Object,
}

/// A validated JSON value: a slice of the input and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    raw: &'a str,
    kind: Kind,
}

/// An object member's key, kept as written (with quotes and escapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key<'a> {
    raw: &'a str,
}

impl<'a> Value<'a> {
    /// Validate `text` as exactly one JSON value (surrounding whitespace allowed).
    ///
    /// # Errors
    ///
    /// Returns where and why `text` is not a single valid JSON value.
    pub fn parse(text: &'a str) -> Result<Value<'a>, Error> {
        let mut s = Scanner::new(text);
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
}

impl<'a> Key<'a> {
    /// The key as written, with its quotes and escapes: ready to copy into JSON output.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The unescaped key.
    pub fn decoded(&self) -> Cow<'a, str> {
        unescape(self.raw)
    }

    /// Whether the key equals `name` (compares without allocating when the
    /// key has no escapes).
    pub fn is(&self, name: &str) -> bool {
        let inner = &self.raw[1..self.raw.len() - 1];
        let (written, name_bytes) = (inner.as_bytes(), name.as_bytes());
        // Written and decoded forms are the same for a key without escapes.
        // Every escape is longer written than decoded (`\n` is two bytes
        // for one, `\u00e9` six for two), so a key with escapes is written
        // longer than any name it equals: a key as long as `name` equals it
        // only if identical and escape-free, and a shorter one never does.
        if written.len() <= name_bytes.len() {
            return written == name_bytes && !written.contains(&b'\\');
        }
        // Longer as written: equal only through an escape. Up to the first
        // escape the written and decoded bytes are the same, so the first
        // byte where the key differs from a `name` it decodes to is a `\`:
        // the `\` of that escape or, for a run of escaped backslashes (two
        // written bytes each), a `\` still inside the run. A first
        // difference anywhere else settles it without decoding, which is
        // nearly every key after a byte or two.
        let differs = written
            .iter()
            .zip(name_bytes)
            .position(|(w, n)| w != n)
            .unwrap_or(name_bytes.len());
        if written[differs] != b'\\' {
            return false;
        }
        self.decoded() == name
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
    scanner: Scanner<'a>,
    first: bool,
    done: bool,
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
    scanner: Scanner<'a>,
    first: bool,
    done: bool,
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
    scanner: Scanner<'a>,
    first: bool,
    done: bool,
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

/// Check that `text` is exactly one valid JSON value (surrounding
/// whitespace allowed) and return its kind: the same answer and the same
/// [`Error`] as [`Value::parse`], in about a third of the time for typical
/// documents.
///
/// Valid text is checked in one iterative pass that builds nothing; only
/// invalid text is scanned a second time, by [`Value::parse`], to say where
/// and why it is invalid.
///
/// # Errors
///
/// Returns where and why `text` is not a single valid JSON value.
pub fn validate(text: &str) -> Result<Kind, Error> {
    let b = text.as_bytes();
    // Whole 64-byte blocks at a time where the CPU has the vector
    // instructions for it (every x86-64); short texts and other targets
    // byte by byte.
    #[cfg(target_arch = "x86_64")]
    let quick = if b.len() >= 64 {
        blocks::quick_validate(b)
    } else {
        quick_validate(b)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let quick = quick_validate(b);
    match quick {
        Some(kind) => Ok(kind),
        None => Value::parse(text).map(|v| v.kind()),
    }
}

/// The fast path of [`validate`]: `Some(kind)` exactly when [`Value::parse`]
/// accepts `b` (a `&str`'s bytes, so already valid UTF-8).
fn quick_validate(b: &[u8]) -> Option<Kind> {
    let mut open = Containers::default();
    let mut i = quick_ws(b, 0);
    let root = kind_at(*b.get(i)?);
    // `i` is at the first byte of a value.
    'value: loop {
        match *b.get(i)? {
            b'{' => {
                open.push(true)?;
                i = quick_ws(b, i + 1);
                if *b.get(i)? != b'}' {
                    i = quick_key(b, i)?;
                    continue 'value;
                }
                i += 1;
                open.pop();
            }
            b'[' => {
                open.push(false)?;
                i = quick_ws(b, i + 1);
                if *b.get(i)? != b']' {
                    continue 'value;
                }
                i += 1;
                open.pop();
            }
            b'"' => i = quick_string(b, i)?,
            _ => i = quick_scalar(b, i)?,
        }
        // A value is complete: close containers until one goes on.
        loop {
            if open.depth == 0 {
                return (quick_ws(b, i) == b.len()).then_some(root);
            }
            i = quick_ws(b, i);
            let in_object = open.in_object();
            match (*b.get(i)?, in_object) {
                (b',', true) => {
                    i = quick_key(b, quick_ws(b, i + 1))?;
                    continue 'value;
                }
                (b',', false) => {
                    i = quick_ws(b, i + 1);
                    continue 'value;
                }
                (b'}', true) | (b']', false) => {
                    i += 1;
                    open.pop();
                }
                _ => return None,
            }
        }
    }
}

/// The open containers of a validator: one bit per level, set for an
/// object, clear for an array; at most [`MAX_DEPTH`] levels.
#[derive(Default)]
struct Containers {
    open: [u64; MAX_DEPTH.div_ceil(64)],
    depth: usize,
}

impl Containers {
    /// Open an object (`true`) or array; `None` past [`MAX_DEPTH`].
    #[inline(always)]
    fn push(&mut self, object: bool) -> Option<()> {
        if self.depth == MAX_DEPTH {
            return None;
        }
        let (word, bit) = (self.depth / 64, 1u64 << (self.depth % 64));
        if object {
            self.open[word] |= bit;
        } else {
            self.open[word] &= !bit;
        }
        self.depth += 1;
        Some(())
    }

    /// Close the innermost container (one is open).
    #[inline(always)]
    fn pop(&mut self) {
        self.depth -= 1;
    }

    /// Whether the innermost container (one is open) is an object.
    #[inline(always)]
    fn in_object(&self) -> bool {
        let d = self.depth - 1;
        self.open[d / 64] >> (d % 64) & 1 == 1
    }
}

/// The kind of the value whose first byte is `c`, if it is valid there.
fn kind_at(c: u8) -> Kind {
    match c {
        b'{' => Kind::Object,
        b'[' => Kind::Array,
        b'"' => Kind::String,
        b't' | b'f' => Kind::Bool,
        b'n' => Kind::Null,
        _ => Kind::Number,
    }
}

#[inline]
fn quick_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// From a member's key at `i` past its colon: the start of its value.
#[inline]
fn quick_key(b: &[u8], i: usize) -> Option<usize> {
    if *b.get(i)? != b'"' {
        return None;
    }
    let i = quick_ws(b, quick_string(b, i)?);
    if *b.get(i)? != b':' {
        return None;
    }
    Some(quick_ws(b, i + 1))
}

/// From the opening quote at `i`: one past the closing quote.
#[inline(always)]
fn quick_string(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    loop {
        // Eight bytes at a time to the next quote, backslash or control byte.
        while let Some(w) = b.get(i..i + 8) {
            let mask = string_special_mask(u64::from_le_bytes(w.try_into().ok()?));
            if mask != 0 {
                i += (mask.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
        match *b.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' => {
                    if !b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    i += 6;
                }
                _ => return None,
            },
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

/// From the first byte of a number or literal at `i`: one past its end.
#[inline]
fn quick_scalar(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b't' => quick_literal(b, i, b"true"),
        b'f' => quick_literal(b, i, b"false"),
        b'n' => quick_literal(b, i, b"null"),
        b'-' | b'0'..=b'9' => quick_number(b, i),
        _ => None,
    }
}

#[inline]
fn quick_literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

fn quick_number(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        i
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match *b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i + 1),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

#[derive(Debug, Clone)]
struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a str) -> Self {
        Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        }
    }

    fn error(&self, reason: &'static str) -> Error {
        Error {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        let start = self.pos;
        let kind = match self.peek() {
            Some(b'{') => {
                self.object(depth + 1)?;
                Kind::Object
            }
            Some(b'[') => {
                self.array(depth + 1)?;
                Kind::Array
            }
            Some(b'"') => {
                self.string()?;
                Kind::String
            }
            Some(b't') => {
                self.literal("true")?;
                Kind::Bool
            }
            Some(b'f') => {
                self.literal("false")?;
                Kind::Bool
            }
            Some(b'n') => {
                self.literal("null")?;
                Kind::Null
            }
            Some(b'-' | b'0'..=b'9') => {
                self.number()?;
                Kind::Number
            }
            Some(_) => return Err(self.error("expected a value")),
            None => return Err(self.error("unexpected end of input, expected a value")),
        };
        Ok(Value {
            raw: &self.text[start..self.pos],
            kind,
        })
    }

    fn literal(&mut self, word: &'static str) -> Result<(), Error> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected true, false or null"))
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<(), Error> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("expected a digit")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("expected a digit after the decimal point"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("expected a digit in the exponent"));
            }
        }
        Ok(())
    }

    // Inlined into its three callers (keys, values, `walk_object`): a
    // document is mostly short strings, and in a component each call
    // costs a Wasm call frame and a fuel flush (callgrind, 962 cases:
    // 6% fewer host instructions per change through Wasm, 4% less fuel,
    // 11% fewer natively).
    #[inline(always)]
    fn string(&mut self) -> Result<(), Error> {
        let bytes = self.bytes;
        let mut pos = self.pos + 1; // past the opening quote
        loop {
            // Find the next quote, backslash or control byte, sixteen bytes
            // at a time where the target has vector instructions, else
            // eight; the lowest flagged byte of the mask is exact.
            // Multi-byte UTF-8 needs no check: the input is a valid &str.
            let special = loop {
                if let Some(mask) = special_mask16(bytes, pos) {
                    if mask == 0 {
                        pos += 16;
                        continue;
                    }
                    pos += mask.trailing_zeros() as usize;
                    break bytes[pos];
                }
                if let Some(w) = bytes
                    .get(pos..pos + 8)
                    .and_then(|w| <[u8; 8]>::try_from(w).ok())
                {
                    let word = u64::from_le_bytes(w);
                    let mask = string_special_mask(word);
                    if mask == 0 {
                        pos += 8;
                        continue;
                    }
                    pos += (mask.trailing_zeros() / 8) as usize;
                    break bytes[pos];
                }
                match bytes.get(pos) {
                    Some(&b) if b == b'"' || b == b'\\' || b < 0x20 => break b,
                    Some(_) => pos += 1,
                    None => {
                        self.pos = pos;
                        return Err(self.error("unterminated string"));
                    }
                }
            };
            match special {
                b'"' => {
                    self.pos = pos + 1;
                    return Ok(());
                }
                b'\\' => {
                    pos += 1;
                    match bytes.get(pos) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => pos += 1,
                        Some(b'u') => {
                            pos += 1;
                            for _ in 0..4 {
                                match bytes.get(pos) {
                                    Some(b) if b.is_ascii_hexdigit() => pos += 1,
                                    _ => {
                                        self.pos = pos;
                                        return Err(
                                            self.error("expected four hex digits after \\u")
                                        );
                                    }
                                }
                            }
                        }
                        _ => {
                            self.pos = pos;
                            return Err(self.error("invalid escape in string"));
                        }
                    }
                }
                _ => {
                    self.pos = pos;
                    return Err(self.error("control character in string"));
                }
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.pos += 1;
        let mut first = true;
        while self.next_member(&mut first, depth)?.is_some() {}
        Ok(())
    }

    fn array(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.pos += 1;
        let mut first = true;
        while self.next_element(&mut first, depth)?.is_some() {}
        Ok(())
    }

    /// Read the next member of an object whose `{` has been consumed;
    /// `Ok(None)` after consuming the closing `}`.
    fn next_member(
        &mut self,
        first: &mut bool,
        depth: usize,
    ) -> Result<Option<(Key<'a>, Value<'a>)>, Error> {
        let Some(key) = self.member_key(first)? else {
            return Ok(None);
        };
        let value = self.value(depth)?;
        Ok(Some((key, value)))
    }

    /// Read up to a member's value: the separating comma (unless `first`),
    /// the key and the colon. `Ok(None)` after consuming the closing `}`.
    #[inline]
    fn member_key(&mut self, first: &mut bool) -> Result<Option<Key<'a>>, Error> {
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(None);
        }
        if !*first {
            if self.peek() != Some(b',') {
                return Err(self.error("expected ',' or '}' in object"));
            }
            self.pos += 1;
            self.skip_ws();
        }
        *first = false;
        if self.peek() != Some(b'"') {
            return Err(self.error("expected a string key in object"));
        }
        let start = self.pos;
        self.string()?;
        let key = Key {
            raw: &self.text[start..self.pos],
        };
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.error("expected ':' after object key"));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(Some(key))
    }

    fn next_element(&mut self, first: &mut bool, depth: usize) -> Result<Option<Value<'a>>, Error> {
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(None);
        }
        if !*first {
            if self.peek() != Some(b',') {
                return Err(self.error("expected ',' or ']' in array"));
            }
            self.pos += 1;
            self.skip_ws();
        }
        *first = false;
        self.value(depth).map(Some)
    }
}

/// For the 16 bytes at `pos` (`None` if fewer remain): bit `k` is set when
/// byte `pos + k` is `"`, `\\` or below 0x20. One vector compare per class
/// on x86-64 (SSE2, always present) and on Wasm built with `simd128`
/// (`make plugins` builds guests with it: fewer instructions, so less fuel).
#[inline(always)]
fn special_mask16(bytes: &[u8], pos: usize) -> Option<u32> {
    let chunk = bytes.get(pos..pos + 16)?;
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "sse2")]
        fn mask(chunk: &[u8]) -> u32 {
            use std::arch::x86_64::*;
            // SAFETY: `chunk` is 16 readable bytes; the load is unaligned.
            let v = unsafe { _mm_loadu_si128(chunk.as_ptr().cast()) };
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // Unsigned v < 0x20: min(v, 0x1f) == v.
            let control = _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v);
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
        }
        // SAFETY: SSE2 is part of every x86-64 CPU.
        Some(unsafe { mask(chunk) })
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    {
        #[target_feature(enable = "simd128")]
        fn mask(chunk: &[u8]) -> u32 {
            use std::arch::wasm32::*;
            // SAFETY: `chunk` is 16 readable bytes; Wasm loads need no alignment.
            let v = unsafe { v128_load(chunk.as_ptr().cast()) };
            let special = v128_or(
                v128_or(
                    i8x16_eq(v, u8x16_splat(b'"')),
                    i8x16_eq(v, u8x16_splat(b'\\')),
                ),
                u8x16_lt(v, u8x16_splat(0x20)),
            );
            u32::from(u8x16_bitmask(special))
        }
        // Compiled only with `simd128` enabled (Wasm target-feature
        // functions are safe to call).
        Some(mask(chunk))
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )))]
    {
        let _ = chunk;
        None
    }
}

/// A mask with the high bit set in bytes of `word` that are `"`, `\\` or
/// below 0x20 (the classic "has zero byte" and "has byte less than n" bit
/// tricks). Bytes above the first flagged one may be flagged falsely, but
/// the lowest flagged byte is always a true one, and a zero mask means none.
#[inline]
fn string_special_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
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

/// Append validated JSON `raw` to `out` without insignificant whitespace.
pub fn write_compact(out: &mut String, raw: &str) {
    let mut in_string = false;
    let mut escaped = false;
    let mut start = 0;
    for (i, b) in raw.bytes().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
            out.push_str(&raw[start..i]);
            start = i + 1;
        }
    }
    out.push_str(&raw[start..]);
}

/// Append `s` to `out` as a JSON string literal, quotes included.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    write_escaped(out, s);
    out.push('"');
}

/// Append `s` to `out` escaped for use inside a JSON string (no quotes).
pub fn write_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `validate`'s fast path agrees with `Value::parse` on valid text and
    /// on thousands of random corruptions of it (a disagreement would let
    /// invalid JSON through, or refuse valid JSON, in the host's checks).
    #[test]
    fn validate_agrees_with_parse() {
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
            r#"{"_id":"c-1","name":"Ada "the" first \\","case_properties":[{"key":"@case_id","value":"c-1"},{"key":"age","value":"36"},{"key":"x\\\"y","value":"\u00e9\/\b"}],"n":-12.5e-3,"t":true,"f":false,"z":null,"e":{},"a":[]}"#,
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
        let fast = |text: &str| {
            let scalar = quick_validate(text.as_bytes());
            #[cfg(target_arch = "x86_64")]
            assert_eq!(blocks::quick_validate(text.as_bytes()), scalar, "{text:?}");
            scalar
        };
        for s in &cases {
            assert_eq!(fast(s), Value::parse(s).ok().map(|v| v.kind()), "{s}");
        }
        // Random corruptions: replace, insert or delete one to three bytes,
        // drawn mostly from JSON's own punctuation.
        const ALPHABET: &[u8] = b"{}[]:,\"\\ \n0123456789.-+eEtrufalsnx/\x01";
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut accepted = 0;
        let mut rejected = 0;
        for round in 0..100_000 {
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
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let slow = Value::parse(text).map(|v| v.kind());
            assert_eq!(fast(text), slow.ok(), "{text:?}");
            assert_eq!(validate(text), slow, "{text:?}");
            if slow.is_ok() {
                accepted += 1;
            } else {
                rejected += 1;
            }
        }
        // Both answers were exercised many times.
        assert!(
            accepted > 2_500 && rejected > 25_000,
            "{accepted} accepted, {rejected} rejected"
        );
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
        let mut walk =
            walk_object(r#"{"a": 1, "m": {"x": "1", "y": [2]}, "z": {"q": 1}}"#).unwrap();
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
                    string_special_mask(u64::from_le_bytes(bytes)).trailing_zeros() / 8
                        == at as u32,
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
}
