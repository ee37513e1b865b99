//! Environment variable names as they stand in text: the docs test and the
//! knobs test read them out of docs and code alike.

use std::collections::BTreeSet;

/// The words of `text` that start with `prefix` and go on in capitals,
/// digits and underscores.
pub fn names_with_prefix(text: &str, prefix: &str) -> BTreeSet<String> {
    text.match_indices(prefix)
        .filter(|(at, _)| {
            !text[..*at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(|(at, _)| {
            text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|name| name.len() > prefix.len() && !name.ends_with('_'))
        .collect()
}
