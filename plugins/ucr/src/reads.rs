//! What of a document the data sources can read, found from their specs
//! once at `init`, so that a change's document is turned into Python
//! values only along those paths.
//!
//! A case or form is mostly properties no data source names (a generated
//! 1.5 KB case has 30 to 60 in `case_json`; the bench's data source reads
//! five): converting all of them cost more than evaluating twenty
//! indicators. Expressions read the root document by constant keys and
//! paths (`property_name`, `property_path`, `property_match`, `raw` and
//! `choice_list` getters), and the host's own columns read `_id`,
//! `domain` and `doc_type`. A value read at a path may be used whole
//! (iterated, nested into, written as JSON), so everything under a path
//! read is converted; the dicts on the way to it hold only the keys read.
//! Anything that can see the root document whole (`identity` on it, an
//! `evaluator` without `context_variables`, a computed property name)
//! makes the whole document converted, as before. A partial document is
//! only ever looked at through the paths found here, so the rows are
//! those of the whole document.

use crate::expr::Expr;
use crate::filter::Filter;
use crate::value::Val;
use std::collections::BTreeSet;

/// The part of a JSON value evaluation reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Reads {
    /// All of it.
    All,
    /// These keys of an object (in order, each once), each read as far
    /// as given. A list, not a map: a document's every key is compared
    /// with the few read, and walking a list of them costs the least
    /// fuel.
    Keys(Vec<(String, Reads)>),
}

impl Default for Reads {
    fn default() -> Self {
        Reads::Keys(Vec::new())
    }
}

/// What is read under `key`, added (reading nothing yet) if new.
fn slot<'r>(keys: &'r mut Vec<(String, Reads)>, key: &str) -> &'r mut Reads {
    let at = match keys.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
        Ok(at) => at,
        Err(at) => {
            keys.insert(at, (key.to_owned(), Reads::default()));
            at
        }
    };
    &mut keys[at].1
}

impl Reads {
    /// Read `path` (and everything under it).
    pub fn path<S: AsRef<str>>(&mut self, path: &[S]) {
        let Some((first, rest)) = path.split_first() else {
            *self = Reads::All;
            return;
        };
        if let Reads::Keys(keys) = self {
            slot(keys, first.as_ref()).path(rest);
        }
    }

    /// Read everything `other` reads too.
    pub fn merge(&mut self, other: &Reads) {
        match (&mut *self, other) {
            (Reads::All, _) => {}
            (_, Reads::All) => *self = Reads::All,
            (Reads::Keys(mine), Reads::Keys(theirs)) => {
                for (key, reads) in theirs {
                    slot(mine, key).merge(reads);
                }
            }
        }
    }
}

/// Finds what a data source's expressions and filters read of the root
/// document: `root` tells whether the item they are evaluated on is the
/// root document (or a value computed from it, or an item of a list).
pub struct Walk<'s> {
    named_expressions: &'s [Expr],
    named_filters: &'s [Filter],
    /// Named parts already walked, by (filter?, index, root?): a name used
    /// twice is walked once, and a cycle ends.
    seen: BTreeSet<(bool, usize, bool)>,
    /// What was found.
    pub reads: Reads,
}

impl<'s> Walk<'s> {
    /// A walk in the scope of a data source's named parts; the host's own
    /// columns and the data source's domain and type test read `_id`,
    /// `domain` and `doc_type`.
    pub fn new(named_expressions: &'s [Expr], named_filters: &'s [Filter]) -> Walk<'s> {
        let mut reads = Reads::default();
        for key in ["_id", "domain", "doc_type"] {
            reads.path(&[key]);
        }
        Walk {
            named_expressions,
            named_filters,
            seen: BTreeSet::new(),
            reads,
        }
    }

    /// What `expr` reads, evaluated on the root document (`root`) or on
    /// another item.
    pub fn expr(&mut self, expr: &Expr, root: bool) {
        match expr {
            Expr::Identity => {
                if root {
                    self.reads = Reads::All;
                }
            }
            Expr::Constant(_) | Expr::BaseIterationNumber => {}
            Expr::PropertyName { name, .. } => {
                self.expr(name, root);
                if root {
                    match &**name {
                        Expr::Constant(Val::Str(key)) => self.reads.path(&[key.as_ref()]),
                        // A computed name, or a key no JSON object has
                        // (the value is then None): read it all.
                        _ => self.reads = Reads::All,
                    }
                }
            }
            Expr::PropertyPath { path, .. } => {
                if root {
                    self.reads.path(path);
                }
            }
            Expr::Conditional(test, t, f) => {
                self.filter(test, root);
                self.expr(t, root);
                self.expr(f, root);
            }
            Expr::Switch(on, cases, default) => {
                self.expr(on, root);
                for (_, e) in cases {
                    self.expr(e, root);
                }
                self.expr(default, root);
            }
            Expr::Coalesce(a, b)
            | Expr::ArrayIndex(a, b)
            | Expr::AddDays(a, b)
            | Expr::AddMonths(a, b)
            | Expr::DiffDays(a, b) => {
                self.expr(a, root);
                self.expr(b, root);
            }
            Expr::ConcatenateStrings(parts, _) => {
                for e in parts {
                    self.expr(e, root);
                }
            }
            Expr::SplitString { string, index, .. } => {
                self.expr(string, root);
                if let Some(i) = index {
                    self.expr(i, root);
                }
            }
            Expr::Iterator(parts, test) => {
                for e in parts {
                    self.expr(e, root);
                }
                // The test is applied to each value.
                if let Some(t) = test {
                    self.filter(t, false);
                }
            }
            Expr::RootDoc(e) => self.expr(e, true),
            Expr::Named(i) => {
                if self.seen.insert((false, *i, root)) {
                    let named = &self.named_expressions[*i];
                    self.expr(named, root);
                }
            }
            // The value expression is evaluated on the argument's value.
            Expr::Nested(argument, value) => {
                self.expr(argument, root);
                self.expr(value, false);
            }
            Expr::Dict(members) => {
                for (_, e) in members {
                    self.expr(e, root);
                }
            }
            Expr::ReduceItems(items, _) | Expr::Flatten(items) => self.expr(items, root),
            Expr::FilterItems(items, test) => {
                self.expr(items, root);
                self.filter(test, false);
            }
            Expr::MapItems(items, each) | Expr::SortItems(items, each, _) => {
                self.expr(items, root);
                self.expr(each, false);
            }
            Expr::Evaluator(_, variables, _) => match variables {
                Some(vars) => {
                    for (_, e) in vars {
                        self.expr(e, root);
                    }
                }
                // Every member of the item is a variable.
                None => {
                    if root {
                        self.reads = Reads::All;
                    }
                }
            },
            Expr::MonthStartDate(e) | Expr::MonthEndDate(e) => self.expr(e, root),
            // The value expression reads the related document.
            Expr::RelatedDoc { doc_id, value, .. } => {
                self.expr(doc_id, root);
                self.expr(value, false);
            }
        }
    }

    /// What `filter` reads, evaluated on the root document (`root`) or on
    /// another item.
    pub fn filter(&mut self, filter: &Filter, root: bool) {
        match filter {
            Filter::Compare(a, _, b) => {
                self.expr(a, root);
                self.expr(b, root);
            }
            Filter::And(all) | Filter::Or(all) => {
                for f in all {
                    self.filter(f, root);
                }
            }
            Filter::Not(f) => self.filter(f, root),
            Filter::Named(i) => {
                if self.seen.insert((true, *i, root)) {
                    let named = &self.named_filters[*i];
                    self.filter(named, root);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, Reads)]) -> Reads {
        Reads::Keys(
            pairs
                .iter()
                .map(|(k, r)| (k.to_string(), r.clone()))
                .collect(),
        )
    }

    #[test]
    fn paths_merge_and_all_dominates() {
        let mut r = Reads::default();
        r.path(&["case_json", "age"]);
        r.path(&["case_json", "dob"]);
        r.path(&["name"]);
        assert_eq!(
            r,
            keys(&[
                (
                    "case_json",
                    keys(&[("age", Reads::All), ("dob", Reads::All)])
                ),
                ("name", Reads::All),
            ])
        );
        // The whole of case_json is read by another path: it is all read.
        let mut other = Reads::default();
        other.path(&["case_json"]);
        r.merge(&other);
        assert_eq!(r, keys(&[("case_json", Reads::All), ("name", Reads::All)]));
        // A longer path under a key read whole changes nothing.
        r.path(&["name", "first"]);
        assert_eq!(r, keys(&[("case_json", Reads::All), ("name", Reads::All)]));
        r.merge(&Reads::All);
        assert_eq!(r, Reads::All);
    }
}
