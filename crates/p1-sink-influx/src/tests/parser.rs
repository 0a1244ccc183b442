//! A small line-protocol reader, written from the InfluxDB 2.x reference independently of the
//! writer: the property tests write points and read them back with it.

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Float(f64),
    Integer(i64),
    String(String),
    Boolean(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Point {
    pub(crate) measurement: String,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) fields: Vec<(String, Value)>,
    pub(crate) timestamp: Option<i128>,
}

struct Cursor<'a> {
    chars: Vec<char>,
    at: usize,
    line: &'a str,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at char {} of {:?}", self.at, self.line)
    }

    /// Reads up to an unescaped char of `stop`. A backslash escapes a char of `escapable` or
    /// another backslash; before anything else it is a literal backslash.
    fn token(&mut self, escapable: &[char], stop: &[char]) -> String {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if c == '\\' {
                match self.chars.get(self.at + 1) {
                    Some(&n) if n == '\\' || escapable.contains(&n) => {
                        out.push(n);
                        self.at += 2;
                    }
                    _ => {
                        out.push('\\');
                        self.at += 1;
                    }
                }
            } else if stop.contains(&c) {
                break;
            } else {
                out.push(c);
                self.at += 1;
            }
        }
        out
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {c:?}")))
        }
    }
}

const KEY: [char; 3] = [',', '=', ' '];

/// Reads one line (without its line end).
pub(crate) fn parse(line: &str) -> Result<Point, String> {
    let mut c = Cursor {
        chars: line.chars().collect(),
        at: 0,
        line,
    };
    if c.peek() == Some('#') {
        return Err("a comment".to_owned());
    }
    let measurement = c.token(&[',', ' '], &[',', ' ']);
    if measurement.is_empty() {
        return Err(c.error("empty measurement"));
    }
    let mut tags = Vec::new();
    while c.peek() == Some(',') {
        c.at += 1;
        let key = c.token(&KEY, &KEY);
        c.expect('=')?;
        let value = c.token(&KEY, &KEY);
        if key.is_empty() || value.is_empty() {
            return Err(c.error("empty tag key or value"));
        }
        tags.push((key, value));
    }
    c.expect(' ')?;
    let mut fields = Vec::new();
    loop {
        let key = c.token(&KEY, &KEY);
        c.expect('=')?;
        if key.is_empty() {
            return Err(c.error("empty field key"));
        }
        let value = if c.peek() == Some('"') {
            c.at += 1;
            let mut s = String::new();
            loop {
                match c.peek() {
                    None => return Err(c.error("unterminated string")),
                    Some('"') => {
                        c.at += 1;
                        break;
                    }
                    Some('\\') => match c.chars.get(c.at + 1) {
                        Some(&n @ ('"' | '\\')) => {
                            s.push(n);
                            c.at += 2;
                        }
                        _ => {
                            s.push('\\');
                            c.at += 1;
                        }
                    },
                    Some(ch) => {
                        s.push(ch);
                        c.at += 1;
                    }
                }
            }
            Value::String(s)
        } else {
            let raw = c.token(&[], &[',', ' ']);
            match raw.as_str() {
                "t" | "T" | "true" | "True" | "TRUE" => Value::Boolean(true),
                "f" | "F" | "false" | "False" | "FALSE" => Value::Boolean(false),
                _ if raw.ends_with('i') => Value::Integer(
                    raw[..raw.len() - 1]
                        .parse()
                        .map_err(|e| c.error(&format!("integer {raw:?}: {e}")))?,
                ),
                _ => {
                    if !raw
                        .chars()
                        .all(|ch| ch.is_ascii_digit() || matches!(ch, '-' | '.' | 'e' | 'E' | '+'))
                    {
                        return Err(c.error(&format!("not a number: {raw:?}")));
                    }
                    Value::Float(
                        raw.parse()
                            .map_err(|e| c.error(&format!("float {raw:?}: {e}")))?,
                    )
                }
            }
        };
        fields.push((key, value));
        match c.peek() {
            Some(',') => c.at += 1,
            _ => break,
        }
    }
    let timestamp = match c.peek() {
        None => None,
        Some(' ') => {
            c.at += 1;
            let raw = c.token(&[], &[' ']);
            Some(
                raw.parse()
                    .map_err(|e| c.error(&format!("timestamp {raw:?}: {e}")))?,
            )
        }
        Some(_) => return Err(c.error("expected a space or the end")),
    };
    if c.peek().is_some() {
        return Err(c.error("trailing characters"));
    }
    Ok(Point {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

#[test]
fn the_parser_reads_the_reference_examples() {
    // From the InfluxDB 2.x line-protocol reference ("Special characters").
    let p = parse(r#"my\ Measurement fieldKey="string value""#).expect("parse");
    assert_eq!(p.measurement, "my Measurement");
    let p = parse(r#"myMeasurement,tag\ Key1=tag\ Value1,tag\ Key2=tag\ Value2 fieldKey=100"#)
        .expect("parse");
    assert_eq!(
        p.tags,
        [
            ("tag Key1".to_owned(), "tag Value1".to_owned()),
            ("tag Key2".to_owned(), "tag Value2".to_owned())
        ]
    );
    assert_eq!(p.fields, [("fieldKey".to_owned(), Value::Float(100.0))]);
    let p = parse(r#"myMeasurement fieldKey="\"string\" within a string""#).expect("parse");
    assert_eq!(
        p.fields,
        [(
            "fieldKey".to_owned(),
            Value::String(r#""string" within a string"#.to_owned())
        )]
    );
    // "With two contiguous backslashes, the first is interpreted as an escape character."
    let p = parse(r#"m,tag=a\\b f="\\" 1556813561098000000"#).expect("parse");
    assert_eq!(p.tags[0].1, r"a\b");
    assert_eq!(p.fields[0].1, Value::String(r"\".to_owned()));
    assert_eq!(p.timestamp, Some(1_556_813_561_098_000_000));
    assert!(parse("m f=1 x").is_err());
    assert!(parse("m,t f=1").is_err());
    assert!(parse("# comment").is_err());
}
