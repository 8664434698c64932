//! Configuration errors: each names where it comes from (file:line:col, or the environment
//! variable) and what was expected. Loading collects every error before it gives up.

use std::fmt;
use std::ops::Range;

/// Where a bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in a config file; line and column count from 1 (column in characters).
    File {
        path: String,
        line: usize,
        column: usize,
    },
    /// An environment variable override.
    Env(&'static str),
    /// The file as a whole (it could not be read).
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { path, line, column } => {
                write!(f, "{path}:{line}:{column}: {}", self.message)
            }
            Origin::Env(var) => write!(f, "environment {var}: {}", self.message),
            Origin::Path(path) => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Every error found while loading one config; `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors against one source text, turning byte spans into line:column.
pub(crate) struct Collector<'s> {
    path: &'s str,
    source: &'s str,
    pub(crate) errors: Vec<ConfigError>,
    /// Where values start that are reported already (a string whose variable is not set):
    /// what reading them finds next only follows from that.
    reported: Vec<usize>,
}

impl<'s> Collector<'s> {
    pub(crate) fn new(path: &'s str, source: &'s str) -> Self {
        Collector {
            path,
            source,
            errors: Vec::new(),
            reported: Vec::new(),
        }
    }

    /// Records an error for the value at `span`, and leaves out any later one there.
    pub(crate) fn at_value(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.push(span.start, message.into());
        self.reported.push(span.start);
    }

    pub(crate) fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        if !self.reported.contains(&span.start) {
            self.push(span.start, message.into());
        }
    }

    fn push(&mut self, offset: usize, message: String) {
        let (line, column) = line_column(self.source, offset);
        self.errors.push(ConfigError {
            origin: Origin::File {
                path: self.path.to_string(),
                line,
                column,
            },
            message,
        });
    }

    /// The errors in reading order: file positions first, by line and column, then the rest.
    pub(crate) fn into_sorted(mut self) -> Vec<ConfigError> {
        self.errors.sort_by_key(|e| match &e.origin {
            Origin::File { line, column, .. } => (0, *line, *column),
            _ => (1, 0, 0),
        });
        self.errors
    }

    pub(crate) fn env(&mut self, var: &'static str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            origin: Origin::Env(var),
            message: message.into(),
        });
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_column;

    #[test]
    fn offsets_map_to_one_based_lines_and_columns() {
        let src = "a = 1\n[b]\n  cé = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 4), (1, 5));
        assert_eq!(line_column(src, 6), (2, 1));
        // "  cé = 2": the column counts characters, not bytes.
        let eq = src.find("= 2").unwrap();
        assert_eq!(line_column(src, eq), (3, 6));
        assert_eq!(line_column(src, 10_000), (4, 1));
    }
}
