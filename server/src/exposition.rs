//! The two text formats `/metrics` answers in, and the choice between them by the
//! request's `Accept` header.
//!
//! prometheus-client writes OpenMetrics 1.0.0. In it a counter's family is named
//! without the `_total` its samples carry (`# TYPE tidelog_publish_messages counter`,
//! then `tidelog_publish_messages_total 3`), and the text ends with `# EOF`. A parser
//! of the classic Prometheus text format (0.0.4: `promtool check metrics`, older
//! agents, anything that reads `text/plain`) takes those samples for an untyped
//! metric without help. So the scraper that asks for OpenMetrics gets it (Prometheus
//! does, in its `Accept` header), and everyone else gets the classic format,
//! converted by [`to_classic`]: what the Go client library (client_golang) does too.
//!
//! | OpenMetrics | classic 0.0.4 |
//! |---|---|
//! | `# HELP x` / `# TYPE x counter` | `# HELP x_total` / `# TYPE x_total counter` |
//! | `# TYPE x info` (sample `x_info`) | `# TYPE x_info gauge` |
//! | `# TYPE x unknown` | `# TYPE x untyped` |
//! | `# UNIT ..`, `# EOF`, a counter's `x_created` samples | dropped |
//! | gauge, histogram, summary, every sample line | unchanged |
//!
//! The broker registers no exemplars, and its help texts hold no `\`, `"` or line
//! break (which the two formats escape differently): the conversion need not handle
//! them.

use std::collections::HashMap;
use std::fmt::Write as _;

/// A text format of the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0, as prometheus-client writes it.
    OpenMetrics,
    /// The classic Prometheus text format, version 0.0.4.
    Classic,
}

impl Format {
    /// The value of the response's `Content-Type` header.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// The format to answer a request whose `Accept` header is `accept` (several
    /// headers joined with commas; `None` when there is none).
    ///
    /// The media range with the highest `q` that names a format wins, the first
    /// listed among equals: `application/openmetrics-text` (without a version or
    /// with version 1.0.0) is OpenMetrics; `text/plain`, `text/*` and `*/*` are the
    /// classic format. Anything else, or nothing, is the classic format too.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let mut best: Option<(f32, Format)> = None;
        for range in accept.unwrap_or("").split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media_type = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut quality = 1.0_f32;
            let mut version = None;
            for parameter in parts {
                let Some((key, value)) = parameter.split_once('=') else {
                    continue;
                };
                let value = value.trim().trim_matches('"');
                match key.trim().to_ascii_lowercase().as_str() {
                    // An unreadable weight counts as "not acceptable".
                    "q" => quality = value.parse().unwrap_or(0.0),
                    "version" => version = Some(value.to_string()),
                    _ => {}
                }
            }
            let format = match media_type.as_str() {
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    Format::OpenMetrics
                }
                "text/plain" | "text/*" | "*/*" => Format::Classic,
                _ => continue,
            };
            if quality > 0.0 && best.is_none_or(|(q, _)| quality > q) {
                best = Some((quality, format));
            }
        }
        best.map_or(Format::Classic, |(_, format)| format)
    }
}

/// The classic (0.0.4) text of an OpenMetrics text written by prometheus-client; see
/// the module docs for the rules.
pub fn to_classic(openmetrics: &str) -> String {
    let types: HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let classic_name = |family: &str| -> String {
        match types.get(family) {
            Some(&"counter") => format!("{family}_total"),
            Some(&"info") => format!("{family}_info"),
            _ => family.to_string(),
        }
    };
    let mut out = String::with_capacity(openmetrics.len() + 16 * types.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (family, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let _ = writeln!(out, "# HELP {} {help}", classic_name(family));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let kind = match kind {
                "info" => "gauge",
                "unknown" => "untyped",
                other => other,
            };
            let _ = writeln!(out, "# TYPE {} {kind}", classic_name(family));
        } else if is_counter_created(line, &types) {
            continue;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// True for a `<counter>_created` sample, which the classic format does not have.
fn is_counter_created(line: &str, types: &HashMap<&str, &str>) -> bool {
    if line.starts_with('#') {
        return false;
    }
    let name = line.split(['{', ' ']).next().unwrap_or("");
    name.strip_suffix("_created")
        .is_some_and(|family| types.get(family) == Some(&"counter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.x sends.
    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation_follows_the_scrapers_preference() {
        use Format::{Classic, OpenMetrics};
        for (accept, expected) in [
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("Application/OpenMetrics-Text; Version=\"1.0.0\""),
                OpenMetrics,
            ),
            // curl, a browser, promtool pipelines, old agents.
            (None, Classic),
            (Some("*/*"), Classic),
            (Some("text/plain;version=0.0.4"), Classic),
            (Some("text/html,application/xhtml+xml,*/*;q=0.8"), Classic),
            // Weights decide, then the order.
            (
                Some("text/plain;q=0.9, application/openmetrics-text"),
                OpenMetrics,
            ),
            (
                Some("application/openmetrics-text;q=0.2, text/plain"),
                Classic,
            ),
            (Some("text/plain, application/openmetrics-text"), Classic),
            (Some("application/openmetrics-text;q=0, */*"), Classic),
            (
                Some("application/openmetrics-text;q=oops, */*;q=0.1"),
                Classic,
            ),
            // A version we do not write.
            (Some("application/openmetrics-text;version=0.0.1"), Classic),
            (Some("application/json"), Classic),
        ] {
            assert_eq!(Format::negotiate(accept), expected, "Accept: {accept:?}");
        }
    }

    #[test]
    fn classic_text_names_counter_families_with_total() {
        let openmetrics = "\
# HELP app_requests Requests.
# TYPE app_requests counter
app_requests_total{code=\"200\"} 3
app_requests_created{code=\"200\"} 1700000000.0
# HELP app_open Open things.
# TYPE app_open gauge
app_open 2
# HELP app_latency_seconds Latency.
# TYPE app_latency_seconds histogram
# UNIT app_latency_seconds seconds
app_latency_seconds_sum 0.5
app_latency_seconds_count 1
app_latency_seconds_bucket{le=\"+Inf\"} 1
# HELP app_build Build.
# TYPE app_build info
app_build_info{version=\"1\"} 1
# HELP app_mystery Unknown.
# TYPE app_mystery unknown
app_mystery 7
# EOF
";
        let expected = "\
# HELP app_requests_total Requests.
# TYPE app_requests_total counter
app_requests_total{code=\"200\"} 3
# HELP app_open Open things.
# TYPE app_open gauge
app_open 2
# HELP app_latency_seconds Latency.
# TYPE app_latency_seconds histogram
app_latency_seconds_sum 0.5
app_latency_seconds_count 1
app_latency_seconds_bucket{le=\"+Inf\"} 1
# HELP app_build_info Build.
# TYPE app_build_info gauge
app_build_info{version=\"1\"} 1
# HELP app_mystery Unknown.
# TYPE app_mystery untyped
app_mystery 7
";
        assert_eq!(to_classic(openmetrics), expected);
    }
}
