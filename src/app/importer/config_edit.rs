//! Adding a model entry to the user's configuration file as text, so that its comments and layout
//! stay as they were: the entry goes at the end of the top-level `models:` block (indented as the
//! entries already there), or a `models:` block is appended when the file has none.

use std::path::Path;

/// The lines of one `models:` entry, indented by `indent` (name and path as YAML double-quoted
/// text, so that a name like `1.5` or `true` stays a string).
pub fn entry_lines(name: &str, path: &Path, indent: &str) -> String {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serialises");
    let path = quote(&path.display().to_string());
    format!("{indent}{}:\n{indent}{indent}path: {path}\n", quote(name))
}

fn is_top_level_key(line: &str) -> bool {
    let first = line.chars().next();
    matches!(first, Some(c) if !c.is_whitespace() && c != '#') && !line.starts_with("---")
}

/// The text with `name` added under `models:`; `None` when the block is not one this edit can
/// extend (e.g. `models: {}` in flow style), so that the caller prints the lines instead.
pub fn add_model(text: &str, name: &str, path: &Path) -> Option<String> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let Some(start) = lines.iter().position(|l| {
        let l = l.trim_end();
        l == "models:"
            || (l.starts_with("models:") && l["models:".len()..].trim_start().starts_with('#'))
    }) else {
        if lines.iter().any(|l| l.starts_with("models:")) {
            return None;
        }
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str("models:\n");
        out.push_str(&entry_lines(name, path, "  "));
        return Some(out);
    };
    let end = lines[start + 1..]
        .iter()
        .position(|l| is_top_level_key(l))
        .map_or(lines.len(), |i| start + 1 + i);
    // Insert after the block's last non-blank line, so blank lines and comments that introduce
    // the next section stay with it.
    let mut at = end;
    while at > start + 1 && {
        let t = lines[at - 1].trim();
        t.is_empty() || (t.starts_with('#') && !lines[at - 1].starts_with(' '))
    } {
        at -= 1;
    }
    let indent: String = lines[start + 1..end]
        .iter()
        .find(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.chars().take_while(|c| *c == ' ').collect())
        .unwrap_or_else(|| "  ".to_string());
    if indent.is_empty() {
        return None;
    }
    let mut out: String = lines[..at].concat();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&entry_lines(name, path, &indent));
    out.push_str(&lines[at..].concat());
    Some(out)
}

/// The text with a top-level `default_model:` appended (for a file that had one model and so
/// needed none).
pub fn add_default_model(text: &str, name: &str) -> String {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let quoted = serde_json::to_string(name).expect("a string serialises");
    out.push_str(&format!(
        "# named by sdspool import: it was the only model, the default without being named\ndefault_model: {quoted}\n"
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "# my settings\nmodels:\n  # the demo\n  shapes-sd:\n    path: onnx/models/shapes-sd # trained\n\n# reranking\nrerank:\n  model: x\n";

    #[test]
    fn the_entry_goes_at_the_end_of_the_models_block_and_comments_stay() {
        let out = add_model(CONFIG, "mine", Path::new("local/models/mine")).unwrap();
        assert_eq!(
            out,
            "# my settings\nmodels:\n  # the demo\n  shapes-sd:\n    path: onnx/models/shapes-sd # trained\n  \"mine\":\n    path: \"local/models/mine\"\n\n# reranking\nrerank:\n  model: x\n"
        );
    }

    #[test]
    fn the_indentation_of_the_block_is_kept() {
        let text = "models:\n    a:\n        path: a\ndefault_model: a\n";
        let out = add_model(text, "b", Path::new("/m/b")).unwrap();
        assert_eq!(
            out,
            "models:\n    a:\n        path: a\n    \"b\":\n        path: \"/m/b\"\ndefault_model: a\n"
        );
    }

    #[test]
    fn a_file_without_models_gets_a_block_and_flow_style_is_left_alone() {
        let out = add_model("output_dir: out", "b", Path::new("b")).unwrap();
        assert_eq!(out, "output_dir: out\nmodels:\n  \"b\":\n    path: \"b\"\n");
        assert_eq!(add_model("models: {}\n", "b", Path::new("b")), None);
    }
}
