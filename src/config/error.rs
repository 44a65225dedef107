//! Config errors that name the file, the position, the field and the fix.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_saphyr::Location;

use super::{line_column, suggest};

/// Why an endpoint file was not accepted.
#[derive(Debug)]
pub enum ConfigError {
    /// The file could not be read at all.
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read but breaks one or more rules.
    Invalid {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// Every problem found, in file order where possible.
        issues: Vec<Issue>,
        /// The text, kept to show the offending lines.
        text: Arc<str>,
    },
}

/// One problem at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Path of the field, e.g. `deployments[1].instances[0]`; empty for the whole file.
    pub field: String,
    /// 1-based line and column, where known.
    pub position: Option<(u64, u64)>,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl Issue {
    pub(crate) fn new(
        field: impl Into<String>,
        location: Option<Location>,
        problem: impl Into<String>,
    ) -> Self {
        Issue {
            field: field.into(),
            position: location.as_ref().and_then(line_column),
            problem: problem.into(),
        }
    }

    /// Turns a YAML or serde error into an issue with a useful message.
    pub(crate) fn from_parse_error(field: String, error: &serde_saphyr::Error) -> Self {
        let message = error.without_snippet().to_string();
        let mut problem = explain(strip_position(&message));
        // `blue: 10%` and `blue: 0.9` are the likely slips in a traffic share.
        if field.starts_with("traffic.") && problem == WHOLE_NUMBER {
            problem = format!("{WHOLE_NUMBER} of percent from 0 to 100, like `10` (no `%` sign)");
        }
        // A limit on the whole file is about no one field, whatever the parser was reading.
        let field = if message.contains("budget breached") {
            String::new()
        } else {
            field
        };
        Issue {
            position: error.location().as_ref().and_then(line_column),
            problem,
            field,
        }
    }
}

/// The parser's limits on a file, in a person's words: what was too much, and the way out.
fn explain_budget(breach: &str) -> String {
    let kind = breach
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    // `Nodes { nodes: 250001 }`: the count when the limit was passed.
    let count: String = breach
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    let counted = format!("{count} counted when the parser's limit was passed");
    let way_out = "an endpoint file needs far fewer; check that this is the file you meant";
    let what = match kind {
        "Nodes" | "Events" => {
            "too many YAML values once its aliases are expanded (each use of `*name` counts again)"
        }
        "Aliases" => "too many aliases (`*name`)",
        "Anchors" => "too many anchors (`&name`)",
        "Depth" | "InclusionDepth" => "values nested too deep",
        "Documents" => "more than one YAML document (`---`)",
        "ScalarBytes" => "too many bytes of values: it is too large",
        "CommentBytes" => "too many bytes of comments: it is too large",
        "MergeKeys" => "too many merge keys (`<<`)",
        _ => "more than the parser allows",
    };
    format!("the file has {what} ({counted}); {way_out}")
}

/// serde-saphyr's text repeats the position we already report separately.
fn strip_position(message: &str) -> &str {
    let message = message.strip_prefix("error: ").unwrap_or(message);
    // "line 2 column 1: <message>"
    let message = match message.strip_prefix("line ") {
        Some(rest) => rest.split_once(": ").map_or(message, |(_, tail)| tail),
        None => message,
    };
    // "<message> at line 2, column 1"
    message
        .rsplit_once(" at line ")
        .map_or(message, |(head, _)| head)
}

const WHOLE_NUMBER: &str = "expected a whole number";

/// Rewrites serde's wording into a problem and a fix.
fn explain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let known: Vec<&str> = expected
            .trim_start_matches(", expected one of ")
            .trim_start_matches(", expected ")
            .split([',', ' '])
            .map(|word| word.trim_matches('`'))
            .filter(|word| !word.is_empty() && *word != "or")
            .collect();
        return match suggest::closest(key, known.iter().copied()) {
            Some(close) => format!("unknown key `{key}`; did you mean `{close}`?"),
            None if known.is_empty() => format!("unknown key `{key}`; this mapping takes no keys"),
            None => format!("unknown key `{key}`; known keys here: {}", known.join(", ")),
        };
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or(rest);
        return format!("missing required key `{key}`");
    }
    if message.starts_with("invalid i64") || message.starts_with("invalid u") {
        return WHOLE_NUMBER.to_string();
    }
    if let Some(breach) = message.strip_prefix("budget breached: ") {
        return explain_budget(breach);
    }
    if message.starts_with("expected mapping start") {
        return "expected `key: value` here; is the colon after the key missing?".to_string();
    }
    if message.starts_with("duplicate") {
        return format!("{message}; each key may appear once");
    }
    message.to_string()
}

impl ConfigError {
    pub(crate) fn invalid(text: &str, issues: Vec<Issue>) -> Self {
        ConfigError::Invalid {
            path: None,
            issues,
            text: Arc::from(text),
        }
    }

    /// Attaches the file name to an error made from text.
    pub(crate) fn in_file(self, file: &Path) -> Self {
        match self {
            ConfigError::Invalid { issues, text, .. } => ConfigError::Invalid {
                path: Some(file.to_path_buf()),
                issues,
                text,
            },
            read @ ConfigError::Read { .. } => read,
        }
    }

    /// The problems found (empty for a read error).
    pub fn issues(&self) -> &[Issue] {
        match self {
            ConfigError::Invalid { issues, .. } => issues,
            ConfigError::Read { .. } => &[],
        }
    }

    /// The error with each offending line of the file shown under its message, for a terminal.
    pub fn render(&self) -> String {
        let ConfigError::Invalid { issues, text, .. } = self else {
            return self.to_string();
        };
        let mut out = String::new();
        for issue in issues {
            out.push_str(&self.issue_line(issue));
            out.push('\n');
            if let Some((line, column)) = issue.position {
                if let Some(source) = text.lines().nth(line.saturating_sub(1) as usize) {
                    let gutter = line.to_string();
                    let pad = " ".repeat(gutter.len());
                    let caret = " ".repeat(column.saturating_sub(1) as usize);
                    out.push_str(&format!("{gutter} | {source}\n{pad} | {caret}^\n"));
                }
            }
        }
        out
    }

    fn issue_line(&self, issue: &Issue) -> String {
        let mut out = String::new();
        if let ConfigError::Invalid {
            path: Some(path), ..
        } = self
        {
            out.push_str(&path.display().to_string());
            out.push(':');
        }
        if let Some((line, column)) = issue.position {
            out.push_str(&format!("{line}:{column}:"));
        }
        if !out.is_empty() {
            out.push(' ');
        }
        if !issue.field.is_empty() {
            out.push_str(&issue.field);
            out.push_str(": ");
        }
        out.push_str(&issue.problem);
        out
    }
}

impl fmt::Display for ConfigError {
    /// One line per issue: `file:line:column: field: problem`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read {}: {source}", path.display())
            }
            ConfigError::Invalid { issues, .. } => {
                let lines: Vec<String> = issues.iter().map(|i| self.issue_line(i)).collect();
                f.write_str(&lines.join("\n"))
            }
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { source, .. } => Some(source),
            ConfigError::Invalid { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_text_is_removed_from_both_ends() {
        assert_eq!(
            strip_position("error: line 2 column 1: unknown thing at line 2, column 1"),
            "unknown thing"
        );
        assert_eq!(strip_position("plain"), "plain");
    }

    #[test]
    fn unknown_key_suggests_the_nearest_known_one() {
        assert_eq!(
            explain("unknown field `trafic`, expected one of name, traffic, deployments"),
            "unknown key `trafic`; did you mean `traffic`?"
        );
        assert_eq!(
            explain("unknown field `weights`, expected `name` or `traffic`"),
            "unknown key `weights`; known keys here: name, traffic"
        );
    }
}
