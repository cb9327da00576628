//! A validating cursor: the caller steers one pass over the text, going
//! into the objects and arrays it wants and taking the rest whole.
//!
//! [`super::Value::parse`] validates everything and the iterators then
//! scan again what they walk: three passes over a case whose properties
//! are read from `case_json`. With a [`Reader`] each byte is scanned once,
//! validated whether it is read or skipped, so a transform that reads a
//! few paths of a document pays for one scan of it.

use super::scan::Scanner;
use super::value::{Key, Value};
use super::{Error, Kind, MAX_DEPTH};

/// A cursor over one JSON value, validating as it moves.
///
/// Call [`Reader::kind`] to see what comes next, then take it whole with
/// [`Reader::value`] or go into it with [`Reader::object`] (then
/// [`Reader::key`] until `None`, reading or taking each member's value) or
/// [`Reader::array`] (then [`Reader::element`] until `false`). At the end,
/// [`Reader::end`] checks that nothing but whitespace follows. Stop at the
/// first `Err`: the cursor is then somewhere inside the bad text.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    scanner: Scanner<'a>,
    /// Objects and arrays entered and not yet closed.
    depth: usize,
    /// Just inside a `{` or `[`: no comma before the next member or element.
    first: bool,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `text`.
    pub fn new(text: &'a str) -> Reader<'a> {
        Reader {
            scanner: Scanner::new(text),
            depth: 0,
            first: false,
        }
    }

    /// The kind of the value that comes next.
    ///
    /// # Errors
    ///
    /// When no value starts here.
    #[inline]
    pub fn kind(&mut self) -> Result<Kind, Error> {
        self.scanner.skip_ws();
        match self.scanner.peek() {
            Some(b'{') => Ok(Kind::Object),
            Some(b'[') => Ok(Kind::Array),
            Some(b'"') => Ok(Kind::String),
            Some(b't' | b'f') => Ok(Kind::Bool),
            Some(b'n') => Ok(Kind::Null),
            Some(b'-' | b'0'..=b'9') => Ok(Kind::Number),
            Some(_) => Err(self.scanner.error("expected a value")),
            None => Err(self
                .scanner
                .error("unexpected end of input, expected a value")),
        }
    }

    /// Take the next value whole, validated.
    ///
    /// # Errors
    ///
    /// Where and why the value is not valid JSON.
    #[inline]
    pub fn value(&mut self) -> Result<Value<'a>, Error> {
        self.scanner.skip_ws();
        self.scanner.value(self.depth)
    }

    /// Go into the object that comes next: its members follow, by
    /// [`Reader::key`].
    ///
    /// # Errors
    ///
    /// When the next value is not an object, or nesting is too deep.
    #[inline]
    pub fn object(&mut self) -> Result<(), Error> {
        self.open(b'{', "expected an object")
    }

    /// Go into the array that comes next: its elements follow, by
    /// [`Reader::element`].
    ///
    /// # Errors
    ///
    /// When the next value is not an array, or nesting is too deep.
    #[inline]
    pub fn array(&mut self) -> Result<(), Error> {
        self.open(b'[', "expected an array")
    }

    fn open(&mut self, bracket: u8, expected: &'static str) -> Result<(), Error> {
        self.scanner.skip_ws();
        if self.scanner.peek() != Some(bracket) {
            return Err(self.scanner.error(expected));
        }
        if self.depth + 1 > MAX_DEPTH {
            return Err(self.scanner.error("nesting too deep"));
        }
        self.scanner.pos += 1;
        self.depth += 1;
        self.first = true;
        Ok(())
    }

    /// Inside an object: the next member's key, after which its value
    /// comes next (read it or take it, once); `None` once the object is
    /// closed.
    ///
    /// # Errors
    ///
    /// When the object is not well formed here.
    #[inline]
    pub fn key(&mut self) -> Result<Option<Key<'a>>, Error> {
        let key = self.scanner.member_key(&mut self.first)?;
        if key.is_none() {
            self.close();
        }
        Ok(key)
    }

    /// Inside an array: `true` when another element comes next (read it
    /// or take it, once); `false` once the array is closed.
    ///
    /// # Errors
    ///
    /// When the array is not well formed here.
    #[inline]
    pub fn element(&mut self) -> Result<bool, Error> {
        let s = &mut self.scanner;
        s.skip_ws();
        if s.peek() == Some(b']') {
            s.pos += 1;
            self.close();
            return Ok(false);
        }
        if !self.first {
            if s.peek() != Some(b',') {
                return Err(s.error("expected ',' or ']' in array"));
            }
            s.pos += 1;
        }
        self.first = false;
        Ok(true)
    }

    /// A closed object or array is a value of its parent, so a comma
    /// comes before the parent's next item.
    #[inline]
    fn close(&mut self) {
        self.depth -= 1;
        self.first = false;
    }

    /// Check that the value is complete and only whitespace follows it.
    ///
    /// # Errors
    ///
    /// When an object or array is still open, or other text follows.
    pub fn end(&mut self) -> Result<(), Error> {
        if self.depth != 0 {
            return Err(self.scanner.error("the value is not complete"));
        }
        self.scanner.skip_ws();
        if self.scanner.pos != self.scanner.bytes.len() {
            return Err(self.scanner.error("trailing characters after the value"));
        }
        Ok(())
    }
}
