//! The scanner behind [`super::Value::parse`] and the walkers: it checks
//! every byte and says where and why text is not JSON.

use super::value::{Key, Value};
use super::{Error, Kind, MAX_DEPTH};

#[derive(Debug, Clone)]
pub(super) struct Scanner<'a> {
    pub(super) text: &'a str,
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
    /// Whether to try taking a whole object or array with the block
    /// validator first; off after its first refusal, so invalid text is
    /// tried that way once, not once per level.
    #[cfg(target_arch = "x86_64")]
    blocks: bool,
}

impl<'a> Scanner<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
            #[cfg(target_arch = "x86_64")]
            blocks: true,
        }
    }

    /// A scanner that never takes a container with the block validator:
    /// the reference the tests hold the fast path to.
    #[cfg(test)]
    pub(super) fn byte_by_byte(text: &'a str) -> Self {
        Scanner {
            #[cfg(target_arch = "x86_64")]
            blocks: false,
            ..Scanner::new(text)
        }
    }

    pub(super) fn error(&self, reason: &'static str) -> Error {
        Error {
            offset: self.pos,
            reason,
        }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    pub(super) fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    pub(super) fn value(&mut self, depth: usize) -> Result<Value<'a>, Error> {
        let start = self.pos;
        let kind = match self.peek() {
            Some(b'{') => {
                if !self.took_container(depth) {
                    self.object(depth + 1)?;
                }
                Kind::Object
            }
            Some(b'[') => {
                if !self.took_container(depth) {
                    self.array(depth + 1)?;
                }
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

    /// At a `{` or `[` inside `depth` containers: take the whole object or
    /// array with the x86-64 block validator when it is valid and the
    /// text holds at least one block (64 bytes) from here; `false` leaves
    /// it to the byte-at-a-time path, which says why it is invalid.
    #[inline]
    fn took_container(&mut self, depth: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.blocks && self.bytes.len() - self.pos >= 64 {
            match super::blocks::quick_container_end(&self.bytes[self.pos..], depth) {
                Some(end) => {
                    self.pos += end;
                    return true;
                }
                None => self.blocks = false,
            }
        }
        let _ = depth;
        false
    }

    pub(super) fn literal(&mut self, word: &'static str) -> Result<(), Error> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.error("expected true, false or null"))
        }
    }

    pub(super) fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    pub(super) fn number(&mut self) -> Result<(), Error> {
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
    //
    // `Ok(true)` when the string has an escape: without one, its text is
    // what it decodes to, which keys use to compare without decoding.
    #[inline(always)]
    pub(super) fn string(&mut self) -> Result<bool, Error> {
        let bytes = self.bytes;
        let mut pos = self.pos + 1; // past the opening quote
        let mut escaped = false;
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
                    return Ok(escaped);
                }
                b'\\' => {
                    escaped = true;
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

    pub(super) fn object(&mut self, depth: usize) -> Result<(), Error> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        self.pos += 1;
        let mut first = true;
        while self.next_member(&mut first, depth)?.is_some() {}
        Ok(())
    }

    pub(super) fn array(&mut self, depth: usize) -> Result<(), Error> {
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
    pub(super) fn next_member(
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
    pub(super) fn member_key(&mut self, first: &mut bool) -> Result<Option<Key<'a>>, Error> {
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
        let escaped = self.string()?;
        let key = Key {
            raw: &self.text[start..self.pos],
            escaped,
        };
        self.skip_ws();
        if self.peek() != Some(b':') {
            return Err(self.error("expected ':' after object key"));
        }
        self.pos += 1;
        self.skip_ws();
        Ok(Some(key))
    }

    pub(super) fn next_element(
        &mut self,
        first: &mut bool,
        depth: usize,
    ) -> Result<Option<Value<'a>>, Error> {
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
pub(super) fn special_mask16(bytes: &[u8], pos: usize) -> Option<u32> {
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
pub(super) fn string_special_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero_byte(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_byte(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
}
