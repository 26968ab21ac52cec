//! An error as one line for people: each cause once, secrets scrubbed.

/// `causes` (an error and its sources, outermost first) joined with `": "`. A cause whose
/// words are already in the line is left out: many errors repeat their source in their
/// own message, and `{:#}` would print it twice.
pub fn chain<'a>(
    causes: impl IntoIterator<Item = &'a (dyn std::error::Error + 'static)>,
) -> String {
    let mut out = String::new();
    for cause in causes {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    // An error that repeats its source inside its own words ("error with configuration:
    // error with configuration: …") is said once too.
    let mut parts: Vec<&str> = Vec::new();
    for part in out.split(": ") {
        if parts.last() != Some(&part) {
            parts.push(part);
        }
    }
    crate::secrets::scrub(&parts.join(": ")).into_owned()
}

/// [`chain`] of an `anyhow::Error`.
pub fn line(e: &anyhow::Error) -> String {
    chain(e.chain())
}

/// [`chain`] of any error and its sources.
pub fn of(e: &(dyn std::error::Error + 'static)) -> String {
    chain(std::iter::successors(Some(e), |e| e.source()))
}

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("encoding a value: {0}")]
    struct Repeats(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("out of range integral type conversion attempted")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("error with configuration: error with configuration: unknown value \"bogus\"")]
    struct Stutters;

    #[test]
    fn words_an_error_repeats_in_itself_are_said_once() {
        let e = anyhow::Error::new(Stutters).context("database postgres://h/d");
        assert_eq!(
            super::line(&e),
            "database postgres://h/d: error with configuration: unknown value \"bogus\""
        );
    }

    #[test]
    fn a_cause_its_error_already_says_is_printed_once() {
        let e = anyhow::Error::new(Repeats(Inner)).context("pinning snapshot 9");
        assert_eq!(
            super::line(&e),
            "pinning snapshot 9: encoding a value: out of range integral type conversion attempted"
        );
    }
}
