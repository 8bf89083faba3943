//! Server-side filters: a small expression over a message's key, headers and, for JSON
//! values, fields by path. Pure: no I/O, no clock. A filter is parsed once (when a
//! subscription, fetch or queue is made) into a [`Filter`], then evaluated per message
//! by [`Filter::evaluate`], which allocates nothing unless the expression reaches a
//! `json` field (the value is then parsed with `serde_json`, once per message).
//!
//! # Grammar (EBNF)
//!
//! ```text
//! filter     = or ;
//! or         = and , { "||" , and } ;
//! and        = unary , { "&&" , unary } ;
//! unary      = "!" , unary | primary ;
//! primary    = "(" , or , ")"
//!            | "exists" , "(" , field , ")"
//!            | field , compare , value
//!            | field , "in" , "(" , value , { "," , value } , ")" ;
//! compare    = "==" | "!=" | "^=" | "<" | "<=" | ">" | ">=" ;
//! field      = "key"
//!            | "header" , ( "." , name | "[" , string , "]" )
//!            | "json" , { "." , name | "[" , string , "]" | "[" , digits , "]" } ;
//! name       = ( letter | digit | "_" | "-" ) , { letter | digit | "_" | "-" } ;
//! value      = string | number | "true" | "false" | "null" ;
//! string     = '"' , { char | "\" , ( '"' | "\" | "/" | "n" | "t" | "r"
//!                                       | "u" , 4 * hexdigit ) } , '"' ;
//! number     = [ "-" ] , digits , [ "." , digits ] , [ ( "e" | "E" ) , [ "+" | "-" ] , digits ] ;
//! (* char: any character but '"' and "\"; digits: one or more 0-9 *)
//! ```
//!
//! Spaces, tabs and line breaks may stand between any two tokens. `!` binds tighter
//! than `&&`, which binds tighter than `||`. Examples:
//! `header.type == "order" && json.amount >= 100 && !exists(header.test)`,
//! `key ^= "eu-"`, `header.region in ("eu", "us")`, `json.items[0].sku == "A-1"`,
//! `header["content type"] == "text/plain"`.
//!
//! # Meaning
//!
//! - `key` is the message key's bytes (a message without a key has the empty key, and
//!   `exists(key)` is false for it). `header.NAME` is the value of the first header
//!   named NAME (names compare exactly, case included); `exists(header.NAME)` says
//!   whether there is one. `json` is the value parsed as JSON, `json.a.b[2]` a field
//!   inside it (`exists` is true for a field that is `null`).
//! - `==` / `!=`: a string compares with the bytes of a key or header, or with a JSON
//!   string; a number with a key or header whose bytes are a number in the same
//!   grammar, or with a JSON number (integers exactly, others as f64); `true`,
//!   `false`, `null` with a key or header holding that word, or with the JSON value.
//!   Anything else (a missing header or field, another type) is not equal, so `!=`
//!   is exactly `!(==)` and matches a missing field.
//! - `^=` (prefix) takes a string: the bytes, or the JSON string, start with it.
//! - `<`, `<=`, `>`, `>=` take a number (both sides numbers, as for `==`) or a string
//!   (bytes, or JSON strings, compared byte by byte). A missing field, another type,
//!   or a value that is not a number compares false.
//! - `in (v1, v2, ...)` is `== v1 || == v2 || ...`.
//! - When evaluation reaches a `json` field and the message's value is not JSON (or is
//!   longer than [`FILTER_JSON_VALUE_BYTES_MAX`]), the message does not match, whatever
//!   the rest of the expression says, and the verdict says why ([`Verdict::NotJson`])
//!   so it can be counted. Evaluation stops
//!   as soon as the answer is known (`&&` and `||` short-circuit), so a filter whose
//!   header condition already decided never parses the value.
//!
//! Limits: [`FILTER_BYTES_MAX`] bytes of text, [`FILTER_DEPTH_MAX`] levels of nesting,
//! [`FILTER_NODES_MAX`] nodes. A malformed filter is a [`FilterError`] naming the byte
//! position and what was expected there.

mod eval;
mod parse;

use std::fmt;

pub use crate::limits::{
    FILTER_BYTES_MAX, FILTER_DEPTH_MAX, FILTER_JSON_VALUE_BYTES_MAX, FILTER_NODES_MAX,
};

/// A parsed filter, ready to evaluate. Cheap to share (`Arc`) between readers.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    expr: Expr,
    needs_json: bool,
    /// When the whole filter is one comparison of a header with a literal (the most
    /// common filter): the header's name, the operator and the literal, so a record
    /// read in place is judged without the tree walk.
    header_compare: Option<(String, Op, Value)>,
}

/// What a filter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it.
    Match,
    /// Skip it.
    Skip,
    /// Skip it: evaluation reached a `json` field and the value is not JSON.
    NotJson,
}

impl Verdict {
    pub fn matches(self) -> bool {
        self == Verdict::Match
    }
}

/// What a filtered read skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filtered {
    /// Records the filter skipped (`not_json` included).
    pub skipped: u64,
    /// Of those, records skipped because evaluation needed JSON and the value is not.
    pub not_json: u64,
}

/// Why a filter's text is not a filter: the byte position and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// Byte offset into the filter's text (its length at the end of the text).
    pub position: usize,
    /// What the parser expected there, e.g. "an operator (==, !=, ^=, <, <=, >, >=, in)".
    pub expected: String,
    /// What it found: a short quote of the text there, or "the end of the filter".
    pub found: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at byte {}: expected {}, found {}",
            self.position, self.expected, self.found
        )
    }
}

impl std::error::Error for FilterError {}

impl Filter {
    /// Parses `text` (see the module docs for the grammar and limits).
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        Ok(Filter::from_expr(parse::parse(text)?))
    }

    /// The filter of a tree (parsed, or built by a test).
    pub(crate) fn from_expr(expr: Expr) -> Filter {
        let needs_json = expr.needs_json();
        let header_compare = match &expr {
            Expr::Compare {
                field: Field::Header(name),
                op,
                value,
            } => Some((name.clone(), *op, value.clone())),
            _ => None,
        };
        Filter {
            expr,
            needs_json,
            header_compare,
        }
    }

    /// Whether some condition reads a `json` field (evaluation may parse the value).
    pub fn needs_json(&self) -> bool {
        self.needs_json
    }

    /// The verdict on a message with this key (`None` or empty = no key), headers and
    /// value.
    pub fn evaluate(
        &self,
        key: Option<&[u8]>,
        headers: &[crate::batch::Header],
        value: &[u8],
    ) -> Verdict {
        eval::evaluate(
            &self.expr,
            key.unwrap_or_default(),
            eval::Headers::Decoded(headers),
            value,
        )
    }

    /// The verdict on a record read in place from its batch
    /// ([`crate::batch::RecordIter::raw`]): the same as on the decoded record, without
    /// decoding it.
    #[inline]
    pub fn evaluate_raw(&self, record: &crate::batch::RawRecord<'_>) -> Verdict {
        if let Some((name, op, value)) = &self.header_compare {
            return eval::compare_header(record.headers().value_of(name), *op, value);
        }
        eval::evaluate(
            &self.expr,
            record.key.unwrap_or_default(),
            eval::Headers::Raw(record.headers()),
            record.value,
        )
    }

    /// The verdict on a stored record.
    pub fn evaluate_record(&self, record: &crate::batch::Record) -> Verdict {
        self.evaluate(record.key.as_deref(), &record.headers, &record.value)
    }

    /// The expression, for tests and tools.
    pub fn expr(&self) -> &Expr {
        &self.expr
    }
}

/// The canonical text of the filter: it parses back to the same filter, unless its
/// spaces and escapes take it past [`FILTER_BYTES_MAX`].
impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.expr)
    }
}

/// A filter's syntax tree.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Two or more alternatives.
    Or(Vec<Expr>),
    /// Two or more conditions that must all hold.
    And(Vec<Expr>),
    Not(Box<Expr>),
    Exists(Field),
    Compare {
        field: Field,
        op: Op,
        value: Value,
    },
    In {
        field: Field,
        values: Vec<Value>,
    },
}

/// What a condition looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    Key,
    Header(String),
    /// The value as JSON, then these steps into it (none = the whole value).
    Json(Vec<Step>),
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// An object member.
    Name(String),
    /// An array element.
    Index(usize),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Prefix,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Prefix => "^=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }
}

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Num(Number),
    Bool(bool),
    Null,
}

/// A number: exact when it is an integer (any i64 or u64 fits), f64 otherwise. Never
/// NaN nor infinite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

impl Expr {
    fn needs_json(&self) -> bool {
        match self {
            Expr::Or(items) | Expr::And(items) => items.iter().any(Expr::needs_json),
            Expr::Not(inner) => inner.needs_json(),
            Expr::Exists(field) | Expr::Compare { field, .. } | Expr::In { field, .. } => {
                matches!(field, Field::Json(_))
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Or(items) => join(f, items, " || ", |e| matches!(e, Expr::Or(_))),
            Expr::And(items) => join(f, items, " && ", |e| {
                matches!(e, Expr::Or(_) | Expr::And(_))
            }),
            Expr::Not(inner) => match **inner {
                Expr::Or(_) | Expr::And(_) => write!(f, "!({inner})"),
                _ => write!(f, "!{inner}"),
            },
            Expr::Exists(field) => write!(f, "exists({field})"),
            Expr::Compare { field, op, value } => write!(f, "{field} {} {value}", op.as_str()),
            Expr::In { field, values } => {
                write!(f, "{field} in (")?;
                for (i, value) in values.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{value}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// `items` joined by `separator`, those `needs_parens` selects in parentheses.
fn join(
    f: &mut fmt::Formatter<'_>,
    items: &[Expr],
    separator: &str,
    needs_parens: impl Fn(&Expr) -> bool,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(separator)?;
        }
        if needs_parens(item) {
            write!(f, "({item})")?;
        } else {
            write!(f, "{item}")?;
        }
    }
    Ok(())
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Field::Key => f.write_str("key"),
            Field::Header(name) if parse::is_name(name) => write!(f, "header.{name}"),
            Field::Header(name) => write!(f, "header[{}]", Quoted(name)),
            Field::Json(steps) => {
                f.write_str("json")?;
                for step in steps {
                    match step {
                        Step::Name(name) if parse::is_name(name) => write!(f, ".{name}")?,
                        Step::Name(name) => write!(f, "[{}]", Quoted(name))?,
                        Step::Index(index) => write!(f, "[{index}]")?,
                    }
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(text) => write!(f, "{}", Quoted(text)),
            Value::Num(Number::Int(n)) => write!(f, "{n}"),
            // LowerExp prints the shortest digits that read back to the same f64.
            Value::Num(Number::Float(x)) => write!(f, "{x:e}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("null"),
        }
    }
}

/// A string literal as the grammar writes it.
struct Quoted<'a>(&'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for c in self.0.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                '\r' => f.write_str("\\r")?,
                c if c.is_control() && (c as u32) < 0x10000 => write!(f, "\\u{:04x}", c as u32)?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

#[cfg(test)]
mod tests;
