//! Changing `traffic` and `mirror_traffic` in an endpoint file and nothing else: comments,
//! order, spacing and every other byte stay as the user wrote them. Used by
//! `switchyard traffic set` and by each step of a rollout.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use crate::config::{Change, EndpointConfig, diff};

/// Why the file could not be edited.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file as it is, or as it would be, is invalid.
    #[error("{0}")]
    Invalid(String),
}

/// The shares to set: deployment name to percent. Deployments not named keep theirs.
pub type Shares = BTreeMap<String, u8>;

/// `text` with `traffic` set to `traffic` and `mirror_traffic` to `mirror`, where given; the
/// result is validated, and must differ from `text` in those two maps only.
pub fn set_shares(
    text: &str,
    traffic: &Shares,
    mirror: Option<&Shares>,
) -> Result<String, EditError> {
    let before = EndpointConfig::parse(text).map_err(|e| EditError::Invalid(e.render()))?;
    let names: Vec<&str> = before.deployments.iter().map(|d| d.name.as_str()).collect();
    for name in traffic
        .keys()
        .chain(mirror.into_iter().flat_map(|m| m.keys()))
    {
        if !names.contains(&name.as_str()) {
            return Err(EditError::Invalid(format!(
                "deployment `{name}` is not in the endpoint file (it has {})",
                names.join(", ")
            )));
        }
    }
    let mut edited = set_map(text, "traffic", traffic);
    if let Some(mirror) = mirror {
        edited = set_map(&edited, "mirror_traffic", mirror);
    }
    let after = EndpointConfig::parse(&edited).map_err(|error| {
        EditError::Invalid(format!(
            "the file would be invalid with these shares:\n{}",
            error.render()
        ))
    })?;
    let unexpected: Vec<String> = diff(&before, &after)
        .iter()
        .filter(|change| !matches!(change, Change::Traffic { .. } | Change::Mirror { .. }))
        .map(ToString::to_string)
        .collect();
    if !unexpected.is_empty() {
        // A layout the editor misread; refuse rather than change anything else.
        return Err(EditError::Invalid(format!(
            "editing the shares would also change: {}; edit the file by hand",
            unexpected.join("; ")
        )));
    }
    Ok(edited)
}

/// Replaces the top-level mapping `key` in `text` with `shares` merged into it, keeping the
/// entries it had in their order, their comments and the mapping's style.
fn set_map(text: &str, key: &str, shares: &Shares) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let starts = |line: &str| {
        line.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    let Some(at) = lines.iter().position(|line| starts(line)) else {
        // No such key yet: added at the end, in flow style.
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("{key}: {}\n", flow(&[], shares)));
        return out;
    };
    let line = lines[at];
    let after_colon = &line[line.find(':').map_or(line.len(), |c| c + 1)..];
    let value = strip_comment(after_colon).trim();
    let mut out: String = lines[..at].concat();
    if value.starts_with('{') {
        // Flow style, possibly over several lines until the closing brace.
        let mut flow_text = String::new();
        let mut end = at;
        for (index, line) in lines.iter().enumerate().skip(at) {
            let part = if index == at { after_colon } else { line };
            flow_text.push_str(strip_comment(part));
            end = index;
            if strip_comment(part).contains('}') {
                break;
            }
        }
        let inner = flow_text
            .trim()
            .trim_start_matches('{')
            .trim_end_matches('}')
            .to_string();
        let entries: Vec<(String, String)> = inner
            .split(',')
            .filter_map(|entry| {
                let (name, value) = entry.split_once(':')?;
                Some((name.trim().to_string(), value.trim().to_string()))
            })
            .collect();
        let comment = comment_of(lines[end]);
        let newline = if lines[end].ends_with('\n') { "\n" } else { "" };
        let head = &line[..line.find(':').map_or(0, |c| c + 1)];
        out.push_str(&format!(
            "{head} {}{comment}{newline}",
            flow(&entries, shares)
        ));
        out.push_str(&lines[end + 1..].concat());
        return out;
    }
    if !value.is_empty() {
        // `traffic: ~` or another scalar: replaced whole.
        let newline = if line.ends_with('\n') { "\n" } else { "" };
        out.push_str(&format!("{key}: {}{newline}", flow(&[], shares)));
        out.push_str(&lines[at + 1..].concat());
        return out;
    }
    // Block style: the indented lines below, each `name: value  # comment`.
    out.push_str(line);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    let end = (at + 1..lines.len())
        .find(|&index| {
            let trimmed = lines[index].trim_start();
            let is_blank = trimmed.is_empty() || trimmed.starts_with('#');
            !is_blank && lines[index].len() == trimmed.len()
        })
        .unwrap_or(lines.len());
    let mut missing: Vec<(&String, &u8)> = shares.iter().collect();
    let mut block: Vec<String> = Vec::new();
    // Where new entries go: after the last entry, with its indent.
    let mut insert_at = 0;
    let mut indent = "  ".to_string();
    for line in &lines[at + 1..end] {
        let trimmed = line.trim_start();
        let name = (!trimmed.starts_with('#'))
            .then(|| trimmed.split_once(':'))
            .flatten()
            .map(|(name, _)| name.trim());
        let Some(name) = name else {
            block.push(line.to_string());
            continue;
        };
        let lead = &line[..line.len() - trimmed.len()];
        indent = lead.to_string();
        match missing.iter().position(|(n, _)| n.as_str() == name) {
            Some(found) => {
                let (name, percent) = missing.remove(found);
                block.push(format!("{lead}{name}: {percent}{}\n", comment_of(line)));
            }
            None if line.ends_with('\n') => block.push(line.to_string()),
            None => block.push(format!("{line}\n")),
        }
        insert_at = block.len();
    }
    let added: Vec<String> = missing
        .iter()
        .map(|(name, percent)| format!("{indent}{name}: {percent}\n"))
        .collect();
    block.splice(insert_at..insert_at, added);
    out.push_str(&block.concat());
    out.push_str(&lines[end..].concat());
    out
}

/// `{a: 1, b: 2}` from the entries kept in order, updated by `shares`, then the new ones.
fn flow(entries: &[(String, String)], shares: &Shares) -> String {
    let mut parts: Vec<String> = entries
        .iter()
        .map(|(name, value)| match shares.get(name) {
            Some(percent) => format!("{name}: {percent}"),
            None => format!("{name}: {value}"),
        })
        .collect();
    for (name, percent) in shares {
        if !entries.iter().any(|(existing, _)| existing == name) {
            parts.push(format!("{name}: {percent}"));
        }
    }
    format!("{{{}}}", parts.join(", "))
}

/// The text before a `#` comment (names and numbers hold no `#`).
fn strip_comment(text: &str) -> &str {
    text.split('#')
        .next()
        .unwrap_or(text)
        .trim_end_matches(['\n', '\r'])
}

/// A line's trailing comment with the spaces before it, or nothing.
fn comment_of(line: &str) -> String {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.find('#') {
        Some(at) => {
            let before = &line[..at];
            let spaces = before.len() - before.trim_end().len();
            format!("{}{}", " ".repeat(spaces.max(1)), &line[at..])
        }
        None => String::new(),
    }
}

/// Writes `text` to `path` in one step: a temporary file beside it, then a rename, so a
/// watcher (or a reader of the rollout's state) sees one whole change. A file that exists keeps
/// its permissions.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), EditError> {
    let io = |source| EditError::Io {
        path: path.display().to_string(),
        source,
    };
    let permissions = match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(EditError::Invalid(format!(
                "{} is a symbolic link (a mounted ConfigMap, say); change its source instead",
                path.display()
            )));
        }
        Ok(metadata) => Some(metadata.permissions()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(io(error)),
    };
    let directory = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = directory.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if let Some(permissions) = permissions {
            std::fs::set_permissions(&temporary, permissions)?;
        }
        std::fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shares(pairs: &[(&str, u8)]) -> Shares {
        pairs.iter().map(|(n, p)| (n.to_string(), *p)).collect()
    }

    const DEPLOYMENTS: &str = "deployments:\n  - name: blue\n    instances: [http://127.0.0.1:9001]\n  - name: green\n    instances: [http://127.0.0.1:9002]\n";

    #[test]
    fn a_flow_mapping_changes_its_numbers_and_nothing_else() {
        let text = format!(
            "# my endpoint\nname: my-endpoint   # the name\nauth_mode: none\ntraffic: {{blue: 100, green: 0}}  # live split\n{DEPLOYMENTS}"
        );
        let edited =
            set_shares(&text, &shares(&[("blue", 90), ("green", 10)]), None).expect("edited");
        assert_eq!(
            edited,
            text.replace(
                "traffic: {blue: 100, green: 0}",
                "traffic: {blue: 90, green: 10}"
            )
        );
    }

    #[test]
    fn a_block_mapping_keeps_its_comments_and_gains_missing_names() {
        let text = format!(
            "name: my-endpoint\nauth_mode: none\ntraffic:\n  # the live split\n  blue: 100   # stable\n\n{DEPLOYMENTS}"
        );
        let edited =
            set_shares(&text, &shares(&[("blue", 90), ("green", 10)]), None).expect("edited");
        assert_eq!(
            edited,
            format!(
                "name: my-endpoint\nauth_mode: none\ntraffic:\n  # the live split\n  blue: 90   # stable\n  green: 10\n\n{DEPLOYMENTS}"
            )
        );
    }

    #[test]
    fn a_mirror_share_is_added_where_there_was_none() {
        let text =
            format!("name: my-endpoint\nauth_mode: none\ntraffic: {{blue: 100}}\n{DEPLOYMENTS}");
        let edited =
            set_shares(&text, &shares(&[]), Some(&shares(&[("green", 10)]))).expect("edited");
        let config = EndpointConfig::parse(&edited).expect("valid");
        assert_eq!(
            config.mirrored().map(|d| (d.name.as_str(), d.mirror)),
            Some(("green", 10))
        );
        assert!(edited.starts_with(&text));
    }

    #[test]
    fn shares_that_do_not_add_up_are_refused_with_the_reason() {
        let text =
            format!("name: my-endpoint\nauth_mode: none\ntraffic: {{blue: 100}}\n{DEPLOYMENTS}");
        let error = set_shares(&text, &shares(&[("green", 10)]), None).expect_err("110%");
        assert!(error.to_string().contains("110"), "{error}");
        let error = set_shares(&text, &shares(&[("purple", 10)]), None).expect_err("unknown");
        assert!(error.to_string().contains("purple"), "{error}");
    }
}
