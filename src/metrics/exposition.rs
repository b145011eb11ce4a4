//! The Prometheus text exposition format (version 0.0.4), written by hand: berth exposes a
//! dozen families, which does not warrant a metrics framework. [`parse`] reads the format
//! back strictly, so tests (and `berth` itself) can check what a scrape returns.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The Content-Type of the format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Builds one exposition document, family by family.
#[derive(Debug, Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// A writer with room for `bytes` of text.
    #[must_use]
    pub fn with_capacity(bytes: usize) -> Writer {
        Writer { out: String::with_capacity(bytes) }
    }

    /// Starts a family: its HELP and TYPE lines. Samples of it must follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// A family with a single sample and no labels: a gauge or counter of the process.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// Writes one sample line; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(key);
                self.out.push_str("=\"");
                escape_label_into(&mut self.out, value);
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        write_value(&mut self.out, value);
        self.out.push('\n');
    }

    /// The finished document.
    #[must_use]
    pub fn finish(self) -> String {
        self.out
    }
}

/// Appends `value` escaped as a label value: a scrape of many volumes writes many
/// labels, so nothing is allocated per label.
fn escape_label_into(out: &mut String, value: &str) {
    if !value.contains(['\\', '"', '\n']) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `value` as [`format_value`] formats it.
fn write_value(out: &mut String, value: f64) {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 9.0e15 {
        let _ = write!(out, "{}", value as i64);
    } else {
        out.push_str(&format_value(value));
    }
}

/// Formats a sample value: integers without a fraction, infinities as `+Inf`/`-Inf`.
#[must_use]
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value == f64::INFINITY {
        "+Inf".to_string()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_string()
    } else if value.fract() == 0.0 && value.abs() < 9.0e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// One sample read back from an exposition document.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A line that is not in the text format, with its 1-based number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exposition line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// The family a sample belongs to: histogram samples carry `_bucket`, `_sum`, `_count`.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .find(|base| types.get(*base).is_some_and(|t| t == "histogram"))
}

/// Parses a whole document strictly: every sample must belong to a family declared by a
/// TYPE line before it, names and labels must be well formed, values must be numbers.
pub fn parse(text: &str) -> Result<Vec<Sample>, ParseError> {
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason: String| ParseError { line: i + 1, reason };
        if line.trim().is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    if !valid_name(name) {
                        return Err(err(format!("bad metric name {name:?}")));
                    }
                    if !matches!(kind, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                        return Err(err(format!("unknown type {kind:?}")));
                    }
                    if types.insert(name.to_string(), kind.to_string()).is_some() {
                        return Err(err(format!("family {name} declared twice")));
                    }
                }
                (Some("HELP"), Some(name), _) if !valid_name(name) => {
                    return Err(err(format!("bad metric name {name:?}")));
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(err)?;
        if family_of(&sample.name, &types).is_none() {
            return Err(err(format!("sample {} has no TYPE line before it", sample.name)));
        }
        samples.push(sample);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            let Some(&(start, c)) = chars.peek() else {
                return Err("unterminated label set".into());
            };
            if c == '}' {
                break start;
            }
            if c == ',' {
                chars.next();
                continue;
            }
            let eq = body[start..].find('=').ok_or("label without '='")? + start;
            let key = &body[start..eq];
            if !valid_name(key) || key.contains(':') {
                return Err(format!("bad label name {key:?}"));
            }
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err(format!("label {key} value is not quoted"));
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    None => return Err(format!("label {key} value is unterminated")),
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err(format!("label {key} has a bad escape")),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key} repeated"));
            }
            match chars.peek() {
                Some((_, ',' | '}')) => {}
                None => return Err("unterminated label set".into()),
                Some(_) => return Err(format!("expected ',' or '}}' after label {key}")),
            }
        };
        rest = &body[end + 1..];
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the value".into());
    }
    Ok(Sample { name: name.to_string(), labels, value })
}

/// Finds the value of the sample `name` whose labels include all of `labels`.
#[must_use]
pub fn find(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_text_format_exactly() {
        let mut w = Writer::default();
        w.family("berth_x_total", Kind::Counter, "Things.\nWith \\ newline.");
        w.sample("berth_x_total", &[("method", "A"), ("code", "OK")], 3.0);
        w.sample("berth_x_total", &[("path", "a\"b\\c\nd")], 0.5);
        w.family("berth_up", Kind::Gauge, "Up.");
        w.sample("berth_up", &[], 1.0);
        let golden = "\
# HELP berth_x_total Things.\\nWith \\\\ newline.
# TYPE berth_x_total counter
berth_x_total{method=\"A\",code=\"OK\"} 3
berth_x_total{path=\"a\\\"b\\\\c\\nd\"} 0.5
# HELP berth_up Up.
# TYPE berth_up gauge
berth_up 1
";
        assert_eq!(w.finish(), golden);
    }

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(1073741824.0), "1073741824");
        assert_eq!(format_value(0.005), "0.005");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }

    #[test]
    fn parse_reads_back_what_writer_wrote() {
        let mut w = Writer::default();
        w.family("h_seconds", Kind::Histogram, "H.");
        w.sample("h_seconds_bucket", &[("le", "0.1")], 1.0);
        w.sample("h_seconds_bucket", &[("le", "+Inf")], 2.0);
        w.sample("h_seconds_sum", &[], 0.25);
        w.sample("h_seconds_count", &[], 2.0);
        w.family("g", Kind::Gauge, "G.");
        w.sample("g", &[("v", "x,y=\"z\"}")], 7.0);
        let samples = parse(&w.finish()).expect("parses");
        assert_eq!(samples.len(), 5);
        assert_eq!(find(&samples, "h_seconds_bucket", &[("le", "+Inf")]), Some(2.0));
        assert_eq!(find(&samples, "g", &[("v", "x,y=\"z\"}")]), Some(7.0));
        assert_eq!(find(&samples, "g", &[("v", "other")]), None);
    }

    #[test]
    fn parse_rejects_malformed_documents() {
        let cases = [
            ("x 1", "no TYPE line"),
            ("# TYPE x gauge\nx{a=1} 1", "not quoted"),
            ("# TYPE x gauge\nx{a=\"1\" 1", "expected ','"),
            ("# TYPE x gauge\nx{a=\"1\"", "unterminated"),
            ("# TYPE x gauge\nx one", "bad value"),
            ("# TYPE x gauge\n9x 1", "bad metric name"),
            ("# TYPE x gauge\n# TYPE x gauge", "declared twice"),
            ("# TYPE x gauge\nx{a=\"1\",a=\"2\"} 1", "repeated"),
            ("# TYPE x gauge\nx 1 2 3", "trailing"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
