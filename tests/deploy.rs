//! deploy/: the Kubernetes manifests validated against the Kubernetes API schemas
//! (`kubernetes-validate --strict`, from PyPI, with the schemas bundled: offline), the KEDA
//! ScaledObjects checked against the Deployments and the daemon's own metric names, the
//! ConfigMap's config.yaml parsed by sdspool, and the Slurm array script checked with shellcheck
//! and run for real: two array tasks on one spool render its jobs, each exactly once, and end.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

fn kube_dir() -> PathBuf {
    common::root().join("deploy/kubernetes")
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The manifests the kustomization applies.
fn resources() -> Vec<PathBuf> {
    let k = yaml(&kube_dir().join("kustomization.yaml"));
    let listed: Vec<PathBuf> = k["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| kube_dir().join(r.as_str().unwrap()))
        .collect();
    let mut on_disk: Vec<String> = common::names(&kube_dir());
    on_disk.retain(|n| n.ends_with(".yaml") && n != "kustomization.yaml");
    let mut names: Vec<String> = listed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, on_disk, "kustomization.yaml lists every manifest");
    listed
}

/// `kubernetes-validate` as tests/setup-tools.sh installs it (target/tools/), or on the PATH.
fn kubernetes_validate() -> Option<Command> {
    let local = common::root().join("target/tools/kubernetes-validate");
    let mut cmd = if local.join("kubernetes_validate").is_dir() {
        let mut c = Command::new("python3");
        c.env("PYTHONPATH", &local)
            .args(["-m", "kubernetes_validate"]);
        c
    } else {
        Command::new("kubernetes-validate")
    };
    let found = Command::new(cmd.get_program())
        .args(cmd.get_args())
        .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "kubernetes-validate is missing (tests/setup-tools.sh installs it)"
        );
        eprintln!("kubernetes-validate not installed: skipping (tests/setup-tools.sh)");
        return None;
    }
    cmd.args(["--strict", "--kubernetes-version", "1.33.0"]);
    Some(cmd)
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schemas() {
    let files = resources();
    let Some(mut validate) = kubernetes_validate() else {
        return;
    };
    // KEDA's ScaledObject is a custom resource, without a schema there: checked below.
    let core: Vec<&PathBuf> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .contains("\nkind: ScaledObject\n")
        })
        .collect();
    let out = validate.args(&core).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("ERROR") && !text.contains("WARN"), "{text}");
    let resources: usize = core
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.lines().filter(|l| l.starts_with("kind:")).count()
        })
        .sum();
    assert_eq!(
        text.matches(" passed for resource ").count(),
        resources,
        "{text}"
    );
}

#[test]
fn each_gpu_pool_has_probes_gpus_the_shared_volume_and_a_scaler_on_the_queue() {
    let docs: Vec<Value> = resources()
        .iter()
        .filter(|f| !f.ends_with("web.yaml"))
        .map(|f| yaml(f))
        .collect();
    let kind = |k: &'static str| docs.iter().filter(move |d| d["kind"] == k);
    let pvc = kind("PersistentVolumeClaim").next().unwrap();
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteMany");
    let pools: Vec<&Value> = kind("Deployment").collect();
    assert!(pools.len() >= 2);
    let metrics = sdspool::app::web::metrics::Telemetry::new()
        .encode(&Default::default())
        .unwrap();
    for d in &pools {
        let name = d["metadata"]["name"].as_str().unwrap();
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1, "{name}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
        assert_eq!(
            pod["volumes"][0]["persistentVolumeClaim"]["claimName"],
            pvc["metadata"]["name"]
        );
        // One KEDA ScaledObject per pool, on metrics the daemon exports.
        let so = kind("ScaledObject")
            .find(|s| s["spec"]["scaleTargetRef"]["name"] == name)
            .unwrap_or_else(|| panic!("no ScaledObject for {name}"));
        let trigger = &so["spec"]["triggers"][0];
        assert_eq!(trigger["type"], "prometheus");
        let query = trigger["metadata"]["query"].as_str().unwrap();
        assert!(query.contains("sdspool_queue_length"), "{query}");
        for metric in query.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            if metric.starts_with("sdspool_") {
                assert!(
                    metrics.lines().any(|l| l.starts_with(metric)),
                    "{metric} is not exported:\n{metrics}"
                );
            }
        }
        assert!(metrics.contains("sdspool_jobs{state=\"running\"}"));
    }
    // The ConfigMap's config.yaml is one sdspool reads, serving where the probes look.
    let cm = kind("ConfigMap").next().unwrap();
    let config = sdspool::app::config::Config::parse(
        cm["data"]["config.yaml"].as_str().unwrap(),
        Path::new("/etc/sdspool/config.yaml"),
    )
    .unwrap();
    assert_eq!(config.spool.dir, Path::new("/data/spool"));
    assert_eq!(
        config.serve.listen.as_deref(),
        Some("0.0.0.0:8080"),
        "the probes' port"
    );
}

const SLURM: &str = "deploy/slurm/sdspool-array.sh";

#[test]
fn the_slurm_script_passes_shellcheck() {
    let ok = Command::new("bash")
        .args(["-n", SLURM])
        .current_dir(common::root())
        .status()
        .unwrap();
    assert!(ok.success());
    let Ok(out) = Command::new("shellcheck")
        .arg(SLURM)
        .current_dir(common::root())
        .output()
    else {
        assert!(
            std::env::var("CI").is_err(),
            "shellcheck is missing (tests/setup-tools.sh installs it)"
        );
        eprintln!("shellcheck not installed: skipping (tests/setup-tools.sh)");
        return;
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Two array tasks of the Slurm script on one spool, as sbatch would start them.
#[test]
fn two_slurm_array_tasks_share_a_spool_and_end_when_it_is_empty() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let lib = sdspool::runtime::library::find_in_local_dir(&common::root().join(".ort")).unwrap();
    let config = root.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "onnxruntime:\n  library: {lib}\nspool:\n  dir: {root}/spool\n  rescan_seconds: 1\n  settle_seconds: 0\noutput_dir: {root}/output\n\
             defaults:\n  width: 64\n  height: 64\n  steps: 2\n  candidates: 1\n\
             default_model: tiny-sd\nmodels:\n  tiny-sd:\n    path: {sd}\n",
            lib = lib.display(),
            root = root.display(),
            sd = common::model_dir("tiny-sd").display(),
        ),
    )
    .unwrap();
    let incoming = root.join("spool/incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    for k in 0..4 {
        std::fs::write(incoming.join(format!("j{k}.yaml")), "prompts: [a cat]\n").unwrap();
    }
    let tasks: Vec<common::Running> = (0..2)
        .map(|task| {
            common::Running::spawn(
                Command::new("bash")
                    .arg(common::root().join(SLURM))
                    .env("SDSPOOL", env!("CARGO_BIN_EXE_sdspool"))
                    .env("SDSPOOL_CONFIG", &config)
                    .env("SLURM_ARRAY_JOB_ID", "42")
                    .env("SLURM_ARRAY_TASK_ID", task.to_string())
                    .stdout(std::process::Stdio::null()),
            )
        })
        .collect();
    for mut t in tasks {
        let status = common::wait_exit(&mut t, Duration::from_secs(120));
        assert!(status.success(), "{}", common::stderr_of(&mut t));
    }
    assert_eq!(
        common::names(&root.join("spool/done"))
            .iter()
            .filter(|n| n.ends_with(".result.yaml"))
            .count(),
        4
    );
    assert!(common::names(&incoming).is_empty());
    assert!(common::names(&root.join("spool/failed")).is_empty());
}
