//! Key authentication, Azure's `auth_mode: key`: a primary and a secondary key, either accepted as
//! `Authorization: Bearer <key>`. The keys live in their own file so the routing file carries no
//! secrets; editing that file rotates them without a restart.

use std::fmt;
use std::path::Path;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::config::{ConfigError, Issue, read_file};

/// Shortest key accepted; Azure's are 32 characters or more.
pub const MIN_KEY_LENGTH: usize = 16;

/// The endpoint's keys. `Debug` never shows them.
#[derive(Clone, PartialEq, Eq)]
pub struct Keys {
    primary: Box<[u8]>,
    secondary: Option<Box<[u8]>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    primary_key: Option<Spanned<String>>,
    #[serde(default)]
    secondary_key: Option<Spanned<String>>,
}

impl Keys {
    /// Reads and checks a keys file: `primary_key` (required) and `secondary_key`.
    pub fn load(path: &Path) -> Result<Keys, ConfigError> {
        Keys::parse(&read_file(path)?).map_err(|error| error.in_file(path))
    }

    /// Parses keys-file YAML.
    pub fn parse(text: &str) -> Result<Keys, ConfigError> {
        // Errors carry no source text, so no rendering ever prints a line of the keys file.
        let file: KeysFile = serde_saphyr::from_str(text).map_err(|error| {
            ConfigError::invalid("", vec![Issue::from_parse_error(String::new(), &error)])
        })?;
        let mut issues = Vec::new();
        let too_short = |field: &str, key: &Spanned<String>| {
            (key.value.trim().len() < MIN_KEY_LENGTH).then(|| {
                Issue::new(
                    field,
                    None,
                    format!(
                        "a key must be at least {MIN_KEY_LENGTH} characters long \
                         (e.g. the output of `openssl rand -hex 32`)"
                    ),
                )
            })
        };
        match &file.primary_key {
            Some(primary) => issues.extend(too_short("primary_key", primary)),
            None => issues.push(Issue::new(
                "primary_key",
                None,
                "missing; the keys file needs primary_key",
            )),
        }
        if let Some(secondary) = &file.secondary_key {
            issues.extend(too_short("secondary_key", secondary));
        }
        if !issues.is_empty() {
            return Err(ConfigError::invalid("", issues));
        }
        let bytes = |key: &Spanned<String>| key.value.trim().as_bytes().into();
        Ok(Keys {
            primary: file.primary_key.as_ref().map(bytes).unwrap_or_default(),
            secondary: file.secondary_key.as_ref().map(bytes),
        })
    }

    /// True if the request carries `Authorization: Bearer <primary or secondary key>`.
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(presented) = headers
            .get(AUTHORIZATION)
            .and_then(|value| bearer_token(value.as_bytes()))
        else {
            return false;
        };
        // Both comparisons always run, so timing does not tell which key matched.
        let primary = constant_time_eq(presented, &self.primary);
        let secondary = self
            .secondary
            .as_ref()
            .is_some_and(|key| constant_time_eq(presented, key));
        primary | secondary
    }
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys")
            .field("primary", &"<redacted>")
            .field("secondary", &self.secondary.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, token) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| token.trim_ascii())
}

/// Compares in time that depends only on the lengths, not on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= usize::from(x ^ y);
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const PRIMARY: &str = "primary-key-0123456789";
    const SECONDARY: &str = "secondary-key-0123456789";

    fn keys() -> Keys {
        Keys::parse(&format!(
            "primary_key: {PRIMARY}\nsecondary_key: {SECONDARY}\n"
        ))
        .expect("valid")
    }

    fn with_authorization(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(value).expect("header"));
        headers
    }

    #[test]
    fn either_key_is_accepted() {
        let keys = keys();
        assert!(keys.authorizes(&with_authorization(&format!("Bearer {PRIMARY}"))));
        assert!(keys.authorizes(&with_authorization(&format!("bearer {SECONDARY}"))));
    }

    #[test]
    fn missing_wrong_or_malformed_credentials_are_refused() {
        let keys = keys();
        assert!(!keys.authorizes(&HeaderMap::new()));
        assert!(!keys.authorizes(&with_authorization("Bearer primary-key-0123456788")));
        assert!(!keys.authorizes(&with_authorization(&format!("Bearer {PRIMARY}x"))));
        assert!(!keys.authorizes(&with_authorization(PRIMARY)));
        assert!(!keys.authorizes(&with_authorization(&format!("Basic {PRIMARY}"))));
        assert!(!keys.authorizes(&with_authorization("Bearer ")));
    }

    #[test]
    fn short_or_missing_keys_are_rejected_by_name() {
        let error = Keys::parse("primary_key: short\n").expect_err("too short");
        assert_eq!(error.issues()[0].field, "primary_key");
        assert!(error.issues()[0].problem.contains("at least 16"));
        let error =
            Keys::parse("secondary_key: secondary-key-0123456789\n").expect_err("no primary");
        assert_eq!(error.issues()[0].field, "primary_key");
        let error = Keys::parse("primary: x\n").expect_err("unknown key");
        assert!(
            error.issues()[0]
                .problem
                .contains("did you mean `primary_key`?"),
            "{error}"
        );
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let shown = format!("{:?}", keys());
        assert!(
            !shown.contains(PRIMARY) && !shown.contains(SECONDARY),
            "{shown}"
        );
    }
}
