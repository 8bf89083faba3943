use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::*;
use crate::batch::Header;

fn header(key: &str, value: &str) -> Header {
    Header {
        key: key.to_string(),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// The verdict of `filter` on a message.
fn verdict(filter: &str, key: &str, headers: &[(&str, &str)], value: &str) -> Verdict {
    let headers: Vec<Header> = headers.iter().map(|(k, v)| header(k, v)).collect();
    Filter::parse(filter)
        .unwrap_or_else(|e| panic!("{filter}: {e}"))
        .evaluate(Some(key.as_bytes()), &headers, value.as_bytes())
}

fn matches(filter: &str, key: &str, headers: &[(&str, &str)], value: &str) -> bool {
    verdict(filter, key, headers, value) == Verdict::Match
}

fn error(filter: &str) -> FilterError {
    match Filter::parse(filter) {
        Ok(parsed) => panic!("{filter:?} parsed as {parsed:?}"),
        Err(error) => error,
    }
}

#[test]
fn the_examples_of_the_docs() {
    let order = [("type", "order"), ("region", "eu")];
    let filter = r#"header.type == "order" && json.amount >= 100 && !exists(header.test)"#;
    assert!(matches(filter, "", &order, r#"{"amount": 100}"#));
    assert!(matches(filter, "", &order, r#"{"amount": 250.5}"#));
    assert!(!matches(filter, "", &order, r#"{"amount": 99.99}"#));
    assert!(!matches(
        filter,
        "",
        &[("type", "order"), ("test", "")],
        r#"{"amount": 100}"#
    ));
    assert!(!matches(
        filter,
        "",
        &[("type", "refund")],
        r#"{"amount": 100}"#
    ));
    assert!(matches(r#"key ^= "eu-""#, "eu-42", &[], ""));
    assert!(!matches(r#"key ^= "eu-""#, "us-42", &[], ""));
    assert!(matches(r#"header.region in ("eu","us")"#, "", &order, ""));
    assert!(!matches(r#"header.region in ("us", "ap")"#, "", &order, ""));
    assert!(matches(
        r#"json.items[1].sku == "A-2""#,
        "",
        &[],
        r#"{"items": [{"sku": "A-1"}, {"sku": "A-2"}]}"#
    ));
    assert!(matches(
        r#"header["content type"] == "text/plain""#,
        "",
        &[("content type", "text/plain")],
        ""
    ));
}

#[test]
fn every_operator_on_keys_and_headers() {
    let h = [("n", "42"), ("s", "beta"), ("f", "2.5"), ("t", "true")];
    for (filter, expected) in [
        (r#"header.s == "beta""#, true),
        (r#"header.s != "beta""#, false),
        (r#"header.s != "alpha""#, true),
        (r#"header.s ^= "be""#, true),
        (r#"header.s ^= "et""#, false),
        (r#"header.s < "c""#, true),
        (r#"header.s <= "beta""#, true),
        (r#"header.s > "beta""#, false),
        (r#"header.s >= "alpha""#, true),
        ("header.n == 42", true),
        ("header.n == 42.0", true),
        ("header.n < 100", true),
        ("header.n <= 42", true),
        ("header.n > 41.5", true),
        ("header.n >= 43", false),
        ("header.f > 2", true),
        ("header.f == 25e-1", true),
        // Not a number: no numeric comparison holds, `!=` does.
        ("header.s < 1", false),
        ("header.s >= 1", false),
        ("header.s == 1", false),
        ("header.s != 1", true),
        ("header.t == true", true),
        ("header.t == false", false),
        ("header.n in (1, 2, 42)", true),
        (r#"header.n in ("42")"#, true),
        ("exists(header.n)", true),
        ("exists(header.missing)", false),
        // A missing header equals nothing and compares with nothing.
        (r#"header.missing == "x""#, false),
        (r#"header.missing != "x""#, true),
        (r#"header.missing ^= """#, false),
        (r#"header.missing < "zzz""#, false),
        (r#"header.missing in ("", "x")"#, false),
        (r#"key == "k-1""#, true),
        (r#"key ^= "k-""#, true),
        ("exists(key)", true),
    ] {
        assert_eq!(matches(filter, "k-1", &h, ""), expected, "{filter}");
    }
    // No key: the empty key, which does not exist.
    assert!(matches(r#"key == """#, "", &[], ""));
    assert!(!matches("exists(key)", "", &[], ""));
    // The first header of a name counts.
    assert!(matches(
        r#"header.a == "1""#,
        "",
        &[("a", "1"), ("a", "2")],
        ""
    ));
    // Header names compare exactly.
    assert!(!matches(r#"header.A == "1""#, "", &[("a", "1")], ""));
}

#[test]
fn every_operator_on_json_fields() {
    let value = r#"{"id": 9007199254740993, "price": 19.5, "name": "widget", "tags": ["a", "b"],
        "ok": true, "none": null, "nested": {"deep": {"x": -3}}, "a.b": 1}"#;
    for (filter, expected) in [
        ("json.id == 9007199254740993", true),
        // Integers compare exactly, past f64's 2^53.
        ("json.id == 9007199254740992", false),
        ("json.price > 19", true),
        ("json.price <= 19.5", true),
        ("json.price < 19.5", false),
        (r#"json.name == "widget""#, true),
        (r#"json.name ^= "wid""#, true),
        (r#"json.name > "w""#, true),
        (r#"json.tags[1] == "b""#, true),
        ("exists(json.tags[2])", false),
        ("json.ok == true", true),
        ("json.ok != false", true),
        ("json.none == null", true),
        ("exists(json.none)", true),
        ("exists(json.absent)", false),
        ("json.nested.deep.x == -3", true),
        ("json.nested.deep.x < -2.5", true),
        (r#"json["a.b"] == 1"#, true),
        // Types that differ are never equal nor ordered.
        (r#"json.price == "19.5""#, false),
        ("json.name < 5", false),
        (r#"json.tags ^= "a""#, false),
        ("json.tags.x == 1", false),
        ("json.name[0] == 1", false),
        ("json.price in (1, 19.5)", true),
        ("exists(json)", true),
    ] {
        assert_eq!(matches(filter, "", &[], value), expected, "{filter}");
    }
    assert!(matches("json == 5", "", &[], "5"));
    assert!(matches(r#"json == "s""#, "", &[], r#""s""#));
}

#[test]
fn a_json_field_on_a_value_that_is_not_json_does_not_match() {
    for value in ["", "not json", "{\"a\": 1", "\u{0}\u{1}binary"] {
        assert_eq!(verdict("json.a == 1", "", &[], value), Verdict::NotJson);
        // Whatever the rest says, once evaluation reaches the json field.
        assert_eq!(verdict("!(json.a == 1)", "", &[], value), Verdict::NotJson);
        assert_eq!(verdict("exists(json.a)", "", &[], value), Verdict::NotJson);
    }
    // JSON over the size limit is not parsed: it does not match either.
    let mut big = String::from(r#"{"a": 1, "pad": ""#);
    big.push_str(&"x".repeat(FILTER_JSON_VALUE_BYTES_MAX));
    big.push_str(r#""}"#);
    assert_eq!(verdict("json.a == 1", "", &[], &big), Verdict::NotJson);
    let fits = format!(r#"{{"a": 1, "pad": "{}"}}"#, "x".repeat(1000));
    assert_eq!(verdict("json.a == 1", "", &[], &fits), Verdict::Match);
    // Not reached: the header decided.
    assert_eq!(
        verdict(r#"header.t == "x" || json.a == 1"#, "", &[("t", "x")], "no"),
        Verdict::Match
    );
    assert_eq!(
        verdict(r#"header.t == "y" && json.a == 1"#, "", &[("t", "x")], "no"),
        Verdict::Skip
    );
    assert!(
        Filter::parse("json.a == 1 || key == \"x\"")
            .unwrap()
            .needs_json()
    );
    assert!(!Filter::parse("key == \"x\"").unwrap().needs_json());
}

#[test]
fn precedence_not_then_and_then_or() {
    // a || b && c is a || (b && c).
    let f = Filter::parse(r#"key == "a" || key == "b" && header.h == "1""#).unwrap();
    assert!(matches!(f.expr(), Expr::Or(items) if matches!(items[1], Expr::And(_))));
    assert!(matches(
        r#"key == "a" || key == "b" && header.h == "1""#,
        "a",
        &[],
        ""
    ));
    assert!(!matches(
        r#"(key == "a" || key == "b") && header.h == "1""#,
        "a",
        &[],
        ""
    ));
    // !a && b is (!a) && b.
    assert!(matches(
        r#"!key == "a" && header.h == "1""#,
        "b",
        &[("h", "1")],
        ""
    ));
    assert!(matches(r#"!(key == "a" && key == "b")"#, "a", &[], ""));
    assert!(matches(r#"!!key == "a""#, "a", &[], ""));
    // Spaces and line breaks anywhere between tokens, none needed.
    assert!(matches("key==\"a\"&&!exists(header.x)", "a", &[], ""));
    assert!(matches(
        "\n\t( key ==  \"a\" )\r\n|| key == \"b\"  ",
        "b",
        &[],
        ""
    ));
}

#[test]
fn strings_and_numbers_read_as_documented() {
    assert!(matches(
        r#"key == "q\"\\\/\n\t\r\u00e9""#,
        "q\"\\/\n\t\ré",
        &[],
        ""
    ));
    assert!(matches(r#"key == "日本""#, "日本", &[], ""));
    for (text, number) in [
        ("0", Number::Int(0)),
        ("-17", Number::Int(-17)),
        ("18446744073709551615", Number::Int(u64::MAX as i128)),
        ("1.5", Number::Float(1.5)),
        ("-2e3", Number::Float(-2000.0)),
        ("2E+2", Number::Float(200.0)),
        (
            "100000000000000000000000000000000000000000",
            Number::Float(1e41),
        ),
    ] {
        assert_eq!(parse::parse_number(text.as_bytes()), Some(number), "{text}");
    }
    for text in [
        "", "-", "1.", ".5", "1e", "1e+", "+1", "1x", "0x10", "1e999", " 1",
    ] {
        assert_eq!(parse::parse_number(text.as_bytes()), None, "{text:?}");
    }
}

#[test]
fn bad_filters_name_the_position_and_what_was_expected() {
    for (text, position, expected) in [
        ("", 0, "a condition"),
        ("   ", 3, "a condition"),
        ("key", 3, "an operator"),
        ("key = \"a\"", 4, "an operator"),
        ("key == ", 7, "a value"),
        ("key == x", 7, "a value"),
        ("key == \"a\" &&", 13, "a condition"),
        ("key == \"a\" and key == \"b\"", 11, "`&&`, `||` or the end"),
        ("(key == \"a\"", 11, "`&&`, `||` or `)`"),
        ("key == \"a\")", 10, "`&&`, `||` or the end"),
        ("key == \"abc", 11, "the closing `\"`"),
        ("key == \"a\\q\"", 9, "an escape"),
        ("key == \"\\u12\"", 8, "`\\u` and 4 hex digits"),
        ("key == \"\\ud800\"", 8, "not a surrogate"),
        ("header == \"a\"", 6, "`.NAME` or `[\"NAME\"]`"),
        ("header. == \"a\"", 7, "a name"),
        ("header[x] == 1", 7, "a \"header name\""),
        ("json.a[ == 1", 8, "an array index or a \"member name\""),
        ("json.a[0 == 1", 9, "`]`"),
        (
            "json.a[99999999999999999999999] == 1",
            7,
            "an array index that fits",
        ),
        ("value == 1", 0, "a condition"),
        ("exists(key", 10, "`)` after the field"),
        ("exists key", 0, "a condition"),
        ("key ^= 1", 7, "a \"string\" after ^="),
        ("key < true", 6, "a number or a \"string\" after <"),
        ("key in \"a\"", 7, "`(`"),
        ("key in ()", 8, "a value"),
        ("key in (\"a\" \"b\")", 12, "`,` or `)`"),
        ("key == 1.", 7, "a number"),
        ("key == 1e999", 7, "finite"),
        ("key == --1", 7, "a number"),
        ("!", 1, "a condition"),
        ("key == \"é\" || é", 15, "a condition"),
    ] {
        let e = error(text);
        assert_eq!(e.position, position, "{text:?}: {e}");
        assert!(
            e.expected.contains(expected),
            "{text:?}: {e} (wanted {expected})"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("at byte {position}: expected "))
        );
    }
    assert_eq!(error("key").found, "the end of the filter");
    assert_eq!(error("key = \"a\"").found, "`= \"a\"`");
    assert!(
        error("key == \"a\" || header.b ~= 1")
            .found
            .starts_with("`~= 1`")
    );
}

#[test]
fn limits_refuse_long_deep_and_large_filters() {
    let long = format!("key == \"{}\"", "a".repeat(FILTER_BYTES_MAX));
    let e = error(&long);
    assert_eq!(e.position, FILTER_BYTES_MAX);
    assert!(e.expected.contains("at most 4096 bytes"), "{e}");
    // Exactly the limit is fine.
    let fits = format!("key == \"{}\"", "a".repeat(FILTER_BYTES_MAX - 9));
    assert_eq!(fits.len(), FILTER_BYTES_MAX);
    Filter::parse(&fits).unwrap();

    let deep = format!("{}key == 1{}", "(".repeat(40), ")".repeat(40));
    let e = error(&deep);
    assert_eq!(e.position, FILTER_DEPTH_MAX + 1);
    assert!(e.expected.contains("less nesting"), "{e}");
    let nots = format!("{}key == 1", "!".repeat(FILTER_DEPTH_MAX + 1));
    assert!(error(&nots).expected.contains("less nesting"));
    Filter::parse(&format!("{}key == 1", "!".repeat(FILTER_DEPTH_MAX))).unwrap();

    let many = format!("key in ({})", vec!["1"; FILTER_NODES_MAX + 1].join(","));
    assert!(error(&many).expected.contains("a shorter filter"));
    let ors = vec!["key==1"; FILTER_NODES_MAX].join("||");
    assert!(error(&ors).expected.contains("a shorter filter"));
    // A run of `||` counts one node, as the README says: one condition fewer fits.
    Filter::parse(&vec!["key==1"; FILTER_NODES_MAX - 1].join("||")).unwrap();
}

#[test]
fn display_is_canonical_and_parses_back() {
    for (text, canonical) in [
        (
            r#"header.type=="order"&&json.amount>=100&&!exists(header.test)"#,
            r#"header.type == "order" && json.amount >= 100 && !exists(header.test)"#,
        ),
        (
            r#"(key^="a"||key^="b")&&json.x<1.5"#,
            r#"(key ^= "a" || key ^= "b") && json.x < 1.5e0"#,
        ),
        (
            r#"header["a b"] in ("x",2,true,null)"#,
            r#"header["a b"] in ("x", 2, true, null)"#,
        ),
        (
            r#"json["a.b"][3].c != false"#,
            r#"json["a.b"][3].c != false"#,
        ),
        (r#"!(key=="a"||key=="b")"#, r#"!(key == "a" || key == "b")"#),
        (
            r#"(key=="a"||key=="b")||key=="c""#,
            r#"(key == "a" || key == "b") || key == "c""#,
        ),
    ] {
        let filter = Filter::parse(text).unwrap();
        assert_eq!(filter.to_string(), canonical);
        assert_eq!(Filter::parse(canonical).unwrap(), filter);
    }
}

// ---- property tests --------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z][a-z0-9_-]{0,6}",
        1 => "[ -~]{0,6}",
        1 => "\\PC{0,4}",
    ]
}

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        1 => Just(Field::Key),
        3 => name().prop_map(Field::Header),
        3 => prop::collection::vec(
            prop_oneof![name().prop_map(Step::Name), (0usize..5).prop_map(Step::Index)],
            0..4
        )
        .prop_map(Field::Json),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => "\\PC{0,8}".prop_map(Value::Str),
        1 => "[\"\\\\\n\t\r\u{1}\u{7f}]{0,4}".prop_map(Value::Str),
        3 => any::<i64>().prop_map(|n| Value::Num(Number::Int(n.into()))),
        2 => any::<f64>()
            .prop_filter("finite", |x| x.is_finite())
            .prop_map(|x| Value::Num(Number::Float(x))),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => Just(Value::Null),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop::sample::select(vec![
        Op::Eq,
        Op::Ne,
        Op::Prefix,
        Op::Lt,
        Op::Le,
        Op::Gt,
        Op::Ge,
    ])
}

fn leaf() -> impl Strategy<Value = Expr> {
    prop_oneof![
        1 => field().prop_map(Expr::Exists),
        4 => (field(), op(), value()).prop_map(|(field, op, value)| {
            // The parser's rules: ^= takes a string, the orderings a string or a number.
            let value = match (op, value) {
                (Op::Prefix, Value::Str(s)) => Value::Str(s),
                (Op::Prefix, _) => Value::Str("p".into()),
                (Op::Lt | Op::Le | Op::Gt | Op::Ge, Value::Bool(_) | Value::Null) => {
                    Value::Num(Number::Int(7))
                }
                (_, value) => value,
            };
            Expr::Compare { field, op, value }
        }),
        1 => (field(), prop::collection::vec(value(), 1..4))
            .prop_map(|(field, values)| Expr::In { field, values }),
    ]
}

fn expr() -> impl Strategy<Value = Expr> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::Or),
            prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
            inner.prop_map(|e| Expr::Not(Box::new(e))),
        ]
    })
}

/// A message for the evaluator: a few headers whose names the generated filters may
/// use, and a value that is JSON or not.
fn message() -> impl Strategy<Value = (Vec<u8>, Vec<Header>, Vec<u8>)> {
    let header = (
        prop_oneof![name(), Just("a".to_string())],
        prop_oneof!["\\PC{0,6}", "-?[0-9]{1,4}(\\.[0-9]{1,2})?"],
    )
        .prop_map(|(k, v)| header(&k, &v));
    let value = prop_oneof![
        Just(br#"{"a": 1, "b": [1, "x", null], "c": {"d": "eu-1"}}"#.to_vec()),
        Just(b"-12.5".to_vec()),
        Just(b"not json".to_vec()),
        prop::collection::vec(any::<u8>(), 0..16),
    ];
    (
        prop::collection::vec(any::<u8>(), 0..6),
        prop::collection::vec(header, 0..4),
        value,
    )
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(15),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Integers of any length, with leading zeros and signs, parse to what the text
    /// says, whether through the short digits' path (up to 18 digits) or the text's.
    #[test]
    fn integers_parse_exactly(n in any::<i64>(), zeros in 0usize..4, wide in any::<u64>()) {
        let text = if n < 0 {
            format!("-{}{}", "0".repeat(zeros), n.unsigned_abs())
        } else {
            format!("{}{n}", "0".repeat(zeros))
        };
        prop_assert_eq!(parse::parse_number(text.as_bytes()), Some(Number::Int(i128::from(n))));
        let text = format!("{wide}{}", wide % 1_000_000_000_000_000_000);
        prop_assert_eq!(
            parse::parse_number(text.as_bytes()),
            Some(Number::Int(text.parse::<i128>().unwrap()))
        );
    }

    /// Any tree prints to text that parses back to the same tree.
    #[test]
    fn printed_filters_parse_back_the_same(expr in expr()) {
        let text = expr.to_string();
        let parsed = Filter::parse(&text).map_err(|e| format!("{text}: {e}"));
        prop_assert_eq!(parsed.map(|f| f.expr), Ok(expr), "{}", text);
    }

    /// `!` inverts a verdict, `&&` and `||` combine them, unless JSON was needed on a
    /// value that is not JSON.
    #[test]
    fn the_operators_combine_verdicts(
        a in expr(),
        b in expr(),
        (key, headers, value) in message(),
    ) {
        let eval = |e: &Expr| eval::evaluate(e, &key, eval::Headers::Decoded(&headers), &value);
        let (va, vb) = (eval(&a), eval(&b));
        let not = eval(&Expr::Not(Box::new(a.clone())));
        let and = eval(&Expr::And(vec![a.clone(), b.clone()]));
        let or = eval(&Expr::Or(vec![a.clone(), b.clone()]));
        match va {
            Verdict::NotJson => {
                prop_assert_eq!(not, Verdict::NotJson);
                prop_assert_eq!(and, Verdict::NotJson);
                prop_assert_eq!(or, Verdict::NotJson);
            }
            Verdict::Match => {
                prop_assert_eq!(not, Verdict::Skip);
                prop_assert_eq!(and, vb);
                prop_assert_eq!(or, Verdict::Match);
            }
            Verdict::Skip => {
                prop_assert_eq!(not, Verdict::Match);
                prop_assert_eq!(and, Verdict::Skip);
                prop_assert_eq!(or, vb);
            }
        }
    }

    /// A record judged in place in its batch (what reads do) gets the verdict its
    /// decoded form gets, plain or zstd, whatever else the batch holds.
    #[test]
    fn raw_and_decoded_verdicts_agree(
        a in expr(),
        (key, headers, value) in message(),
        before in 0..3usize,
        zstd in any::<bool>(),
    ) {
        use crate::batch::{EncodeOptions, NewRecord, RecordIter, encode_batch};
        let filter = Filter::from_expr(a);
        let record = NewRecord {
            key: (!key.is_empty()).then(|| Bytes::from(key.clone())),
            value: Bytes::from(value.clone()),
            headers: headers.clone(),
            ..NewRecord::default()
        };
        let mut records = vec![NewRecord::value("other"); before];
        records.push(record);
        let options = EncodeOptions {
            now_ms: 1_000,
            default_ttl_ms: None,
            compression: if zstd { crate::Compression::Zstd } else { crate::Compression::None },
            max_message_bytes: 1 << 20,
            priority_levels: 0,
        };
        let batch = Bytes::from(encode_batch(&records, &options).unwrap().bytes);
        let header = crate::batch::BatchHeader::parse(&batch).unwrap();
        let mut iter = RecordIter::new(&batch, &header).unwrap();
        let mut last = None;
        while let Some(view) = iter.next_view() {
            last = Some(view.unwrap());
        }
        let view = last.unwrap();
        let decoded = iter.record(&view).unwrap();
        prop_assert_eq!(view.payload_bytes, decoded.payload_bytes());
        prop_assert_eq!(&decoded.headers, &headers);
        prop_assert_eq!(filter.evaluate_raw(&iter.raw(&view)), filter.evaluate_record(&decoded));
    }

    /// Arbitrary text never panics the parser; an error points inside the text.
    #[test]
    fn any_text_parses_or_fails_in_bounds(text in "\\PC{0,64}|[ -~]{0,64}") {
        match Filter::parse(&text) {
            Ok(filter) => {
                let printed = filter.to_string();
                if printed.len() <= FILTER_BYTES_MAX {
                    prop_assert_eq!(Filter::parse(&printed), Ok(filter));
                }
            }
            Err(e) => prop_assert!(e.position <= text.len(), "{}", e),
        }
    }
}

/// Fuzz findings, each kept as it was found (`canonical_past_the_limit`: its canonical
/// text, with escapes, is longer than the limit).
#[test]
fn fuzz_findings_parse_or_fail_in_bounds() {
    for input in [
        &include_bytes!("regressions/canonical_past_the_limit")[..],
        // The fuzz seed `unclosed`.
        b"((((key == 1",
    ] {
        let text = std::str::from_utf8(input).unwrap();
        match Filter::parse(text) {
            // The canonical text (spaces, escapes) may be longer than the limit.
            Ok(filter) if filter.to_string().len() > FILTER_BYTES_MAX => {}
            Ok(filter) => {
                assert_eq!(Filter::parse(&filter.to_string()), Ok(filter.clone()));
            }
            Err(e) => assert!(e.position <= text.len(), "{e}"),
        }
    }
}

/// A filter that is one header comparison is judged in place without the tree walk
/// (`Filter::evaluate_raw`'s short path): the same verdicts as the tree on decoded
/// records, for every operator and the forms a number takes.
#[test]
fn one_header_comparison_judged_in_place_agrees_with_the_tree() {
    use crate::batch::{EncodeOptions, NewRecord, RecordIter, encode_batch};
    let values: [Option<&[u8]>; 9] = [
        Some(b"7"),
        Some(b"07"),
        Some(b"7.0"),
        Some(b"7e0"),
        Some(b"-7"),
        Some(b"70"),
        Some(b"x"),
        Some(b""),
        None,
    ];
    let records: Vec<NewRecord> = values
        .iter()
        .map(|value| NewRecord {
            headers: value
                .map(|v| Header {
                    key: "h".into(),
                    value: Bytes::copy_from_slice(v),
                })
                .into_iter()
                .collect(),
            ..NewRecord::value("v")
        })
        .collect();
    let options = EncodeOptions {
        now_ms: 1_000,
        default_ttl_ms: None,
        compression: crate::Compression::None,
        max_message_bytes: 1 << 20,
        priority_levels: 0,
    };
    let batch = Bytes::from(encode_batch(&records, &options).unwrap().bytes);
    let header = crate::batch::BatchHeader::parse(&batch).unwrap();
    let mut matched = Vec::new();
    for text in [
        "header.h == 7",
        "header.h != 7",
        "header.h < 8",
        "header.h >= 7",
        "header.h == \"7\"",
        "header.h ^= \"7\"",
        "header.h == true",
    ] {
        let filter = Filter::parse(text).unwrap();
        assert!(filter.header_compare.is_some(), "{text}");
        let mut iter = RecordIter::new(&batch, &header).unwrap();
        let mut hits = 0;
        while let Some(view) = iter.next_view() {
            let view = view.unwrap();
            let raw = filter.evaluate_raw(&iter.raw(&view));
            let decoded = filter.evaluate_record(&iter.record(&view).unwrap());
            assert_eq!(
                raw,
                decoded,
                "{text} on {:?}",
                values[(view.offset) as usize]
            );
            hits += usize::from(raw.matches());
        }
        matched.push(hits);
    }
    // == 7 holds for 7, 07, 7.0, 7e0; != 7 for the other five (a missing header too);
    // < 8 for those four and -7.
    assert_eq!(matched, [4, 5, 5, 5, 1, 4, 0]);
}
