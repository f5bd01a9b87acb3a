//! The characters sdspool lets into names that become file and folder names (job ids, output
//! folders, model names, cache folders): ASCII letters, digits, `.`, `_` and `-`, safe on every
//! file system and in a URL path or a log line without quoting.

/// Whether `c` may stand in such a name.
pub fn is_plain(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// `s` with every character that is not [`is_plain`] replaced by `_`.
pub fn plain(s: &str) -> String {
    s.chars()
        .map(|c| if is_plain(c) { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_letters_digits_dot_underscore_and_dash_are_kept() {
        assert_eq!(plain("a-B_9.x"), "a-B_9.x");
        assert_eq!(plain("a b/c\\d:é"), "a_b_c_d__");
        assert!(!is_plain('/') && !is_plain(' ') && is_plain('-'));
    }
}
