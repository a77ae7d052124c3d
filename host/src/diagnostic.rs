//! Diagnostics: what went wrong, where (with the lines of the file at fault), and what to do.
//!
//! Errors carry their help as [`miette::Diagnostic::help`], never inside their message; the
//! config loaders (`trellis.toml`, `*.rules.json` and `.cedar` files, workflow files) also carry
//! a [`Snippet`] of the file at fault. `cli::report` draws all of it once, at the CLI edge; the
//! HTTP API puts the help in its own `hint` field.

use std::fmt;
use std::sync::Arc;

use miette::{
    Diagnostic, LabeledSpan, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents,
};

/// A place in a file, with the file's text, to show around a problem.
#[derive(Clone, PartialEq, Eq)]
pub struct Snippet {
    name: Arc<str>,
    text: Arc<str>,
    offset: usize,
    len: usize,
    label: Option<String>,
}

impl fmt::Debug for Snippet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Snippet({}@{}+{})", self.name, self.offset, self.len)
    }
}

impl Snippet {
    /// `len` bytes at `offset` of `text` (clamped to it), the file called `name`.
    pub fn at(name: impl Into<Arc<str>>, text: Arc<str>, offset: usize, len: usize) -> Snippet {
        let offset = floor_char(&text, offset.min(text.len()));
        let len = floor_char(&text, (offset + len).min(text.len())) - offset;
        Snippet {
            name: name.into(),
            text,
            offset,
            len,
            label: None,
        }
    }

    /// The whole of 1-based `line` (without its line break).
    pub fn line(name: impl Into<Arc<str>>, text: Arc<str>, line: usize) -> Snippet {
        let start = if line <= 1 {
            0
        } else {
            text.match_indices('\n')
                .nth(line - 2)
                .map_or(text.len(), |(i, _)| i + 1)
        };
        let end = text[start..].find('\n').map_or(text.len(), |i| start + i);
        Snippet::at(name, text, start, end - start)
    }

    /// Names what the marked span is (default: nothing but the mark).
    pub fn labelled(mut self, label: impl Into<String>) -> Snippet {
        self.label = Some(label.into());
        self
    }

    /// The marked span, as miette labels it.
    pub fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new(
            self.label.clone(),
            self.offset,
            self.len,
        ))))
    }
}

fn floor_char(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl SourceCode for Snippet {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.to_string(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// A message with its help, for the CLI's own refusals (`bail!(Hinted::new(…, …))`).
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("{message}")]
#[diagnostic(help("{help}"))]
pub struct Hinted {
    message: String,
    help: String,
}

impl Hinted {
    /// `message`, and what to do about it.
    pub fn new(message: impl Into<String>, help: impl Into<String>) -> Hinted {
        Hinted {
            message: message.into(),
            help: help.into(),
        }
    }
}

/// `error`'s message, then `help: …` on a line of its own when it has help: for logs and
/// tests, where no snippet is drawn.
pub fn plain(error: &dyn Diagnostic) -> String {
    match error.help() {
        Some(help) => format!("{error}\nhelp: {help}"),
        None => error.to_string(),
    }
}

/// [`plain`] as a method (for tests that compare messages).
#[cfg(test)]
pub(crate) trait Plain {
    /// The message, then `help: …` on its own line.
    fn plain(&self) -> String;
}

#[cfg(test)]
impl<T: Diagnostic> Plain for T {
    fn plain(&self) -> String {
        plain(self)
    }
}

/// Each problem `error` lists (its related diagnostics, each with its file and line), or the
/// error itself when it lists none; one plain string each.
pub fn problems(error: &dyn Diagnostic) -> Vec<String> {
    let related: Vec<String> = error.related().into_iter().flatten().map(plain).collect();
    if related.is_empty() {
        vec![plain(error)]
    } else {
        related
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_snippet_marks_the_whole_line() {
        let text: Arc<str> = Arc::from("a = 1\nbee = 2\nc = 3");
        let s = Snippet::line("f.toml", text.clone(), 2);
        assert_eq!(&text[s.offset..s.offset + s.len], "bee = 2");
        let last = Snippet::line("f.toml", text.clone(), 3);
        assert_eq!(&text[last.offset..last.offset + last.len], "c = 3");
        let past = Snippet::line("f.toml", text.clone(), 9);
        assert_eq!(past.len, 0);
        let multibyte = Snippet::at("f", Arc::from("é"), 1, 5);
        assert_eq!((multibyte.offset, multibyte.len), (0, 2));
    }
}
