//! What berth never echoes: the one place that decides which map values are sensitive
//! (by their key) and that takes sensitive values out of text (by their value). The gRPC
//! layer scrubs every error message with it, the log renders maps with it, and the engine
//! keeps such parameters out of its records with it.

use std::collections::HashMap;

/// Volume context keys whose values must never be logged.
pub const SENSITIVE_KEYS: &[&str] = &["csi.storage.k8s.io/serviceAccount.tokens"];

/// What replaces a sensitive value.
pub const REDACTED: &str = "<redacted>";

/// True for a map key whose value must never be logged or recorded: every key in
/// [`SENSITIVE_KEYS`] and anything that looks like a token, password, secret or key.
#[must_use]
pub fn is_sensitive_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    SENSITIVE_KEYS.contains(&key) || ["token", "secret", "password", "key"].iter().any(|w| lower.contains(w))
}

/// Renders a map for logs, sorted by key, with the values of sensitive keys replaced.
#[must_use]
pub fn redacted(map: &HashMap<String, String>) -> String {
    let mut keys: Vec<_> = map.keys().collect();
    keys.sort();
    let parts: Vec<String> = keys
        .into_iter()
        .map(|k| if is_sensitive_key(k) { format!("{k}={REDACTED}") } else { format!("{k}={}", map[k]) })
        .collect();
    parts.join(",")
}

/// `text` with every occurrence of a sensitive value replaced by [`REDACTED`]. An
/// occurrence counts only where it is not part of a longer word: a value that starts (ends)
/// with a letter or digit must not follow (precede) one, so a short secret such as `1`
/// does not mangle `vol:fast:123` while `password 1` still loses it. Longer values win
/// where occurrences overlap, and replacements never match each other.
pub fn scrub<'a>(text: &str, values: impl IntoIterator<Item = &'a str>) -> String {
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut found: Vec<(usize, usize)> = Vec::new();
    for value in values.into_iter().filter(|v| !v.is_empty()) {
        let starts_word = word(value.chars().next());
        let ends_word = word(value.chars().next_back());
        for (at, _) in text.match_indices(value) {
            let end = at + value.len();
            let before = text[..at].chars().next_back();
            let after = text[end..].chars().next();
            if (starts_word && word(before)) || (ends_word && word(after)) {
                continue;
            }
            found.push((at, end));
        }
    }
    // Longest first, then keep the occurrences that overlap none already kept.
    found.sort_by_key(|&(at, end)| (std::cmp::Reverse(end - at), at));
    let mut kept: Vec<(usize, usize)> = Vec::new();
    for (at, end) in found {
        if kept.iter().all(|&(a, e)| end <= a || at >= e) {
            kept.push((at, end));
        }
    }
    kept.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for (at, end) in kept {
        out.push_str(&text[from..at]);
        out.push_str(REDACTED);
        from = end;
    }
    out.push_str(&text[from..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_tokens_and_secret_looking_keys() {
        let mut m = HashMap::new();
        m.insert("csi.storage.k8s.io/serviceAccount.tokens".to_string(), "SENTINEL-TOKEN".to_string());
        m.insert("password".to_string(), "SENTINEL-PW".to_string());
        m.insert("pool".to_string(), "fast".to_string());
        let text = redacted(&m);
        assert!(!text.contains("SENTINEL"), "{text}");
        assert!(text.contains("pool=fast"));
    }

    #[test]
    fn whole_values_are_replaced_and_longer_values_win() {
        assert_eq!(scrub("x abcdef y abc", ["abc", "abcdef"]), "x <redacted> y <redacted>");
        assert_eq!(scrub("saw S3CRET-LONG.", ["S3CRET-LONG"]), "saw <redacted>.");
        assert_eq!(scrub("key=\"hunter2\"", ["hunter2"]), "key=\"<redacted>\"");
    }

    #[test]
    fn a_short_secret_does_not_mangle_words_that_contain_it() {
        let message = "volume vol:fast:1234 needs 1 node";
        assert_eq!(scrub(message, ["1"]), "volume vol:fast:1234 needs <redacted> node");
        assert_eq!(scrub("pool fast", ["a"]), "pool fast");
        assert_eq!(scrub("no secret here", [""]), "no secret here");
    }

    #[test]
    fn values_with_punctuation_at_their_edges_match_inside_words() {
        // Its edges are not letters: nothing around it can make it part of a word.
        assert_eq!(scrub("x-+s3+-y", ["+s3+"]), "x-<redacted>-y");
    }

    #[test]
    fn a_value_that_looks_like_the_replacement_is_replaced_once() {
        assert_eq!(scrub("<redacted>", ["redacted", "<redacted>"]), "<redacted>");
    }
}
