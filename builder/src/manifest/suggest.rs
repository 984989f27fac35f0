//! "Did you mean ...?" for misspelt keys and values.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            // A case-only difference (readOnly vs readonly) is the likeliest typo of all.
            let d = if c.eq_ignore_ascii_case(word) {
                0
            } else {
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()).max(1)
            };
            (d, c)
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Message for a key that is not valid where it appears.
pub fn unknown_key<'a>(key: &str, valid: impl IntoIterator<Item = &'a str> + Clone) -> String {
    match nearest(key, valid.clone()) {
        Some(s) => format!("unknown key `{key}` (did you mean `{s}`?)"),
        None => {
            let list: Vec<&str> = valid.into_iter().collect();
            format!("unknown key `{key}`; valid keys here: {}", list.join(", "))
        }
    }
}

/// Message for a value outside a fixed set.
pub fn unknown_value<'a>(value: &str, valid: impl IntoIterator<Item = &'a str> + Clone) -> String {
    let list: Vec<&str> = valid.clone().into_iter().collect();
    match nearest(value, valid) {
        Some(s) => format!(
            "invalid value `{value}` (did you mean `{s}`?); expected one of: {}",
            list.join(", ")
        ),
        None => format!(
            "invalid value `{value}`; expected one of: {}",
            list.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_typos_and_case_slips() {
        let keys = ["capabilities", "capabilities.add", "command", "readonly"];
        assert_eq!(nearest("capabilites", keys), Some("capabilities"));
        assert_eq!(nearest("readOnly", keys), Some("readonly"));
        assert_eq!(nearest("capabilities.ad", keys), Some("capabilities.add"));
        assert_eq!(nearest("zzz", keys), None);
    }

    #[test]
    fn message_lists_keys_without_a_close_match() {
        assert_eq!(
            unknown_key("zzz", ["a", "b"]),
            "unknown key `zzz`; valid keys here: a, b"
        );
    }
}
