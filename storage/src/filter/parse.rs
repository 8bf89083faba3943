//! The filter parser: recursive descent over the bytes of the text, one function per
//! grammar rule (see the module docs of [`super`]). Bounded by the text's length, the
//! nesting depth and the node count; never panics (positions only move forward over
//! bytes it has checked, and slices fall on ASCII bytes, hence on character
//! boundaries).

use super::{
    Expr, FILTER_BYTES_MAX, FILTER_DEPTH_MAX, FILTER_NODES_MAX, Field, FilterError, Number, Op,
    Step, Value,
};

const EXPECT_CONDITION: &str =
    "a condition: a field (key, header.NAME, json.PATH), exists(FIELD), `!` or `(`";
const EXPECT_OPERATOR: &str = "an operator (==, !=, ^=, <, <=, >, >=, in)";
const EXPECT_VALUE: &str = "a value (a \"string\", a number, true, false or null)";

pub(super) fn parse(text: &str) -> Result<Expr, FilterError> {
    if text.len() > FILTER_BYTES_MAX {
        return Err(FilterError {
            position: FILTER_BYTES_MAX,
            expected: format!("the end of the filter (at most {FILTER_BYTES_MAX} bytes)"),
            found: format!("{} bytes", text.len()),
        });
    }
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        position: 0,
        depth: 0,
        nodes: 0,
    };
    let expr = parser.or()?;
    parser.skip_space();
    if parser.position < parser.bytes.len() {
        return Err(parser.error("`&&`, `||` or the end of the filter"));
    }
    Ok(expr)
}

/// Whether `name` can be written after a `.` (else it is written `["..."]`).
pub(super) fn is_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_name_byte)
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    position: usize,
    depth: usize,
    nodes: usize,
}

impl Parser<'_> {
    fn error(&self, expected: &str) -> FilterError {
        self.error_at(self.position, expected)
    }

    fn error_at(&self, position: usize, expected: &str) -> FilterError {
        FilterError {
            position,
            expected: expected.to_string(),
            found: self.found_at(position),
        }
    }

    /// A short quote of the text at `position`.
    fn found_at(&self, position: usize) -> String {
        let Some(rest) = self.text.get(position..) else {
            return "the end of the filter".to_string();
        };
        if rest.is_empty() {
            return "the end of the filter".to_string();
        }
        let quote: String = rest.chars().take(12).collect();
        let more = if quote.len() < rest.len() { "..." } else { "" };
        format!("`{quote}{more}`")
    }

    /// Counts a node against [`FILTER_NODES_MAX`].
    fn node(&mut self) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > FILTER_NODES_MAX {
            return Err(self.error(&format!(
                "a shorter filter (at most {FILTER_NODES_MAX} nodes: conditions, `!`s, list values and runs of `&&` or `||`)"
            )));
        }
        Ok(())
    }

    fn deeper(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > FILTER_DEPTH_MAX {
            return Err(self.error(&format!(
                "less nesting (at most {FILTER_DEPTH_MAX} levels of `(` and `!`)"
            )));
        }
        Ok(())
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.position).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.position + ahead).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.position += 1;
        }
    }

    /// Takes `token` if the text continues with it (after spaces).
    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.bytes[self.position..].starts_with(token.as_bytes()) {
            self.position += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str, expected: &str) -> Result<(), FilterError> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    /// The word (`[A-Za-z0-9_-]+`) at the position, not taken.
    fn word(&self) -> &str {
        let rest = &self.bytes[self.position..];
        let len = rest.iter().take_while(|b| is_name_byte(**b)).count();
        // ASCII bytes only: the slice ends on a character boundary.
        self.text
            .get(self.position..self.position + len)
            .unwrap_or("")
    }

    fn or(&mut self) -> Result<Expr, FilterError> {
        let first = self.and()?;
        if !self.eat("||") {
            return Ok(first);
        }
        self.node()?;
        let mut items = vec![first];
        loop {
            items.push(self.and()?);
            if !self.eat("||") {
                return Ok(Expr::Or(items));
            }
        }
    }

    fn and(&mut self) -> Result<Expr, FilterError> {
        let first = self.unary()?;
        if !self.eat("&&") {
            return Ok(first);
        }
        self.node()?;
        let mut items = vec![first];
        loop {
            items.push(self.unary()?);
            if !self.eat("&&") {
                return Ok(Expr::And(items));
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        self.skip_space();
        if self.peek() == Some(b'!') && self.peek_at(1) != Some(b'=') {
            self.position += 1;
            self.deeper()?;
            self.node()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        self.skip_space();
        if self.peek() == Some(b'(') {
            self.position += 1;
            self.deeper()?;
            let inner = self.or()?;
            self.expect(")", "`&&`, `||` or `)`")?;
            self.depth -= 1;
            return Ok(inner);
        }
        let start = self.position;
        if self.word() == "exists" {
            self.position += "exists".len();
            if self.eat("(") {
                self.node()?;
                let field = self.field()?;
                self.expect(")", "`)` after the field")?;
                return Ok(Expr::Exists(field));
            }
            self.position = start;
        }
        let field = self.field()?;
        self.node()?;
        self.skip_space();
        let op = match (self.peek(), self.peek_at(1)) {
            (Some(b'='), Some(b'=')) => Op::Eq,
            (Some(b'!'), Some(b'=')) => Op::Ne,
            (Some(b'^'), Some(b'=')) => Op::Prefix,
            (Some(b'<'), Some(b'=')) => Op::Le,
            (Some(b'>'), Some(b'=')) => Op::Ge,
            (Some(b'<'), _) => Op::Lt,
            (Some(b'>'), _) => Op::Gt,
            (Some(b'i'), Some(b'n')) if self.word() == "in" => {
                self.position += 2;
                return self.list(field);
            }
            _ => return Err(self.error(EXPECT_OPERATOR)),
        };
        self.position += op.as_str().len();
        self.skip_space();
        let value_at = self.position;
        let value = self.value()?;
        match (op, &value) {
            (Op::Prefix, Value::Str(_)) => {}
            (Op::Prefix, _) => return Err(self.error_at(value_at, "a \"string\" after ^=")),
            (Op::Lt | Op::Le | Op::Gt | Op::Ge, Value::Str(_) | Value::Num(_)) => {}
            (Op::Lt | Op::Le | Op::Gt | Op::Ge, _) => {
                return Err(self.error_at(
                    value_at,
                    &format!("a number or a \"string\" after {}", op.as_str()),
                ));
            }
            _ => {}
        }
        Ok(Expr::Compare { field, op, value })
    }

    /// `( value, ... )` after `in`.
    fn list(&mut self, field: Field) -> Result<Expr, FilterError> {
        self.expect("(", "`(` and a list of values after `in`")?;
        let mut values = Vec::new();
        loop {
            self.skip_space();
            self.node()?;
            values.push(self.value()?);
            if self.eat(",") {
                continue;
            }
            self.expect(")", "`,` or `)` in the list")?;
            return Ok(Expr::In { field, values });
        }
    }

    fn field(&mut self) -> Result<Field, FilterError> {
        self.skip_space();
        match self.word() {
            "key" => {
                self.position += 3;
                Ok(Field::Key)
            }
            "header" => {
                self.position += "header".len();
                match self.peek() {
                    Some(b'.') => {
                        self.position += 1;
                        Ok(Field::Header(self.name()?))
                    }
                    Some(b'[') => {
                        self.position += 1;
                        let name = self.string("a \"header name\" after `[`")?;
                        self.expect("]", "`]` after the header name")?;
                        Ok(Field::Header(name))
                    }
                    _ => Err(self.error("`.NAME` or `[\"NAME\"]` after header")),
                }
            }
            "json" => {
                self.position += "json".len();
                let mut steps = Vec::new();
                loop {
                    match self.peek() {
                        Some(b'.') => {
                            self.position += 1;
                            self.node()?;
                            steps.push(Step::Name(self.name()?));
                        }
                        Some(b'[') => {
                            self.position += 1;
                            self.skip_space();
                            self.node()?;
                            if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                                steps.push(Step::Index(self.index()?));
                            } else {
                                steps.push(Step::Name(
                                    self.string("an array index or a \"member name\" after `[`")?,
                                ));
                            }
                            self.expect("]", "`]`")?;
                        }
                        _ => return Ok(Field::Json(steps)),
                    }
                }
            }
            _ => Err(self.error(EXPECT_CONDITION)),
        }
    }

    /// A name after `.`.
    fn name(&mut self) -> Result<String, FilterError> {
        let word = self.word();
        if word.is_empty() {
            return Err(self.error("a name (letters, digits, `_`, `-`) after `.`"));
        }
        let name = word.to_string();
        self.position += name.len();
        Ok(name)
    }

    fn index(&mut self) -> Result<usize, FilterError> {
        let start = self.position;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.position += 1;
        }
        self.text[start..self.position]
            .parse()
            .map_err(|_| self.error_at(start, "an array index that fits in 64 bits"))
    }

    fn value(&mut self) -> Result<Value, FilterError> {
        self.skip_space();
        match self.peek() {
            Some(b'"') => Ok(Value::Str(self.string(EXPECT_VALUE)?)),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.position;
                let len = number_len(&self.bytes[start..]);
                let Some(number) = parse_number(&self.bytes[start..start + len]) else {
                    return Err(self.error_at(
                        start,
                        "a number (digits, then maybe `.` digits and an exponent) that is finite",
                    ));
                };
                self.position += len;
                Ok(Value::Num(number))
            }
            _ => {
                let value = match self.word() {
                    "true" => Value::Bool(true),
                    "false" => Value::Bool(false),
                    "null" => Value::Null,
                    _ => return Err(self.error(EXPECT_VALUE)),
                };
                self.position += self.word().len();
                Ok(value)
            }
        }
    }

    /// A string literal at the position (`expected` when there is none).
    fn string(&mut self, expected: &str) -> Result<String, FilterError> {
        self.skip_space();
        if self.peek() != Some(b'"') {
            return Err(self.error(expected));
        }
        let opening = self.position;
        self.position += 1;
        let mut out = String::new();
        loop {
            let Some(rest) = self.text.get(self.position..) else {
                return Err(self.error_at(self.bytes.len(), "the closing `\"`"));
            };
            let Some(c) = rest.chars().next() else {
                return Err(FilterError {
                    position: self.bytes.len(),
                    expected: format!("the closing `\"` of the string at byte {opening}"),
                    found: "the end of the filter".to_string(),
                });
            };
            match c {
                '"' => {
                    self.position += 1;
                    return Ok(out);
                }
                '\\' => {
                    let at = self.position;
                    self.position += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'u') => {
                            let hex = self
                                .bytes
                                .get(self.position + 1..self.position + 5)
                                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .and_then(char::from_u32);
                            let Some(c) = hex else {
                                return Err(self.error_at(
                                    at,
                                    "`\\u` and 4 hex digits of a character (not a surrogate)",
                                ));
                            };
                            self.position += 4;
                            c
                        }
                        _ => {
                            return Err(self
                                .error_at(at, "an escape: \\\" \\\\ \\/ \\n \\t \\r or \\uXXXX"));
                        }
                    };
                    self.position += 1;
                    out.push(escaped);
                }
                c => {
                    self.position += c.len_utf8();
                    out.push(c);
                }
            }
        }
    }
}

/// Bytes at the start of `bytes` that can belong to a number literal.
fn number_len(bytes: &[u8]) -> usize {
    let mut len = 0;
    for (i, b) in bytes.iter().enumerate() {
        let sign_ok = i == 0 || matches!(bytes[i - 1], b'e' | b'E');
        match b {
            b'0'..=b'9' | b'.' | b'e' | b'E' => len = i + 1,
            b'-' | b'+' if sign_ok => len = i + 1,
            _ => break,
        }
    }
    len
}

/// `bytes` as a number in the grammar's `number` form: an integer (exact) or a finite
/// float. `None` for anything else. Allocates nothing.
#[inline]
pub(super) fn parse_number(bytes: &[u8]) -> Option<Number> {
    // The common header value, compared once per message a filter reads: up to 18
    // digits fit an i64 as they are, with no text to parse.
    if let Some(n) = small_integer(bytes) {
        return Some(Number::Int(i128::from(n)));
    }
    parse_number_text(bytes)
}

/// `-?[0-9]{1,18}` as its value; `None` for anything else.
#[inline]
fn small_integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    let mut magnitude = 0i64;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude * 10 + i64::from(digit - b'0');
    }
    Some(if negative { -magnitude } else { magnitude })
}

/// [`parse_number`] of what is not a small integer.
fn parse_number_text(bytes: &[u8]) -> Option<Number> {
    let digits = |from: usize| {
        bytes[from.min(bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    };
    let mut i = usize::from(bytes.first() == Some(&b'-'));
    let whole = digits(i);
    if whole == 0 {
        return None;
    }
    i += whole;
    let mut integer = true;
    if bytes.get(i) == Some(&b'.') {
        let fraction = digits(i + 1);
        if fraction == 0 {
            return None;
        }
        i += 1 + fraction;
        integer = false;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exponent = digits(i);
        if exponent == 0 {
            return None;
        }
        i += exponent;
        integer = false;
    }
    if i != bytes.len() {
        return None;
    }
    // Only ASCII digits, signs, '.', 'e' were accepted: valid UTF-8.
    let text = std::str::from_utf8(bytes).ok()?;
    if integer && let Ok(n) = text.parse::<i128>() {
        return Some(Number::Int(n));
    }
    let x: f64 = text.parse().ok()?;
    x.is_finite().then_some(Number::Float(x))
}
