//! Prompt editing `[from:to:when]`, `[to:when]`, `[from::when]` and alternation `[a|b]`: one
//! prompt becomes a list of `(last step, text)` pairs, as AUTOMATIC1111's
//! `get_learned_conditioning_prompt_schedules` makes them (without hires fix).
//!
//! The grammar AUTOMATIC1111 parses with (a lark Earley grammar), in words:
//!
//! * top level: a sequence of *items* and of the literal characters `[ ] ( ) :`;
//! * item: plain text (any character but `\ [ ] ( ) : |`, or `\` followed by any character but a
//!   newline), an emphasis `( … )`, `( … : … )`, `[ … ]`, an edit `[ … : … : N]` / `[ … : N]`, or
//!   an alternation `[ … | … ]` (alternatives may be empty); `…` is again a sequence of items
//!   (no literal brackets inside a construct);
//! * `N` is a signed number (`5`, `-1`, `.5`, `0.25`, `1e2`), with optional whitespace around it.
//!
//! A prompt that does not parse (a `|` outside an alternation, a `\` at the very end or before a
//! newline) is used unchanged for every step, as AUTOMATIC1111 does. Emphasis is left in the
//! text; [`super::emphasis`] reads it afterwards.
//!
//! `N` with a decimal point is a fraction of the steps (`int(N * steps)`), otherwise a step
//! number; both capped at `steps`. `[from:to:N]` gives `from` for schedule steps up to `N`, `to`
//! after; `[a|b]` gives alternative `(step - 1) % count` at every step. The schedule steps are
//! 1-based; the sampler's 0-based step `s` uses the first entry whose step is `>= s` (see
//! [`Schedule::at_sampler_step`]), which is also AUTOMATIC1111's off-by-one: `[a:b:10]` over 20
//! steps conditions steps 0..=10 on `a`.

/// Parsed piece of a prompt.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Edit {
        /// `None` for `[to:when]` (nothing before).
        before: Option<Vec<Node>>,
        after: Vec<Node>,
        /// The number as written.
        when: String,
    },
    Alternate(Vec<Vec<Node>>),
}

/// One prompt's texts over the steps: `(last step, text)` with increasing steps, the last one
/// equal to the number of steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub entries: Vec<(usize, String)>,
}

impl Schedule {
    /// Index into [`Schedule::entries`] of the text the sampler uses at its 0-based step `step`.
    pub fn at_sampler_step(&self, step: usize) -> usize {
        self.entries
            .iter()
            .position(|(end, _)| step <= *end)
            .unwrap_or(0)
    }
}

/// The prompt's schedule over `steps` steps.
pub fn schedule(prompt: &str, steps: usize) -> Schedule {
    let chars: Vec<char> = prompt.chars().collect();
    let Some(nodes) = parse_top(&chars) else {
        return Schedule {
            entries: vec![(steps, prompt.to_string())],
        };
    };
    let mut points = vec![steps as i64];
    collect_steps(&nodes, steps, &mut points);
    points.sort_unstable();
    points.dedup();
    let entries = points
        .into_iter()
        .map(|t| {
            let mut text = String::new();
            render(&nodes, t, steps, &mut text);
            (t as usize, text)
        })
        .collect();
    Schedule { entries }
}

/// Python's `str.isspace()` (what `\s` matches in Python's `re`): Unicode White_Space plus the
/// four information separators U+001C..U+001F.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn is_special(c: char) -> bool {
    matches!(c, '\\' | '[' | ']' | '(' | ')' | ':' | '|')
}

/// The whole prompt, or `None` when it does not parse.
fn parse_top(s: &[char]) -> Option<Vec<Node>> {
    let mut nodes = Vec::new();
    let mut pos = 0;
    while pos < s.len() {
        let (items, next) = parse_seq(s, pos);
        nodes.extend(items);
        pos = next;
        if pos >= s.len() {
            break;
        }
        match s[pos] {
            '[' | ']' | '(' | ')' | ':' => {
                nodes.push(Node::Text(s[pos].to_string()));
                pos += 1;
            }
            _ => return None, // `|`, or a backslash at the end / before a newline
        }
    }
    Some(nodes)
}

/// A sequence of items from `pos`: stops at the first character that starts none (returns where).
fn parse_seq(s: &[char], mut pos: usize) -> (Vec<Node>, usize) {
    let mut nodes = Vec::new();
    let mut text = String::new();
    while pos < s.len() {
        let c = s[pos];
        if c == '\\' {
            match s.get(pos + 1) {
                Some(&n) if n != '\n' => {
                    text.push(c);
                    text.push(n);
                    pos += 2;
                }
                _ => break,
            }
        } else if !is_special(c) {
            text.push(c);
            pos += 1;
        } else if c == '(' || c == '[' {
            let Some((mut inner, next)) = parse_construct(s, pos) else {
                break;
            };
            if !text.is_empty() {
                nodes.push(Node::Text(std::mem::take(&mut text)));
            }
            nodes.append(&mut inner);
            pos = next;
        } else {
            break;
        }
    }
    if !text.is_empty() {
        nodes.push(Node::Text(text));
    }
    (nodes, pos)
}

/// An emphasis, edit or alternation starting at `s[pos]` (`(` or `[`): its nodes and the
/// position after it, or `None`.
fn parse_construct(s: &[char], pos: usize) -> Option<(Vec<Node>, usize)> {
    let open = s[pos];
    let (first, p) = parse_seq(s, pos + 1);
    let at = |i: usize| s.get(i).copied();
    if open == '(' {
        return match at(p)? {
            ')' => Some((wrap("(", first, ")"), p + 1)),
            ':' => {
                let (second, q) = parse_seq(s, p + 1);
                (at(q)? == ')').then(|| {
                    let mut nodes = wrap("(", first, ":");
                    nodes.extend(second);
                    nodes.push(Node::Text(")".into()));
                    (nodes, q + 1)
                })
            }
            _ => None,
        };
    }
    match at(p)? {
        ']' => Some((wrap("[", first, "]"), p + 1)),
        '|' => {
            let mut options = vec![first];
            let mut q = p;
            while at(q) == Some('|') {
                let (next, r) = parse_seq(s, q + 1);
                options.push(next);
                q = r;
            }
            (at(q)? == ']').then(|| (vec![Node::Alternate(options)], q + 1))
        }
        ':' => {
            // `[to:N]`, else `[from:to:N]`.
            if let Some((when, q)) = parse_when(s, p + 1) {
                return Some((
                    vec![Node::Edit {
                        before: None,
                        after: first,
                        when,
                    }],
                    q,
                ));
            }
            let (second, q) = parse_seq(s, p + 1);
            if at(q)? != ':' {
                return None;
            }
            let (when, r) = parse_when(s, q + 1)?;
            Some((
                vec![Node::Edit {
                    before: Some(first),
                    after: second,
                    when,
                }],
                r,
            ))
        }
        _ => None,
    }
}

fn wrap(open: &str, inner: Vec<Node>, close: &str) -> Vec<Node> {
    let mut nodes = vec![Node::Text(open.into())];
    nodes.extend(inner);
    nodes.push(Node::Text(close.into()));
    nodes
}

/// `[ws] NUMBER [ws] ]` from `pos`: the number as written and the position after `]`.
fn parse_when(s: &[char], mut pos: usize) -> Option<(String, usize)> {
    while pos < s.len() && is_py_space(s[pos]) {
        pos += 1;
    }
    let start = pos;
    pos = scan_number(s, pos)?;
    let when: String = s[start..pos].iter().collect();
    while pos < s.len() && is_py_space(s[pos]) {
        pos += 1;
    }
    (s.get(pos) == Some(&']')).then_some((when, pos + 1))
}

/// lark's `SIGNED_NUMBER`: `[+-]? (INT | INT "." INT? | "." INT) ([eE] [+-]? INT)?`; the
/// position after it.
fn scan_number(s: &[char], mut pos: usize) -> Option<usize> {
    let digits = |mut p: usize| {
        while p < s.len() && s[p].is_ascii_digit() {
            p += 1;
        }
        p
    };
    if matches!(s.get(pos), Some('+' | '-')) {
        pos += 1;
    }
    let int_end = digits(pos);
    let mut end = int_end;
    if s.get(end) == Some(&'.') {
        let frac_end = digits(end + 1);
        if int_end > pos || frac_end > end + 1 {
            end = frac_end;
        }
    }
    if end == pos {
        return None;
    }
    if matches!(s.get(end), Some('e' | 'E')) {
        let mut p = end + 1;
        if matches!(s.get(p), Some('+' | '-')) {
            p += 1;
        }
        let exp_end = digits(p);
        if exp_end > p {
            end = exp_end;
        }
    }
    Some(end)
}

/// The step an edit switches at: `int(N * steps)` for a number with a decimal point, `int(N)`
/// otherwise, capped at `steps` (may be below 1: then the edit shows `to` from the start).
fn when_step(when: &str, steps: usize) -> i64 {
    let v: f64 = when.parse().unwrap_or(0.0);
    let v = if when.contains('.') {
        v * steps as f64
    } else {
        v
    };
    // Python's int() truncates toward zero; `as` saturates where Python would overflow.
    (v.trunc() as i64).min(steps as i64)
}

fn collect_steps(nodes: &[Node], steps: usize, out: &mut Vec<i64>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Edit {
                before,
                after,
                when,
            } => {
                let t = when_step(when, steps);
                if t >= 1 {
                    out.push(t);
                }
                if let Some(b) = before {
                    collect_steps(b, steps, out);
                }
                collect_steps(after, steps, out);
            }
            Node::Alternate(options) => {
                out.extend(1..=steps as i64);
                for o in options {
                    collect_steps(o, steps, out);
                }
            }
        }
    }
}

fn render(nodes: &[Node], step: i64, steps: usize, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Edit {
                before,
                after,
                when,
            } => {
                if step <= when_step(when, steps) {
                    if let Some(b) = before {
                        render(b, step, steps, out);
                    }
                } else {
                    render(after, step, steps, out);
                }
            }
            Node::Alternate(options) => {
                let i = (step - 1).rem_euclid(options.len() as i64) as usize;
                render(&options[i], step, steps, out);
            }
        }
    }
}
