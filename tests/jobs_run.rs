//! Running whole jobs through the worker: the manifest lists every candidate with its seed,
//! scores and rank; keep_top moves or deletes the rest; a stopped job continues from its
//! manifest without rendering finished candidates again.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use sdspool::app::config::Config;
use sdspool::jobs::job::{self, Job};
use sdspool::jobs::run::{JobRunError, RunOptions, Worker};
use sdspool::engine::rerank::Reranker;

fn config_with_output(out: &Path) -> Config {
    let mut c = common::fixture_config();
    c.output_dir = out.to_path_buf();
    c
}

fn job(config: &Config, dir: &Path, body: &str) -> Job {
    let p = dir.join("job.yaml");
    std::fs::write(&p, body).unwrap();
    job::load(&p, config).unwrap()
}

fn worker(config: &Config) -> Worker {
    Worker::load(common::runtime(), config, 0, Some("tiny-sd")).unwrap()
}

const JOB: &str = "prompts:\n  - a photo of a cat\n  - prompt: a red circle\n    candidates: 3\ncandidates: 4\nseed: 100\nsteps: 4\nscheduler: euler_a\nwidth: 64\nheight: 64\n";

#[test]
fn the_manifest_lists_every_candidate_with_seed_scores_and_rank() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with_output(&tmp.path().join("out"));
    let j = job(&config, tmp.path(), JOB);
    let mut w = worker(&config);
    let outcome = w
        .run(
            &j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(outcome.rendered, 7);
    let m = &outcome.manifest;
    assert!(m.complete);
    assert_eq!(
        (
            m.model.as_str(),
            m.scheduler.as_str(),
            m.execution_provider.as_str()
        ),
        ("tiny-sd", "euler_a", "cpu")
    );
    assert_eq!(m.prompts.len(), 2);

    // Scores recomputed independently from the written files.
    let mut reranker =
        Reranker::load(common::runtime(), config.rerank.as_ref().unwrap(), 0).unwrap();
    for (p, want_seeds) in m
        .prompts
        .iter()
        .zip([vec![100, 101, 102, 103], vec![100, 101, 102]])
    {
        let seeds: Vec<u64> = p.candidates.iter().map(|c| c.seed).collect();
        assert_eq!(seeds, want_seeds);
        let images: Vec<image::RgbImage> = p
            .candidates
            .iter()
            .map(|c| {
                image::open(outcome.dir.join(c.file.as_ref().unwrap()))
                    .unwrap()
                    .to_rgb8()
            })
            .collect();
        let scores = reranker.score(&p.prompt, &images).unwrap();
        let mut ranks: Vec<usize> = p.candidates.iter().map(|c| c.rank.unwrap()).collect();
        for (c, s) in p.candidates.iter().zip(&scores) {
            assert!((c.cosine.unwrap() - s.cosine).abs() < 1e-6);
            assert!((c.clip_score.unwrap() - 100.0 * s.cosine.max(0.0)).abs() < 1e-4);
            assert!(c.kept);
        }
        // rank 1 has the highest cosine, and ranks are a permutation
        let best = p.candidates.iter().find(|c| c.rank == Some(1)).unwrap();
        assert!(
            p.candidates
                .iter()
                .all(|c| c.cosine.unwrap() <= best.cosine.unwrap())
        );
        ranks.sort();
        assert_eq!(ranks, (1..=p.candidates.len()).collect::<Vec<_>>());
        assert!(
            outcome
                .dir
                .join(p.contact_sheet.as_ref().unwrap())
                .is_file()
        );
    }

    // Running the same job again renders nothing.
    let again = w
        .run(
            &j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(again.rendered, 0);
    assert_eq!(again.dir, outcome.dir);
}

/// JOB with keep_top, the rest moved to rejected/ or deleted.
fn keep_top_jobs() -> [(&'static str, String); 2] {
    [
        ("move", format!("{JOB}keep_top: 2\nid: moving\n")),
        (
            "delete",
            format!("{JOB}keep_top: 1\nrejected: delete\nid: deleting\n"),
        ),
    ]
}

#[test]
fn keep_top_moves_or_deletes_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with_output(&tmp.path().join("out"));
    let mut w = worker(&config);
    for (how, body) in keep_top_jobs() {
        let j = job(&config, tmp.path(), &body);
        let o = w
            .run(
                &j,
                &RunOptions::default(),
                &AtomicBool::new(false),
                &mut |_| {},
            )
            .unwrap();
        let keep = j.keep_top.unwrap() as usize;
        for p in &o.manifest.prompts {
            assert_eq!(
                p.candidates.len(),
                j.prompts[p.index].seeds.len(),
                "every candidate is recorded"
            );
            for c in &p.candidates {
                let rank = c.rank.unwrap();
                assert_eq!(c.kept, rank <= keep, "{how}: rank {rank}");
                match (how, c.kept) {
                    (_, true) => assert!(o.dir.join(c.file.as_ref().unwrap()).is_file()),
                    ("move", false) => {
                        let f = c.file.as_ref().unwrap();
                        assert!(f.starts_with("rejected/") && o.dir.join(f).is_file(), "{f}");
                    }
                    (_, false) => {
                        assert!(c.file.is_none());
                        assert!(
                            !o.dir
                                .join(sdspool::jobs::output::image_file_name(
                                    p.index,
                                    c.candidate,
                                    c.seed
                                ))
                                .exists()
                        );
                    }
                }
            }
        }
    }
}

/// A kill after keep_top moved or deleted the rejected candidates but before the manifest
/// recorded it: the next run renders nothing again and ends with the same manifest and files.
#[test]
fn a_kill_while_keep_top_files_the_rest_renders_nothing_again() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with_output(&tmp.path().join("out"));
    let mut w = worker(&config);
    for (how, body) in keep_top_jobs() {
        let j = job(&config, tmp.path(), &body);
        let run = |w: &mut Worker| {
            w.run(
                &j,
                &RunOptions::default(),
                &AtomicBool::new(false),
                &mut |_| {},
            )
            .unwrap()
        };
        let done = run(&mut w);
        let before = common::tree(&done.dir);

        // The manifest as it was just before the kill: scored and ranked, files not yet filed.
        let mut m = done.manifest.clone();
        m.complete = false;
        for p in &mut m.prompts {
            p.finished = false;
            for c in p.candidates.iter_mut().filter(|c| !c.kept) {
                c.file = Some(sdspool::jobs::output::image_file_name(
                    p.index,
                    c.candidate,
                    c.seed,
                ));
            }
        }
        m.write(&done.dir).unwrap();
        let mut expected = done.manifest.prompts.clone();
        let mut expected_files = before.clone();
        if how == "move" {
            // One moved file also removed by hand meanwhile: recorded without a file, not
            // rendered again.
            let c = expected[0].candidates.iter_mut().find(|c| !c.kept).unwrap();
            let gone = c.file.take().unwrap();
            std::fs::remove_file(done.dir.join(&gone)).unwrap();
            expected_files.retain(|f| *f != Path::new(&gone));
        }

        let again = run(&mut w);
        assert_eq!(again.dir, done.dir, "{how}");
        assert_eq!(again.rendered, 0, "{how}: no candidate is rendered again");
        assert_eq!(again.manifest.prompts, expected, "{how}");
        assert!(again.manifest.complete, "{how}");
        assert_eq!(
            common::tree(&again.dir),
            expected_files,
            "{how}: the same files"
        );
    }
}

#[test]
fn a_stopped_job_continues_without_rendering_finished_candidates_again() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with_output(&tmp.path().join("out"));
    let j = job(&config, tmp.path(), JOB);
    let mut w = worker(&config);

    // Uninterrupted reference, in its own folder.
    let reference = w
        .run(
            &j,
            &RunOptions {
                dir: Some(tmp.path().join("reference")),
                ..Default::default()
            },
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();

    // Stop during the second prompt: the first prompt's four images are written by then.
    let stop = AtomicBool::new(false);
    let err = w
        .run(&j, &RunOptions::default(), &stop, &mut |p| {
            if p.prompt == 1 && p.step == 2 {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .unwrap_err();
    assert!(matches!(err, JobRunError::Stopped), "{err}");

    let mut steps_seen = 0;
    let resumed = w
        .run(
            &j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |p| {
                assert_eq!(p.prompt, 1, "prompt 0 is not rendered again");
                steps_seen += 1;
            },
        )
        .unwrap();
    assert_eq!(resumed.rendered, 3);
    assert_eq!(resumed.manifest.runs, 2);
    assert!(steps_seen > 0);
    for (a, b) in resumed
        .manifest
        .candidates()
        .zip(reference.manifest.candidates())
    {
        let ia = image::open(resumed.dir.join(a.file.as_ref().unwrap()))
            .unwrap()
            .to_rgb8();
        let ib = image::open(reference.dir.join(b.file.as_ref().unwrap()))
            .unwrap()
            .to_rgb8();
        assert_eq!(
            ia, ib,
            "candidate {} of prompt seed {}",
            a.candidate, a.seed
        );
        assert_eq!(a.rank, b.rank);
    }
}

#[test]
fn another_job_with_the_same_output_name_gets_its_own_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with_output(&tmp.path().join("out"));
    let mut w = worker(&config);
    let a = job(
        &config,
        tmp.path(),
        "prompts: [a cat]\ncandidates: 1\nseed: 1\nsteps: 2\nwidth: 64\nheight: 64\noutput: shared\n",
    );
    let b = job(
        &config,
        tmp.path(),
        "prompts: [a dog]\ncandidates: 1\nseed: 1\nsteps: 2\nwidth: 64\nheight: 64\noutput: shared\n",
    );
    let oa = w
        .run(
            &a,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    let ob = w
        .run(
            &b,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(oa.dir.file_name().unwrap(), "shared");
    assert_eq!(ob.dir.file_name().unwrap(), "shared-2");
    assert_eq!(ob.rendered, 1);
}

#[test]
fn jobs_asking_for_scores_without_a_rerank_model_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config_with_output(&tmp.path().join("out"));
    config.rerank = None;
    let p = tmp.path().join("k.yaml");
    std::fs::write(&p, "prompts: [a cat]\nkeep_top: 1\n").unwrap();
    let e = job::load(&p, &config).unwrap_err().to_string();
    assert!(
        e.contains("`keep_top`") && e.contains("no rerank model"),
        "{e}"
    );
    std::fs::write(&p, "prompts: [a cat]\nrerank: true\n").unwrap();
    let e = job::load(&p, &config).unwrap_err().to_string();
    assert!(
        e.contains("`rerank` is true but no rerank model is configured"),
        "{e}"
    );
}

#[test]
fn a_job_can_turn_reranking_off() {
    let tmp = tempfile::tempdir().unwrap();
    let config = config_with_output(&tmp.path().join("out"));
    let j = job(
        &config,
        tmp.path(),
        "prompts: [a cat]\ncandidates: 2\nseed: 1\nsteps: 2\nwidth: 64\nheight: 64\nrerank: false\n",
    );
    let o = worker(&config)
        .run(
            &j,
            &RunOptions::default(),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(o.manifest.rerank_model, None);
    for c in o.manifest.candidates() {
        assert!(c.cosine.is_none() && c.clip_score.is_none() && c.rank.is_none() && c.kept);
        assert!(o.dir.join(c.file.as_ref().unwrap()).is_file());
    }
    assert!(
        o.dir
            .join(o.manifest.prompts[0].contact_sheet.as_ref().unwrap())
            .is_file()
    );
}
