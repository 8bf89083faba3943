//! The evaluator: walks the tree over one message. Keys and headers are compared in
//! place (no allocation); the value is parsed as JSON at most once per message, and only
//! when a `json` field is reached.

use std::cmp::Ordering;

use serde_json::Value as Json;

use super::parse::parse_number;
use super::{Expr, Field, Number, Op, Step, Value, Verdict};
use crate::batch::{Header, RawHeaders};
use crate::limits::FILTER_JSON_VALUE_BYTES_MAX;

/// Evaluation reached a `json` field and the value is not JSON.
struct NotJson;

/// A message's headers: decoded, or read in place from its batch.
#[derive(Clone, Copy)]
pub(super) enum Headers<'a> {
    Decoded(&'a [Header]),
    Raw(RawHeaders<'a>),
}

impl<'a> Headers<'a> {
    /// The first header named `name`.
    #[inline]
    fn find(self, name: &str) -> Option<&'a [u8]> {
        match self {
            Headers::Decoded(headers) => headers
                .iter()
                .find(|h| h.key == name)
                .map(|h| h.value.as_ref()),
            Headers::Raw(headers) => headers.value_of(name),
        }
    }
}

/// The message under evaluation, with its value parsed as JSON once needed.
struct Message<'a> {
    key: &'a [u8],
    headers: Headers<'a>,
    value: &'a [u8],
    json: Option<Result<Json, ()>>,
}

/// What a field holds in one message.
enum Found<'m> {
    Missing,
    Bytes(&'m [u8]),
    Json(&'m Json),
}

pub(super) fn evaluate(expr: &Expr, key: &[u8], headers: Headers<'_>, value: &[u8]) -> Verdict {
    let mut message = Message {
        key,
        headers,
        value,
        json: None,
    };
    match eval(expr, &mut message) {
        Ok(true) => Verdict::Match,
        Ok(false) => Verdict::Skip,
        Err(NotJson) => Verdict::NotJson,
    }
}

fn eval(expr: &Expr, message: &mut Message<'_>) -> Result<bool, NotJson> {
    Ok(match expr {
        Expr::Or(items) => {
            for item in items {
                if eval(item, message)? {
                    return Ok(true);
                }
            }
            false
        }
        Expr::And(items) => {
            for item in items {
                if !eval(item, message)? {
                    return Ok(false);
                }
            }
            true
        }
        Expr::Not(inner) => !eval(inner, message)?,
        // The empty key is no key.
        Expr::Exists(Field::Key) => !message.key.is_empty(),
        Expr::Exists(field) => !matches!(lookup(field, message)?, Found::Missing),
        Expr::Compare { field, op, value } => compare_found(&lookup(field, message)?, *op, value),
        Expr::In { field, values } => {
            let found = lookup(field, message)?;
            values.iter().any(|value| equals(&found, value))
        }
    })
}

#[inline]
fn lookup<'m>(field: &Field, message: &'m mut Message<'_>) -> Result<Found<'m>, NotJson> {
    Ok(match field {
        // A message without a key compares as the empty key.
        Field::Key => Found::Bytes(message.key),
        Field::Header(name) => message
            .headers
            .find(name)
            .map_or(Found::Missing, Found::Bytes),
        Field::Json(steps) => {
            let value = message.value;
            let parsed = message.json.get_or_insert_with(|| {
                if value.len() > FILTER_JSON_VALUE_BYTES_MAX {
                    return Err(());
                }
                serde_json::from_slice(value).map_err(|_| ())
            });
            let Ok(mut at) = parsed.as_ref() else {
                return Err(NotJson);
            };
            for step in steps {
                let next = match (step, at) {
                    (Step::Name(name), Json::Object(members)) => members.get(name.as_str()),
                    (Step::Index(index), Json::Array(items)) => items.get(*index),
                    _ => None,
                };
                match next {
                    Some(next) => at = next,
                    None => return Ok(Found::Missing),
                }
            }
            Found::Json(at)
        }
    })
}

/// The verdict of `field op value` on what the field holds.
#[inline]
fn compare_found(found: &Found<'_>, op: Op, value: &Value) -> bool {
    match op {
        Op::Eq => equals(found, value),
        Op::Ne => !equals(found, value),
        Op::Prefix => prefix(found, value),
        Op::Lt => order(found, value).is_some_and(Ordering::is_lt),
        Op::Le => order(found, value).is_some_and(Ordering::is_le),
        Op::Gt => order(found, value).is_some_and(Ordering::is_gt),
        Op::Ge => order(found, value).is_some_and(Ordering::is_ge),
    }
}

/// The verdict of a filter that is one comparison of a header (see
/// [`super::Filter::evaluate_raw`]): `found` is the header's value, if the message has
/// the header.
#[inline]
pub(super) fn compare_header(found: Option<&[u8]>, op: Op, value: &Value) -> Verdict {
    let found = found.map_or(Found::Missing, Found::Bytes);
    if compare_found(&found, op, value) {
        Verdict::Match
    } else {
        Verdict::Skip
    }
}

#[inline]
fn equals(found: &Found<'_>, value: &Value) -> bool {
    match (found, value) {
        (Found::Missing, _) => false,
        // `key == ""` holds for a message without a key (the empty key).
        (Found::Bytes(bytes), Value::Str(text)) => *bytes == text.as_bytes(),
        (Found::Bytes(bytes), Value::Num(number)) => {
            parse_number(bytes).is_some_and(|n| compare(n, *number) == Some(Ordering::Equal))
        }
        (Found::Bytes(bytes), Value::Bool(true)) => *bytes == b"true",
        (Found::Bytes(bytes), Value::Bool(false)) => *bytes == b"false",
        (Found::Bytes(bytes), Value::Null) => *bytes == b"null",
        (Found::Json(Json::String(s)), Value::Str(text)) => s == text,
        (Found::Json(Json::Number(n)), Value::Num(number)) => {
            json_number(n).is_some_and(|n| compare(n, *number) == Some(Ordering::Equal))
        }
        (Found::Json(Json::Bool(b)), Value::Bool(v)) => b == v,
        (Found::Json(Json::Null), Value::Null) => true,
        (Found::Json(_), _) => false,
    }
}

fn prefix(found: &Found<'_>, value: &Value) -> bool {
    let Value::Str(text) = value else {
        return false;
    };
    match found {
        Found::Bytes(bytes) => bytes.starts_with(text.as_bytes()),
        Found::Json(Json::String(s)) => s.starts_with(text.as_str()),
        _ => false,
    }
}

/// How the field's value orders against `value`; `None` when they do not compare.
fn order(found: &Found<'_>, value: &Value) -> Option<Ordering> {
    match (found, value) {
        (Found::Bytes(bytes), Value::Str(text)) => Some((*bytes).cmp(text.as_bytes())),
        (Found::Bytes(bytes), Value::Num(number)) => compare(parse_number(bytes)?, *number),
        (Found::Json(Json::String(s)), Value::Str(text)) => Some(s.as_bytes().cmp(text.as_bytes())),
        (Found::Json(Json::Number(n)), Value::Num(number)) => compare(json_number(n)?, *number),
        _ => None,
    }
}

fn json_number(n: &serde_json::Number) -> Option<Number> {
    if let Some(i) = n.as_i64() {
        Some(Number::Int(i128::from(i)))
    } else if let Some(u) = n.as_u64() {
        Some(Number::Int(i128::from(u)))
    } else {
        n.as_f64().filter(|x| x.is_finite()).map(Number::Float)
    }
}

/// Integers compare exactly; anything else as f64.
fn compare(a: Number, b: Number) -> Option<Ordering> {
    match (a, b) {
        (Number::Int(a), Number::Int(b)) => Some(a.cmp(&b)),
        (a, b) => as_f64(a).partial_cmp(&as_f64(b)),
    }
}

fn as_f64(n: Number) -> f64 {
    match n {
        Number::Int(i) => i as f64,
        Number::Float(x) => x,
    }
}
