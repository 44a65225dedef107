//! The one error vocabulary below the request path: a boxed error of any kind, and an error
//! with its causes as one line, each said once (many messages already include their cause,
//! which walking the chain would repeat).

use std::error::Error;

/// Any error that can cross threads: what bodies, connectors and handlers fail with.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// `error`, then each cause whose text the line does not hold yet, joined by `: `.
pub fn each_cause_once(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let said = next.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        cause = next.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(std::io::Error, &'static str);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
    }

    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = || std::io::Error::other("Address already in use");
        let repeating = Wrapper(io(), "cannot listen: Address already in use");
        assert_eq!(
            each_cause_once(&repeating),
            "cannot listen: Address already in use"
        );
        let terse = Wrapper(io(), "cannot listen");
        assert_eq!(
            each_cause_once(&terse),
            "cannot listen: Address already in use"
        );
    }
}
