//! TensorRT: a part's optimization profile (the min/opt/max shapes of its dynamic inputs, as
//! the provider's `trt_profile_*_shapes` strings), its engine cache folder keyed by model,
//! profile and TensorRT version, and whether a session creation loaded a cached engine or built
//! one (the cache folder's files before and after).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// One input's shapes in an optimization profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInput {
    pub name: String,
    pub min: Vec<i64>,
    pub opt: Vec<i64>,
    pub max: Vec<i64>,
}

/// An optimization profile: every dynamic input of a part with its shape range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrtProfile {
    pub inputs: Vec<ProfileInput>,
}

impl TrtProfile {
    /// `trt_profile_min_shapes`, e.g. `sample:1x4x8x8,encoder_hidden_states:1x77x768`.
    pub fn min_shapes(&self) -> String {
        self.shapes(|i| &i.min)
    }

    /// `trt_profile_opt_shapes`.
    pub fn opt_shapes(&self) -> String {
        self.shapes(|i| &i.opt)
    }

    /// `trt_profile_max_shapes`.
    pub fn max_shapes(&self) -> String {
        self.shapes(|i| &i.max)
    }

    fn shapes(&self, pick: impl Fn(&ProfileInput) -> &Vec<i64>) -> String {
        self.inputs
            .iter()
            .map(|i| {
                let dims: Vec<String> = pick(i).iter().map(i64::to_string).collect();
                format!("{}:{}", i.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A short stable key of the three shape strings (FNV-1a, 16 hex digits).
    pub fn key(&self) -> String {
        let all = format!(
            "{}|{}|{}",
            self.min_shapes(),
            self.opt_shapes(),
            self.max_shapes()
        );
        format!("{:016x}", crate::sys::hash::fnv1a64(all.bytes()))
    }
}

/// What one part's TensorRT provider is built with beyond the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrtPlan {
    /// The part, as its engine cache folder names it: `<model>/<component>`.
    pub name: String,
    /// The shapes the engine is built for; none lets TensorRT build for the shapes it sees
    /// (and rebuild when one falls outside).
    pub profile: Option<TrtProfile>,
    /// The part is float16: its engine is built with `trt_fp16_enable`.
    pub fp16: bool,
}

impl TrtPlan {
    /// The engine cache folder of this part below `root`:
    /// `<root>/<model>/<component>/trt-<TensorRT version>-<profile key>` (`dynamic` for no
    /// profile), so that another profile or TensorRT version never loads a stale engine.
    pub fn engine_dir(&self, root: &Path, trt_version: &str) -> PathBuf {
        let mut dir = root.to_path_buf();
        for part in self.name.split('/') {
            dir.push(safe_name(part));
        }
        let profile = self
            .profile
            .as_ref()
            .map(TrtProfile::key)
            .unwrap_or_else(|| "dynamic".to_string());
        dir.join(format!("trt-{}-{profile}", safe_name(trt_version)))
    }
}

/// The timing cache folder below `root` for a TensorRT version: timings are per GPU and
/// TensorRT version, shared by every model.
pub fn timing_dir(root: &Path, trt_version: &str) -> PathBuf {
    root.join(format!("trt-{}", safe_name(trt_version)))
}

/// Letters, digits, `.`, `_` and `-` kept; anything else becomes `_`.
fn safe_name(s: &str) -> String {
    let cleaned = crate::sys::names::plain(s);
    match cleaned.trim_start_matches('.') {
        "" => "_".to_string(),
        rest => rest.to_string(),
    }
}

/// The TensorRT library's version, e.g. `10.13.3`, from the file name of the newest
/// `libnvinfer.so.X.Y.Z` in `dirs`; `unknown` when there is none.
pub fn version_in(dirs: &[PathBuf]) -> String {
    let mut best: Option<Vec<u64>> = None;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix("libnvinfer.so.") else {
                continue;
            };
            let Ok(parts) = v
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u64>, _>>()
            else {
                continue;
            };
            if best.as_ref().is_none_or(|b| parts > *b) {
                best = Some(parts);
            }
        }
    }
    best.map(|v| v.iter().map(u64::to_string).collect::<Vec<_>>().join("."))
        .unwrap_or_else(|| "unknown".to_string())
}

/// Where the TensorRT libraries may be, for ONNX Runtime at `library`: pip's `tensorrt_libs`
/// beside the onnxruntime package, the library's own folder, `LD_LIBRARY_PATH`, and the usual
/// system folders.
pub fn library_dirs(library: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(capi) = library.parent() {
        dirs.push(capi.to_path_buf());
        if let Some(site) = capi.parent().and_then(Path::parent) {
            dirs.push(site.join("tensorrt_libs"));
        }
    }
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths));
    }
    dirs.extend(
        [
            "/usr/lib/x86_64-linux-gnu",
            "/usr/local/tensorrt/lib",
            "/usr/lib64",
        ]
        .into_iter()
        .map(PathBuf::from),
    );
    dirs
}

/// The files of a cache folder: name, size and modification time.
pub type CacheFiles = BTreeMap<String, (u64, Option<SystemTime>)>;

/// The files directly in `dir` (none when it does not exist).
pub fn cache_files(dir: &Path) -> CacheFiles {
    let mut files = CacheFiles::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(meta) = e.metadata()
                && meta.is_file()
            {
                files.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    (meta.len(), meta.modified().ok()),
                );
            }
        }
    }
    files
}

/// A TensorRT session being created: when it began and its engine folder's files before.
#[derive(Debug)]
pub struct BuildWatch {
    pub started: std::time::Instant,
    engine_dir: Option<PathBuf>,
    before: CacheFiles,
}

impl BuildWatch {
    pub fn start(engine_dir: Option<PathBuf>) -> BuildWatch {
        BuildWatch {
            started: std::time::Instant::now(),
            before: engine_dir.as_deref().map(cache_files).unwrap_or_default(),
            engine_dir,
        }
    }

    /// What the creation did with the engine folder; none without one.
    pub fn outcome(&self) -> Option<CacheOutcome> {
        let dir = self.engine_dir.as_deref()?;
        Some(cache_outcome(&self.before, &cache_files(dir)))
    }
}

/// What creating a TensorRT session did with its engine cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Engines were there and nothing was written: the cached engines were loaded.
    Hit { engines: usize },
    /// Files were written: TensorRT built engines (and saved them for the next start).
    Built { written: Vec<String> },
    /// No engine before or after: TensorRT serves no part of this model.
    NoEngine,
}

/// Compares a cache folder's files before and after creating a session.
pub fn cache_outcome(before: &CacheFiles, after: &CacheFiles) -> CacheOutcome {
    let written: Vec<String> = after
        .iter()
        .filter(|(name, meta)| before.get(*name) != Some(meta))
        .map(|(name, _)| name.clone())
        .collect();
    if !written.is_empty() {
        return CacheOutcome::Built { written };
    }
    match after.keys().filter(|n| n.ends_with(".engine")).count() {
        0 => CacheOutcome::NoEngine,
        engines => CacheOutcome::Hit { engines },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_unet() -> TrtProfile {
        let input = |name: &str, min: &[i64], opt: &[i64], max: &[i64]| ProfileInput {
            name: name.into(),
            min: min.to_vec(),
            opt: opt.to_vec(),
            max: max.to_vec(),
        };
        TrtProfile {
            inputs: vec![
                input("sample", &[1, 4, 8, 8], &[2, 4, 64, 64], &[16, 4, 128, 128]),
                input(
                    "encoder_hidden_states",
                    &[1, 77, 768],
                    &[2, 77, 768],
                    &[16, 231, 768],
                ),
            ],
        }
    }

    #[test]
    fn profile_strings_are_what_the_tensorrt_provider_parses() {
        let p = sd15_unet();
        assert_eq!(
            p.min_shapes(),
            "sample:1x4x8x8,encoder_hidden_states:1x77x768"
        );
        assert_eq!(
            p.opt_shapes(),
            "sample:2x4x64x64,encoder_hidden_states:2x77x768"
        );
        assert_eq!(
            p.max_shapes(),
            "sample:16x4x128x128,encoder_hidden_states:16x231x768"
        );
    }

    #[test]
    fn the_engine_folder_changes_with_model_profile_and_tensorrt_version() {
        let plan = TrtPlan {
            name: "sd15/unet".into(),
            profile: Some(sd15_unet()),
            fp16: true,
        };
        let root = Path::new("/var/cache/sdspool/trt");
        let dir = plan.engine_dir(root, "10.13.3");
        let key = sd15_unet().key();
        assert_eq!(key.len(), 16);
        assert_eq!(
            dir,
            root.join("sd15")
                .join("unet")
                .join(format!("trt-10.13.3-{key}"))
        );
        assert_ne!(dir, plan.engine_dir(root, "10.14.1"), "TensorRT version");
        let mut other = plan.clone();
        other.profile.as_mut().unwrap().inputs[0].max[0] = 8;
        assert_ne!(dir, other.engine_dir(root, "10.13.3"), "profile");
        other.profile = None;
        assert!(
            other
                .engine_dir(root, "10.13.3")
                .ends_with("trt-10.13.3-dynamic")
        );
        let mut renamed = plan.clone();
        renamed.name = "../x y/unet".into();
        assert_eq!(
            renamed.engine_dir(root, "10.13.3").parent().unwrap(),
            root.join("_").join("x_y").join("unet"),
            "names cannot leave the cache folder"
        );
    }

    #[test]
    fn the_tensorrt_version_is_the_newest_libnvinfer_found() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        for (dir, name) in [
            (&a, "libnvinfer.so.10"),
            (&a, "libnvinfer.so.10.9.0"),
            (&b, "libnvinfer.so.10.13.3"),
            (&b, "libnvinfer_plugin.so.10.14.0"),
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(version_in(&[a.clone(), b]), "10.13.3");
        assert_eq!(version_in(&[tmp.path().join("none")]), "unknown");
    }

    #[test]
    fn the_cache_outcome_compares_the_folder_before_and_after() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let empty = cache_files(dir);
        assert_eq!(cache_outcome(&empty, &empty), CacheOutcome::NoEngine);
        std::fs::write(dir.join("TensorrtExecutionProvider_1_sm90.engine"), b"e").unwrap();
        std::fs::write(dir.join("TensorrtExecutionProvider_1_sm90.profile"), b"p").unwrap();
        let built = cache_files(dir);
        assert_eq!(
            cache_outcome(&empty, &built),
            CacheOutcome::Built {
                written: vec![
                    "TensorrtExecutionProvider_1_sm90.engine".into(),
                    "TensorrtExecutionProvider_1_sm90.profile".into()
                ]
            }
        );
        assert_eq!(
            cache_outcome(&built, &cache_files(dir)),
            CacheOutcome::Hit { engines: 1 }
        );
        std::fs::write(
            dir.join("TensorrtExecutionProvider_1_sm90.engine"),
            b"rebuilt",
        )
        .unwrap();
        assert!(matches!(
            cache_outcome(&built, &cache_files(dir)),
            CacheOutcome::Built { .. }
        ));
    }
}
