//! The `evaluator` expression: one Python expression over named values,
//! parsed once at init and interpreted; never code execution.
//!
//! CommCare runs the statement through `simpleeval` with the power
//! operator removed. Supported here: numbers, strings, `True`, `False`,
//! `None`, names, list displays, `x[i]` and `x['key']`, arithmetic
//! (`+ - * / // %`, unary `-` and `+`), comparisons (chained, `in`,
//! `not in`), `and`, `or`, `not`, and `a if test else b`. As in CommCare, a
//! `TypeError`, `ZeroDivisionError`, an unknown name or the power operator
//! makes the value null; an index out of range or a missing key is an
//! error for the document (CommCare does not catch those either).
//! Differences: a statement that does not parse is refused at init (in
//! CommCare every document gets null), and function calls are not
//! supported (refused at init).

use crate::eval::EvalError;
use crate::value::Val;
use std::borrow::Cow;
use std::cmp::Ordering;
use std::rc::Rc;

/// simpleeval's `MAX_STRING_LENGTH`: a longer string result is refused.
const MAX_STRING_LENGTH: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Float(f64),
    Str(String),
    Name(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "<", ">", "(", ")", "[", "]", ",",
];

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_') {
                // An exponent's sign belongs to the number.
                if (b[i] == b'e' || b[i] == b'E') && matches!(b.get(i + 1), Some(b'+' | b'-')) {
                    i += 1;
                }
                i += 1;
            }
            let text = s[start..i].replace('_', "");
            let float = text.contains(['.', 'e', 'E']);
            out.push(if float {
                Tok::Float(
                    text.parse()
                        .map_err(|_| format!("invalid number {:?}", &s[start..i]))?,
                )
            } else {
                Tok::Int(
                    text.parse()
                        .map_err(|_| format!("invalid number {:?}", &s[start..i]))?,
                )
            });
        } else if c == b'\'' || c == b'"' {
            let mut text = String::new();
            i += 1;
            loop {
                let Some(&d) = b.get(i) else {
                    return Err("a string is not closed".into());
                };
                if d == c {
                    i += 1;
                    break;
                }
                if d == b'\\' {
                    let e = *b.get(i + 1).ok_or("a string is not closed")?;
                    text.push(match e {
                        b'n' => '\n',
                        b't' => '\t',
                        b'r' => '\r',
                        b'\\' | b'\'' | b'"' => e as char,
                        _ => return Err(format!("unsupported escape \\{} in a string", e as char)),
                    });
                    i += 2;
                    continue;
                }
                let ch = s[i..].chars().next().expect("inside the text");
                text.push(ch);
                i += ch.len_utf8();
            }
            out.push(Tok::Str(text));
        } else if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Name(s[start..i].to_string()));
        } else if let Some(op) = OPS.iter().find(|op| s[i..].starts_with(**op)) {
            out.push(Tok::Op(op));
            i += op.len();
        } else {
            let ch = s[i..].chars().next().expect("inside the text");
            return Err(format!("unexpected character {ch:?}"));
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bin {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Mod,
    Pow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

#[derive(Debug)]
enum Node {
    Const(Val<'static>),
    Name(String),
    List(Vec<Node>),
    Index(Box<Node>, Box<Node>),
    Neg(Box<Node>),
    Pos(Box<Node>),
    Not(Box<Node>),
    Bin(Bin, Box<Node>, Box<Node>),
    Compare(Box<Node>, Vec<(Cmp, Node)>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    If(Box<Node>, Box<Node>, Box<Node>),
}

/// A parsed statement.
#[derive(Debug)]
pub struct Program(Node);

struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }
    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Tok::Name(n)) if n == word)
    }
    fn expect_op(&mut self, op: &str) -> Result<(), String> {
        if self.is_op(op) {
            self.at += 1;
            Ok(())
        } else {
            Err(format!("expected \"{op}\" {}", self.here()))
        }
    }
    fn here(&self) -> String {
        match self.peek() {
            None => "at the end".into(),
            Some(t) => format!("before {t:?}"),
        }
    }

    fn test(&mut self) -> Result<Node, String> {
        let body = self.or()?;
        if self.is_word("if") {
            self.at += 1;
            let cond = self.or()?;
            if !self.is_word("else") {
                return Err(format!("expected \"else\" {}", self.here()));
            }
            self.at += 1;
            let other = self.test()?;
            return Ok(Node::If(Box::new(cond), Box::new(body), Box::new(other)));
        }
        Ok(body)
    }
    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.is_word("or") {
            self.at += 1;
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.not()?;
        while self.is_word("and") {
            self.at += 1;
            left = Node::And(Box::new(left), Box::new(self.not()?));
        }
        Ok(left)
    }
    fn not(&mut self) -> Result<Node, String> {
        if self.is_word("not") {
            self.at += 1;
            return Ok(Node::Not(Box::new(self.not()?)));
        }
        self.comparison()
    }
    fn comparison(&mut self) -> Result<Node, String> {
        let first = self.arith()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Op("==")) => Cmp::Eq,
                Some(Tok::Op("!=")) => Cmp::Ne,
                Some(Tok::Op("<")) => Cmp::Lt,
                Some(Tok::Op("<=")) => Cmp::Le,
                Some(Tok::Op(">")) => Cmp::Gt,
                Some(Tok::Op(">=")) => Cmp::Ge,
                Some(Tok::Name(n)) if n == "in" => Cmp::In,
                Some(Tok::Name(n)) if n == "not" => {
                    if !matches!(self.toks.get(self.at + 1), Some(Tok::Name(n)) if n == "in") {
                        break;
                    }
                    self.at += 1;
                    Cmp::NotIn
                }
                _ => break,
            };
            self.at += 1;
            rest.push((op, self.arith()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Node::Compare(Box::new(first), rest)
        })
    }
    fn arith(&mut self) -> Result<Node, String> {
        let mut left = self.term()?;
        loop {
            let op = if self.is_op("+") {
                Bin::Add
            } else if self.is_op("-") {
                Bin::Sub
            } else {
                return Ok(left);
            };
            self.at += 1;
            left = Node::Bin(op, Box::new(left), Box::new(self.term()?));
        }
    }
    fn term(&mut self) -> Result<Node, String> {
        let mut left = self.factor()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => Bin::Mul,
                Some(Tok::Op("/")) => Bin::Div,
                Some(Tok::Op("//")) => Bin::FloorDiv,
                Some(Tok::Op("%")) => Bin::Mod,
                _ => return Ok(left),
            };
            self.at += 1;
            left = Node::Bin(op, Box::new(left), Box::new(self.factor()?));
        }
    }
    fn factor(&mut self) -> Result<Node, String> {
        if self.is_op("-") {
            self.at += 1;
            return Ok(Node::Neg(Box::new(self.factor()?)));
        }
        if self.is_op("+") {
            self.at += 1;
            return Ok(Node::Pos(Box::new(self.factor()?)));
        }
        let base = self.postfix()?;
        if self.is_op("**") {
            self.at += 1;
            return Ok(Node::Bin(
                Bin::Pow,
                Box::new(base),
                Box::new(self.factor()?),
            ));
        }
        Ok(base)
    }
    fn postfix(&mut self) -> Result<Node, String> {
        let mut node = self.atom()?;
        loop {
            if self.is_op("[") {
                self.at += 1;
                let index = self.test()?;
                self.expect_op("]")?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else if self.is_op("(") {
                return Err("function calls are not supported in an evaluator statement".into());
            } else {
                return Ok(node);
            }
        }
    }
    fn atom(&mut self) -> Result<Node, String> {
        let tok = self.peek().cloned().ok_or("the statement ends too early")?;
        self.at += 1;
        Ok(match tok {
            Tok::Int(i) => Node::Const(Val::Int(i)),
            Tok::Float(f) => Node::Const(Val::Float(f)),
            Tok::Str(s) => Node::Const(Val::str(s)),
            Tok::Name(n) => match n.as_str() {
                "True" => Node::Const(Val::Bool(true)),
                "False" => Node::Const(Val::Bool(false)),
                "None" => Node::Const(Val::Null),
                "if" | "else" | "and" | "or" | "not" | "in" | "lambda" | "for" => {
                    return Err(format!("unexpected \"{n}\""));
                }
                _ => Node::Name(n),
            },
            Tok::Op("(") => {
                let inner = self.test()?;
                self.expect_op(")")?;
                inner
            }
            Tok::Op("[") => {
                let mut items = Vec::new();
                while !self.is_op("]") {
                    items.push(self.test()?);
                    if !self.is_op("]") {
                        self.expect_op(",")?;
                    }
                }
                self.at += 1;
                Node::List(items)
            }
            Tok::Op(op) => return Err(format!("unexpected \"{op}\"")),
        })
    }
}

impl Program {
    /// Parse `statement`.
    ///
    /// # Errors
    ///
    /// What is wrong with it and where.
    pub fn parse(statement: &str) -> Result<Program, String> {
        let toks = tokenize(statement)
            .map_err(|e| format!("the statement {statement:?} does not parse: {e}"))?;
        let mut p = Parser { toks, at: 0 };
        let node = p
            .test()
            .and_then(|n| match p.peek() {
                None => Ok(n),
                Some(t) => Err(format!(
                    "unexpected {t:?} after the expression (only one expression is allowed)"
                )),
            })
            .map_err(|e| format!("the statement {statement:?} does not parse: {e}"))?;
        Ok(Program(node))
    }

    /// Evaluate with `names` as the variables: null where CommCare gets null.
    ///
    /// # Errors
    ///
    /// A missing key or an index out of range.
    pub fn run<'a>(&self, names: &[(Cow<'_, str>, Val<'a>)]) -> Result<Val<'a>, EvalError> {
        match eval(&self.0, names) {
            Ok(v) => Ok(v),
            Err(Fail::Null) => Ok(Val::Null),
            Err(Fail::Error(m)) => Err(EvalError::permanent(m)),
        }
    }
}

/// Why an evaluation stopped.
enum Fail {
    /// An error CommCare catches (the value is null).
    Null,
    /// An error CommCare does not catch.
    Error(String),
}

type Out<'a> = Result<Val<'a>, Fail>;

fn eval<'a>(node: &Node, names: &[(Cow<'_, str>, Val<'a>)]) -> Out<'a> {
    match node {
        Node::Const(v) => Ok(v.clone()),
        Node::Name(n) => names
            .iter()
            .rev()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .ok_or(Fail::Null),
        Node::List(items) => {
            let mut out = Vec::with_capacity(items.len());
            for i in items {
                out.push(eval(i, names)?);
            }
            Ok(Val::List(Rc::new(out)))
        }
        Node::Index(container, index) => {
            let container = eval(container, names)?;
            let index = eval(index, names)?;
            subscript(&container, &index)
        }
        Node::Neg(x) => match eval(x, names)? {
            Val::Int(i) => i.checked_neg().map(Val::Int).ok_or(Fail::Null),
            Val::Bool(b) => Ok(Val::Int(-(b as i64))),
            Val::Float(f) => Ok(Val::Float(-f)),
            Val::Decimal(f, t) => Ok(Val::Decimal(
                -f,
                t.strip_prefix('-')
                    .map_or_else(|| format!("-{t}"), str::to_string)
                    .into(),
            )),
            _ => Err(Fail::Null),
        },
        Node::Pos(x) => match eval(x, names)? {
            v @ (Val::Int(_) | Val::Float(_) | Val::Decimal(..)) => Ok(v),
            Val::Bool(b) => Ok(Val::Int(b as i64)),
            _ => Err(Fail::Null),
        },
        Node::Not(x) => Ok(Val::Bool(!eval(x, names)?.truthy())),
        Node::And(a, b) => {
            let a = eval(a, names)?;
            if a.truthy() { eval(b, names) } else { Ok(a) }
        }
        Node::Or(a, b) => {
            let a = eval(a, names)?;
            if a.truthy() { Ok(a) } else { eval(b, names) }
        }
        Node::If(cond, yes, no) => {
            if eval(cond, names)?.truthy() {
                eval(yes, names)
            } else {
                eval(no, names)
            }
        }
        Node::Compare(first, rest) => {
            let mut left = eval(first, names)?;
            for (op, right) in rest {
                let right = eval(right, names)?;
                let order = || left.py_cmp(&right).ok_or(Fail::Null);
                let holds = match op {
                    Cmp::Eq => left.py_eq(&right),
                    Cmp::Ne => !left.py_eq(&right),
                    Cmp::Lt => order()? == Ordering::Less,
                    Cmp::Le => order()? != Ordering::Greater,
                    Cmp::Gt => order()? == Ordering::Greater,
                    Cmp::Ge => order()? != Ordering::Less,
                    Cmp::In => contains(&right, &left)?,
                    Cmp::NotIn => !contains(&right, &left)?,
                };
                if !holds {
                    return Ok(Val::Bool(false));
                }
                left = right;
            }
            Ok(Val::Bool(true))
        }
        Node::Bin(op, a, b) => {
            let a = eval(a, names)?;
            let b = eval(b, names)?;
            binary(*op, &a, &b)
        }
    }
}

/// `item in container`; `TypeError` where Python raises it.
fn contains(container: &Val<'_>, item: &Val<'_>) -> Result<bool, Fail> {
    match container {
        Val::List(items) => Ok(items.iter().any(|i| i.py_eq(item))),
        Val::Str(s) => item.as_str().map(|i| s.contains(i)).ok_or(Fail::Null),
        Val::Dict(members) => {
            if item.is_container() {
                return Err(Fail::Null);
            }
            Ok(members.iter().any(|(k, _)| item.as_str() == Some(k)))
        }
        _ => Err(Fail::Null),
    }
}

fn subscript<'a>(container: &Val<'a>, index: &Val<'_>) -> Out<'a> {
    match container {
        Val::List(items) => {
            let i = index.as_int().ok_or(Fail::Null)?;
            let at = if i < 0 { items.len() as i64 + i } else { i };
            items
                .get(usize::try_from(at).map_err(|_| out_of_range())?)
                .cloned()
                .ok_or_else(out_of_range)
        }
        Val::Str(s) => {
            let i = index.as_int().ok_or(Fail::Null)?;
            let chars: Vec<char> = s.chars().collect();
            let at = if i < 0 { chars.len() as i64 + i } else { i };
            usize::try_from(at)
                .ok()
                .and_then(|at| chars.get(at))
                .map(|c| Val::str(c.to_string()))
                .ok_or_else(out_of_range)
        }
        Val::Dict(_) => match index {
            Val::Str(key) => container.get(key).cloned().ok_or_else(|| {
                Fail::Error(format!("evaluator: no key {key:?} (Python's KeyError)"))
            }),
            _ => Err(Fail::Error(
                "evaluator: a dict key must be text (Python's KeyError)".into(),
            )),
        },
        _ => Err(Fail::Null),
    }
}

fn out_of_range() -> Fail {
    Fail::Error("evaluator: index out of range (Python's IndexError)".into())
}

fn repeat<'a>(s: &str, n: i64) -> Out<'a> {
    let n = n.max(0) as usize;
    if s.len().saturating_mul(n) > MAX_STRING_LENGTH {
        return Err(Fail::Null);
    }
    Ok(Val::str(s.repeat(n)))
}

/// A Decimal result: CommCare's arithmetic keeps `Decimal` when one side is.
fn decimal<'a>(f: f64) -> Val<'a> {
    let mut text = String::new();
    pillowtop_sdk::python::write_float(&mut text, f);
    Val::Decimal(f, text.into())
}

fn binary<'a>(op: Bin, a: &Val<'a>, b: &Val<'a>) -> Out<'a> {
    use Val::*;
    if op == Bin::Pow {
        // CommCare removes the power operator from simpleeval.
        return Err(Fail::Null);
    }
    match (op, a, b) {
        (Bin::Add, Str(x), Str(y)) => {
            if x.len() + y.len() > MAX_STRING_LENGTH {
                return Err(Fail::Null);
            }
            return Ok(Val::str(format!("{x}{y}")));
        }
        (Bin::Add, List(x), List(y)) => {
            return Ok(List(Rc::new(x.iter().chain(y.iter()).cloned().collect())));
        }
        (Bin::Mul, Str(s), n) | (Bin::Mul, n, Str(s)) if n.as_int().is_some() => {
            return repeat(s, n.as_int().unwrap_or(0));
        }
        _ => {}
    }
    // Numbers: ints (bools count) stay ints where Python keeps them.
    if let (Some(x), Some(y)) = (a.as_int(), b.as_int()) {
        let (x, y) = (x as i128, y as i128);
        let r = match op {
            Bin::Add => x + y,
            Bin::Sub => x - y,
            Bin::Mul => x * y,
            Bin::Div => {
                if y == 0 {
                    return Err(Fail::Null);
                }
                return Ok(Float(x as f64 / y as f64));
            }
            Bin::FloorDiv => {
                if y == 0 {
                    return Err(Fail::Null);
                }
                x.div_euclid(y) - if y < 0 && x.rem_euclid(y) != 0 { 1 } else { 0 }
            }
            Bin::Mod => {
                if y == 0 {
                    return Err(Fail::Null);
                }
                let r = x % y;
                if r != 0 && (r < 0) != (y < 0) {
                    r + y
                } else {
                    r
                }
            }
            Bin::Pow => unreachable!("handled above"),
        };
        return i64::try_from(r).map(Int).or(Ok(Float(r as f64)));
    }
    let (Some(x), Some(y)) = (a.as_number(), b.as_number()) else {
        return Err(Fail::Null);
    };
    let is_decimal = |v: &Val<'_>| matches!(v, Decimal(..));
    let is_float = |v: &Val<'_>| matches!(v, Float(_));
    // Decimal and float do not mix in Python.
    if (is_decimal(a) && is_float(b)) || (is_float(a) && is_decimal(b)) {
        return Err(Fail::Null);
    }
    let r = match op {
        Bin::Add => x + y,
        Bin::Sub => x - y,
        Bin::Mul => x * y,
        Bin::Div | Bin::FloorDiv | Bin::Mod if y == 0.0 => return Err(Fail::Null),
        Bin::Div => x / y,
        Bin::FloorDiv => (x / y).floor(),
        Bin::Mod => x - y * (x / y).floor(),
        Bin::Pow => unreachable!("handled above"),
    };
    Ok(if is_decimal(a) || is_decimal(b) {
        decimal(r)
    } else {
        Float(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(statement: &str, vars: &[(&str, Val<'static>)]) -> String {
        let names: Vec<(Cow<'_, str>, Val<'static>)> = vars
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), v.clone()))
            .collect();
        match Program::parse(statement).unwrap().run(&names) {
            Ok(v) => v.py_str(),
            Err(e) => format!("error: {}", e.message),
        }
    }

    #[test]
    fn arithmetic_as_python() {
        assert_eq!(
            run(
                "a + b - c + 6",
                &[("a", Val::Int(1)), ("b", Val::Int(20)), ("c", Val::Int(2))]
            ),
            "25"
        );
        assert_eq!(run("7 / 2", &[]), "3.5");
        assert_eq!(run("7 // 2", &[]), "3");
        assert_eq!(run("-7 // 2", &[]), "-4");
        assert_eq!(run("-7 % 3", &[]), "2");
        assert_eq!(run("7 % -3", &[]), "-2");
        assert_eq!(run("2 * 3.0", &[]), "6.0");
        assert_eq!(run("1 / 0", &[]), "None");
        assert_eq!(run("2 ** 3", &[]), "None");
        assert_eq!(run("'a' + 1", &[]), "None");
        assert_eq!(run("'ab' * 2", &[]), "abab");
        assert_eq!(run("x + 1", &[]), "None");
        assert_eq!(run("True + True", &[]), "2");
    }

    #[test]
    fn logic_and_comparisons() {
        assert_eq!(
            run("1 if a == 'bob' else 0", &[("a", Val::str("bob"))]),
            "1"
        );
        assert_eq!(run("1 < 2 < 3", &[]), "True");
        assert_eq!(run("1 < 3 < 2", &[]), "False");
        assert_eq!(run("'a' < 1", &[]), "None");
        assert_eq!(run("0 or 'x'", &[]), "x");
        assert_eq!(run("1 and 0", &[]), "0");
        assert_eq!(run("not ''", &[]), "True");
        assert_eq!(run("'b' in ['a', 'b']", &[]), "True");
        assert_eq!(run("'z' not in 'abc'", &[]), "True");
        assert_eq!(run("[1, 2][-1]", &[]), "2");
        assert!(run("[1, 2][5]", &[]).starts_with("error"));
    }

    #[test]
    fn statements_that_do_not_parse_are_refused() {
        assert!(Program::parse("a +").is_err());
        assert!(Program::parse("a b").is_err());
        assert!(Program::parse("len(a)").is_err());
        assert!(Program::parse("'open").is_err());
        assert!(Program::parse("(1 + 2) * 3").is_ok());
    }
}
