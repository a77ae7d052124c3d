//! The two Prometheus exposition formats `/metrics` speaks: OpenMetrics 1.0 (what
//! `prometheus-client` writes) when the scraper's `Accept` asks for it, else the classic text
//! format 0.0.4, which every Prometheus and `promtool` reads. The classic text is derived from the
//! OpenMetrics text line by line: the two differ only in the type lines, counter family names,
//! `info` and `unknown`, `# UNIT` and `# EOF`.

/// Which format to answer in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Classic,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header value prefers: OpenMetrics when it is acceptable and
    /// weighted at least as high as the classic text (Prometheus sends
    /// `application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,…`).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Classic;
        };
        let mut open = None::<f32>;
        let mut classic = None::<f32>;
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.trim().parse().unwrap_or(0.0),
                        "version" => version = Some(v.trim().to_owned()),
                        _ => {}
                    }
                }
            }
            let slot = match media.as_str() {
                // 1.0.0 is what we write; no version means any.
                "application/openmetrics-text"
                    if version.as_deref().is_none_or(|v| v == "1.0.0") =>
                {
                    &mut open
                }
                "text/plain" | "*/*" | "text/*" => &mut classic,
                _ => continue,
            };
            *slot = Some(slot.map_or(q, |old: f32| old.max(q)));
        }
        match (open, classic) {
            (Some(o), c) if o > 0.0 && o >= c.unwrap_or(0.0) => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The classic text format of `open` (an OpenMetrics exposition without exemplars).
pub fn classic(open: &str) -> String {
    let mut out = String::with_capacity(open.len());
    // Family names are renamed in the classic format (`x` counter → `x_total`, `x` info →
    // `x_info`): a HELP line comes before its TYPE line, so it is held until the type is known.
    let mut help: Option<(&str, &str)> = None;
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "histogram" | "summary" => ("", kind),
                _ => ("", "untyped"),
            };
            if let Some((help_name, text)) = help.take()
                && help_name == name
            {
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // Samples are the same in both formats, but a counter's `_created` is OpenMetrics only.
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        if line[..name_end].ends_with("_created") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_gets_openmetrics_and_anything_else_the_classic_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text")),
            Format::OpenMetrics
        );
        assert_eq!(Format::negotiate(None), Format::Classic);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Classic);
        assert_eq!(
            Format::negotiate(Some("text/plain;version=0.0.4")),
            Format::Classic
        );
        // Only an OpenMetrics version we do not write: classic.
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=0.0.1,text/plain;q=0.5"
            )),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("text/plain, application/openmetrics-text;q=0.5")),
            Format::Classic
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text;q=0")),
            Format::Classic
        );
    }

    #[test]
    fn the_classic_text_renames_counters_and_infos_and_drops_eof() {
        let open = "# HELP t_requests Requests.\n# TYPE t_requests counter\nt_requests_total{a=\"1\"} 3\nt_requests_created{a=\"1\"} 1.5\n\
            # HELP t_build Build.\n# TYPE t_build info\nt_build_info{version=\"1\"} 1\n\
            # HELP t_up Up.\n# TYPE t_up gauge\n# UNIT t_up seconds\nt_up 2.0\n\
            # HELP t_x X.\n# TYPE t_x unknown\nt_x 1\n\
            # HELP t_d D.\n# TYPE t_d histogram\nt_d_sum 1.0\nt_d_count 1\nt_d_bucket{le=\"+Inf\"} 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP t_requests_total Requests.\n# TYPE t_requests_total counter\nt_requests_total{a=\"1\"} 3\n\
             # HELP t_build_info Build.\n# TYPE t_build_info gauge\nt_build_info{version=\"1\"} 1\n\
             # HELP t_up Up.\n# TYPE t_up gauge\nt_up 2.0\n\
             # HELP t_x X.\n# TYPE t_x untyped\nt_x 1\n\
             # HELP t_d D.\n# TYPE t_d histogram\nt_d_sum 1.0\nt_d_count 1\nt_d_bucket{le=\"+Inf\"} 1\n"
        );
    }
}
