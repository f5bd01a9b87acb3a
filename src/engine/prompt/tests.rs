//! AUTOMATIC1111's own documented examples (the doctests of its prompt parser), as behaviour.

use super::emphasis::{self, Piece};
use super::schedule;

fn sched(prompt: &str, steps: usize) -> Vec<(usize, String)> {
    schedule(prompt, steps).entries
}

fn e(list: &[(usize, &str)]) -> Vec<(usize, String)> {
    list.iter().map(|(s, t)| (*s, t.to_string())).collect()
}

#[test]
fn editing_examples() {
    assert_eq!(sched("test", 10), e(&[(10, "test")]));
    assert_eq!(sched("a [b:3]", 10), e(&[(3, "a "), (10, "a b")]));
    assert_eq!(sched("a [b: 3]", 10), e(&[(3, "a "), (10, "a b")]));
    assert_eq!(sched("a [[[b]]:2]", 10), e(&[(2, "a "), (10, "a [[b]]")]));
    assert_eq!(sched("[(a:2):3]", 10), e(&[(3, ""), (10, "(a:2)")]));
    assert_eq!(
        sched("a [b : c : 1] d", 10),
        e(&[(1, "a b  d"), (10, "a  c  d")])
    );
    assert_eq!(
        sched("a[b:[c:d:2]:1]e", 10),
        e(&[(1, "abe"), (2, "ace"), (10, "ade")])
    );
    assert_eq!(sched("a [unbalanced", 10), e(&[(10, "a [unbalanced")]));
    assert_eq!(sched("a [b:.5] c", 10), e(&[(5, "a  c"), (10, "a b c")]));
    // AUTOMATIC1111's doctest says "not handling this right now" and expects an edit; its
    // grammar in fact rejects the `|` (lark raises), so the prompt is used as written.
    assert_eq!(sched("a [{b|d{:.5] c", 10), e(&[(10, "a [{b|d{:.5] c")]));
    assert_eq!(
        sched("((a][:b:c [d:3]", 10),
        e(&[(3, "((a][:b:c "), (10, "((a][:b:c d")])
    );
}

#[test]
fn alternation_examples() {
    let got = sched("[a|(b:1.1)]", 10);
    let want: Vec<(usize, String)> = (1..=10)
        .map(|i| (i, if i % 2 == 1 { "a" } else { "(b:1.1)" }.to_string()))
        .collect();
    assert_eq!(got, want);
    let got = sched("[fe|||]male", 10);
    let want: Vec<(usize, String)> = (1..=10)
        .map(|i| (i, if i % 4 == 1 { "female" } else { "male" }.to_string()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn unparsable_prompts_are_used_as_written() {
    assert_eq!(sched("a | b [c:d:3]", 10), e(&[(10, "a | b [c:d:3]")]));
    assert_eq!(sched("ends with \\", 10), e(&[(10, "ends with \\")]));
}

#[test]
fn sampler_step_uses_first_entry_not_before_it() {
    let s = schedule("[a:b:10]", 20);
    assert_eq!(s.entries, e(&[(10, "a"), (20, "b")]));
    assert_eq!(s.at_sampler_step(0), 0);
    assert_eq!(s.at_sampler_step(10), 0);
    assert_eq!(s.at_sampler_step(11), 1);
    assert_eq!(s.at_sampler_step(19), 1);
}

fn t(text: &str, weight: f64) -> Piece {
    Piece::Text {
        text: text.into(),
        weight,
    }
}

#[test]
fn emphasis_examples() {
    let p = |s: &str| emphasis::parse(s).unwrap();
    assert_eq!(p("normal text"), vec![t("normal text", 1.0)]);
    assert_eq!(
        p("an (important) word"),
        vec![t("an ", 1.0), t("important", 1.1), t(" word", 1.0)]
    );
    assert_eq!(p("(unbalanced"), vec![t("unbalanced", 1.1)]);
    assert_eq!(p("\\(literal\\]"), vec![t("(literal]", 1.0)]);
    assert_eq!(
        p("(unnecessary)(parens)"),
        vec![t("unnecessaryparens", 1.1)]
    );
    assert_eq!(
        p("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
        vec![
            t("a ", 1.0),
            t("house", 1.3 * 1.1 * 1.1),
            t(" ", 1.1),
            t("on", 1.1 * (1.0 / 1.1)),
            t(" a ", 1.1),
            t("hill", 0.5 * 1.1),
            t(", sun, ", 1.1),
            t("sky", 1.1 * 1.1 * 1.1 * 1.1),
            t(".", 1.1),
        ]
    );
    assert_eq!(p(""), vec![t("", 1.0)]);
    assert_eq!(p("(a : 1.5 )"), vec![t("a ", 1.5)]);
}

#[test]
fn break_is_a_marker_only_outside_emphasis() {
    let p = |s: &str| emphasis::parse(s).unwrap();
    assert_eq!(p("a BREAK b"), vec![t("a", 1.0), Piece::Break, t("b", 1.0)]);
    assert_eq!(p("aBREAK b"), vec![t("aBREAK b", 1.0)]);
    assert_eq!(
        p("(a BREAK b)"),
        vec![t("a", 1.1), t("BREAK", -1.1), t("b", 1.1)]
    );
}

#[test]
fn bad_weight_is_an_error() {
    assert!(emphasis::parse("(a:1.2.3)").is_err());
    // Without an open `(` the same text is just text.
    assert_eq!(
        emphasis::parse("a:1.2.3)").unwrap(),
        vec![t("a:1.2.3)", 1.0)]
    );
}
