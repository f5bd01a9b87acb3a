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

/// Whether `path` is relative and stays inside the folder it is read from: plain components
/// only (no root, no `..`, no `.`), at least one.
pub fn is_inside(path: &std::path::Path) -> bool {
    path.components().next().is_some()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_relative_paths_of_plain_components_stay_inside() {
        use std::path::Path;
        assert!(is_inside(Path::new("unet/model.onnx_data")));
        for outside in ["", "/etc/passwd", "../x", "unet/../../x", "./x"] {
            assert!(!is_inside(Path::new(outside)), "{outside}");
        }
    }

    #[test]
    fn only_letters_digits_dot_underscore_and_dash_are_kept() {
        assert_eq!(plain("a-B_9.x"), "a-B_9.x");
        assert_eq!(plain("a b/c\\d:é"), "a_b_c_d__");
        assert!(!is_plain('/') && !is_plain(' ') && is_plain('-'));
    }
}
