//! The CLI edge: an error drawn once, with its causes and, for the host's diagnostics, the lines
//! of the file at fault and its help (see [`crate::diagnostic`]).

use std::error::Error as StdError;
use std::fmt;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, SourceCode};

use crate::diagnostic::Hinted;

/// The diagnostic behind `error`, when it is one of the host's: the errors that carry help or
/// a snippet. (An `anyhow::Error` keeps its concrete type, not the `Diagnostic` trait, so each
/// kind is looked for by name.)
pub fn find<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a dyn Diagnostic> {
    macro_rules! try_as {
        ($($t:ty),* $(,)?) => {
            $(if let Some(d) = error.downcast_ref::<$t>() {
                return Some(d);
            })*
        };
    }
    try_as!(
        Hinted,
        crate::config::ConfigError,
        crate::workflow::SpecError,
        crate::policy::LoadError,
        crate::server::StartError,
        crate::database::DatabaseError,
        crate::auth::AuthSetupError,
        crate::plugins::LoadError,
        crate::plugins::CallError,
        crate::migrate::MigrateError,
        crate::migrate::LoadError,
        crate::migrate::PlanError,
        crate::migrate::lock::LockError,
        crate::migrate::GenerateError,
        crate::pool::PoolError,
        crate::sql::exec::ExecError,
        crate::vector::VectorError,
        crate::vector::FilterError,
    );
    None
}

/// `error` for a terminal: its message and each cause, and for the host's diagnostics the
/// lines of the file at fault and a `help:` line. Colours only when `color`.
pub fn render(error: &anyhow::Error, color: bool) -> String {
    let mut theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    // `error: …`, as the rest of the toolchain a user runs writes it.
    theme.characters.error = "error:".into();
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_wrap_lines(false)
        .with_context_lines(1);
    let report = Edge { error };
    let mut out = String::new();
    if handler.render_report(&mut out, &report).is_err() {
        out = format!("{error:#}\n");
    }
    out
}

/// The whole chain of an `anyhow::Error` as one diagnostic: its message and causes, with the
/// snippet and help of the host's diagnostic in the chain, if any.
struct Edge<'a> {
    error: &'a anyhow::Error,
}

impl Edge<'_> {
    fn diagnostic(&self) -> Option<&dyn Diagnostic> {
        // A `Hinted` given as context is reachable only through anyhow's own downcast.
        if let Some(hinted) = self.error.downcast_ref::<Hinted>() {
            return Some(hinted);
        }
        self.error.chain().find_map(find)
    }
}

impl fmt::Debug for Edge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.error, f)
    }
}

impl fmt::Display for Edge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.error, f)
    }
}

impl StdError for Edge<'_> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

impl Diagnostic for Edge<'_> {
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.diagnostic().and_then(|d| d.help())
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.diagnostic().and_then(|d| d.source_code())
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.diagnostic().and_then(|d| d.labels())
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        self.diagnostic().and_then(|d| d.related())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_draws_message_causes_snippet_and_help_once() {
        let err = anyhow::Error::new(Hinted::new("cannot start", "check the port"))
            .context("serve failed");
        let out = render(&err, false);
        assert!(out.contains("serve failed"), "{out}");
        assert!(out.contains("cannot start"), "{out}");
        assert_eq!(out.matches("help: check the port").count(), 1, "{out}");
        assert!(!out.contains("hint:"), "{out}");
    }
}
