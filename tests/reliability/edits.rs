//! A job file that changes after it is claimed (issue 17): what was rendered is what is filed,
//! the change is reported, and a job resumed after a kill continues from the bytes it was
//! claimed with, in its first output folder.

use std::time::{Duration, Instant};

use super::harness::{self, Env, Settings};

#[test]
fn a_job_edited_while_it_runs_resumes_into_its_first_folder_and_is_filed_as_claimed() {
    let started = Instant::now();
    let env = Env::new(Settings {
        rerank: false,
        ..Settings::default()
    });
    // No seed: the seed comes from the job file, so an edit would change the job's fingerprint.
    let mut body = String::from("prompts:\n");
    for p in 0..8 {
        body.push_str(&format!("  - an edited job, prompt {p}\n"));
    }
    body.push_str("candidates: 2\nsteps: 5\n");
    env.submit("edited.yaml", body.as_bytes());
    let mut d = env.start(&[]);
    let folder = env.output.join("edited");
    harness::wait_for("images on disk", Duration::from_secs(60), || {
        harness::names(&folder)
            .iter()
            .filter(|n| harness::is_candidate_image(n))
            .count()
            >= 2
    });
    d.kill9();
    // Edited in place while it waits in running/ to be resumed.
    let running = env.spool("running").join("edited.yaml");
    assert!(running.is_file());
    let edited = body.replace("prompt 3", "prompt three, edited");
    std::fs::write(&running, &edited).unwrap();

    let mut last = env.start(&["--until-idle"]);
    let status = last.wait(Duration::from_secs(180));
    let log = last.log_text();
    assert!(status.success(), "{}", harness::tail(&log, 40));
    assert_eq!(
        harness::output_entries(&env.output),
        ["edited"],
        "resumed into a second folder"
    );
    let (images, problems) = harness::check_output(&folder, 8, 2);
    assert!(problems.is_empty(), "{problems:#?}");
    let m = sdspool::jobs::run::manifest::Manifest::read(&folder).unwrap();
    assert_eq!(m.runs, 2);
    // The file filed is the one rendered; the change is in the log and the result.
    let done = env.spool("done");
    assert_eq!(
        std::fs::read_to_string(done.join("edited.yaml")).unwrap(),
        body
    );
    let result = std::fs::read_to_string(done.join("edited.result.yaml")).unwrap();
    assert!(
        result.contains("job_file_changed:") && result.contains("changed after it was claimed"),
        "{result}"
    );
    assert!(
        log.contains("changed after it was claimed"),
        "{}",
        harness::tail(&log, 40)
    );
    harness::report(
        "edited-job",
        &[
            (
                "output_folders",
                harness::output_entries(&env.output).len().to_string(),
            ),
            ("runs", m.runs.to_string()),
            ("images", images.to_string()),
            ("seconds", started.elapsed().as_secs().to_string()),
        ],
    );
}
