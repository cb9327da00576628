//! What evaluation needs besides the item: the root document, the repeat
//! iteration, the data source's named expressions and filters, and the
//! host's document lookups; and the one way evaluation fails.

use crate::expr::Expr;
use crate::filter::Filter;
use crate::value::Val;
use std::fmt;

/// Why an expression could not be evaluated on one document. CommCare
/// records such a document as failed for the data source; here it is a
/// pillow error for the change (retried when `retryable`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalError {
    /// What failed.
    pub message: String,
    /// Whether it may pass later (a lookup that could not answer).
    pub retryable: bool,
}

impl EvalError {
    /// An error that will not pass on retry.
    pub fn permanent(message: impl Into<String>) -> EvalError {
        EvalError {
            message: message.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Reads a related document: `(lookup resource, document id)` to the
/// document's JSON, `None` when there is none.
pub type Lookup<'e> = dyn Fn(&str, &str) -> Result<Option<String>, EvalError> + 'e;

/// A data source's named parts and the lookup, shared by every evaluation.
pub struct Env<'e> {
    /// Named expressions, by the index [`Expr::Named`] holds.
    pub named_expressions: &'e [Expr],
    /// Named filters, by the index [`Filter::Named`] holds.
    pub named_filters: &'e [Filter],
    /// Related documents.
    pub lookup: &'e Lookup<'e>,
}

/// The evaluation context: CommCare's `EvaluationContext`.
pub struct Ctx<'c, 'a> {
    /// The document being processed (`root_doc`).
    pub root: &'c Val<'a>,
    /// The index of the item of `base_item_expression` (0 without one).
    pub iteration: i64,
    /// Named parts and lookups.
    pub env: &'c Env<'c>,
    /// Values of named expressions already evaluated on the root document
    /// (in iteration 0), by index: a data source names an expression to
    /// use it in several places, and it is the same value in each.
    pub named: Option<&'c NamedValues<'a>>,
}

/// Values of named expressions on the root document, by index.
pub type NamedValues<'a> = std::cell::RefCell<Vec<Option<Val<'a>>>>;

impl<'a> Ctx<'_, 'a> {
    /// Where the value of named expression `i` on `item` is kept, if it is
    /// kept: on the root document in iteration 0 only (another item, or a
    /// `base_iteration_number` read in another iteration, can give
    /// another value).
    pub fn named_slot(&self, item: &Val<'a>) -> Option<&NamedValues<'a>> {
        let root = match (item, self.root) {
            (Val::Dict(a), Val::Dict(b)) => std::rc::Rc::ptr_eq(a, b),
            _ => std::ptr::eq(item, self.root),
        };
        self.named.filter(|_| root && self.iteration == 0)
    }
}
