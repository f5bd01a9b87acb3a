//! What a job's gallery shows, built from its manifest: every candidate by rank with its
//! CLIPScore, seed and settings, contact sheets, sweep grids with their axes, rejected candidates
//! apart; and the list of jobs with search. Shared by the server's pages and the static
//! `index.html` ([`super::static_index`]), which differ only in their links ([`Links`]).

use serde::Deserialize;
use std::sync::Arc;

use serde::Serialize;

use super::AppState;
use super::files::open_job_folder;
use super::job_index::Row;
use crate::jobs::run::manifest::{FILE as MANIFEST, Manifest};

/// Query of a job page.
#[derive(Debug, Default, Deserialize)]
pub struct JobQuery {
    /// 1-based page.
    pub page: Option<usize>,
    /// Only prompts containing this text.
    pub q: Option<String>,
    /// Full-size view of this image (a file the manifest lists).
    pub image: Option<String>,
}

/// Query of the job list.
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    pub page: Option<usize>,
    pub q: Option<String>,
    pub model: Option<String>,
    /// `YYYY-MM-DD`: jobs whose manifest was last written that day (UTC).
    pub date: Option<String>,
}

/// How the gallery links to images: through the server, or relative to the job folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    Server,
    Static,
}

/// One candidate as the gallery shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Card {
    pub prompt_index: usize,
    pub prompt: String,
    pub candidate: usize,
    pub seed: u64,
    pub rank: Option<usize>,
    pub clip_score: Option<f32>,
    pub kept: bool,
    pub file: String,
    /// Full-size image and thumbnail URLs.
    pub href: String,
    pub thumb: String,
    /// Where the full-size view with the PNG's parameters is (server only).
    pub view: Option<String>,
    pub settings: String,
}

/// A candidate that failed (no image), and why.
#[derive(Debug, Clone, Serialize)]
pub struct FailedCard {
    pub prompt_index: usize,
    pub prompt: String,
    pub candidate: usize,
    pub seed: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sheet {
    pub prompt_index: usize,
    pub prompt: String,
    pub href: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Grid {
    pub file: String,
    pub href: String,
    pub prompt: String,
    pub across: Vec<String>,
    pub down: Vec<String>,
}

/// A job's gallery page.
#[derive(Debug, Clone, Serialize)]
pub struct GalleryView {
    pub folder: String,
    pub job: String,
    pub model: String,
    pub scheduler: String,
    pub execution_provider: String,
    pub size: String,
    pub complete: bool,
    pub prompts: usize,
    pub images: usize,
    /// Kept candidates of this page, prompt by prompt, each prompt's best first.
    pub kept: Vec<Card>,
    /// Rejected candidates of this page (shown folded).
    pub rejected: Vec<Card>,
    /// Candidates of the job that failed, with why (they have no image).
    pub failed: Vec<FailedCard>,
    pub sheets: Vec<Sheet>,
    pub grids: Vec<Grid>,
    pub manifest_href: String,
    pub page: usize,
    pub pages: usize,
    pub q: String,
    pub static_page: bool,
}

/// The full-size view of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub folder: String,
    pub card: Card,
    pub parameters: Option<String>,
}

pub enum JobPage {
    Gallery(GalleryView),
    Image(ImageView),
}

fn encode_path(rel: &str) -> String {
    rel.split('/')
        .map(|p| {
            p.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

fn href(links: Links, folder: &str, file: &str, kind: &str) -> String {
    match links {
        Links::Server => format!("/{kind}/{}/{}", encode_path(folder), encode_path(file)),
        Links::Static => encode_path(file),
    }
}

/// Every candidate of `m`, prompt by prompt, each prompt's in rank order (unranked last, by
/// candidate index), filtered by `q` (prompt text, case-insensitive).
pub fn cards(m: &Manifest, folder: &str, links: Links, q: &str) -> Vec<Card> {
    let q = q.to_lowercase();
    let mut out = Vec::new();
    for p in &m.prompts {
        if !q.is_empty() && !p.prompt.to_lowercase().contains(&q) {
            continue;
        }
        let mut cands: Vec<_> = p.candidates.iter().filter(|c| c.file.is_some()).collect();
        cands.sort_by_key(|c| (c.rank.unwrap_or(usize::MAX), c.candidate));
        for c in cands {
            let file = c.file.clone().unwrap_or_default();
            out.push(Card {
                prompt_index: p.index,
                prompt: p.prompt.clone(),
                candidate: c.candidate,
                seed: c.seed,
                rank: c.rank,
                clip_score: c.clip_score,
                kept: c.kept,
                href: href(links, folder, &file, "files"),
                thumb: match links {
                    Links::Server => href(links, folder, &file, "thumbs"),
                    Links::Static => encode_path(&file),
                },
                view: (links == Links::Server)
                    .then(|| format!("/jobs/{}?image={}", encode_path(folder), encode_path(&file))),
                settings: format!(
                    "{} steps, {}, CFG {}, {}x{}",
                    p.steps,
                    p.scheduler.map_or("", |k| k.name()),
                    p.guidance,
                    p.width,
                    p.height
                ),
                file,
            });
        }
    }
    out
}

/// The gallery of `m` (page `page`, 1-based, of `page_size` candidates).
pub fn gallery(
    m: &Manifest,
    folder: &str,
    links: Links,
    q: &str,
    page: usize,
    page_size: usize,
) -> GalleryView {
    let all = cards(m, folder, links, q);
    let pages = all.len().div_ceil(page_size).max(1);
    let page = page.clamp(1, pages);
    let (kept, rejected): (Vec<Card>, Vec<Card>) = all
        .into_iter()
        .skip((page - 1) * page_size)
        .take(page_size)
        .partition(|c| c.kept);
    GalleryView {
        folder: folder.to_string(),
        job: m.job.clone(),
        model: m.model.clone(),
        scheduler: m.scheduler.map_or_else(String::new, |k| k.to_string()),
        execution_provider: m.execution_provider.clone(),
        size: format!("{}x{}", m.width, m.height),
        complete: m.complete,
        prompts: m.prompts.len(),
        images: m.images_written(),
        kept,
        rejected,
        failed: m
            .failed()
            .filter_map(|(p, c)| {
                Some(FailedCard {
                    prompt_index: p.index,
                    prompt: p.prompt.clone(),
                    candidate: c.candidate,
                    seed: c.seed,
                    reason: c.failure?.to_string(),
                })
            })
            .collect(),
        sheets: m
            .prompts
            .iter()
            .filter_map(|p| {
                Some(Sheet {
                    prompt_index: p.index,
                    prompt: p.prompt.clone(),
                    href: href(links, folder, p.contact_sheet.as_deref()?, "files"),
                })
            })
            .collect(),
        grids: m
            .grids
            .iter()
            .map(|g| Grid {
                file: g.file.clone(),
                href: href(links, folder, &g.file, "files"),
                prompt: g.prompt.clone(),
                across: g.across.clone(),
                down: g.down.clone(),
            })
            .collect(),
        manifest_href: href(links, folder, MANIFEST, "files"),
        page,
        pages,
        q: q.to_string(),
        static_page: links == Links::Static,
    }
}

/// A job page: its gallery, or one image's full-size view.
pub fn job_view(state: &AppState, rel: &str, query: &JobQuery) -> Option<JobPage> {
    let manifest: Arc<Manifest> = state.manifests.get(&state.config.output_dir, rel)?;
    if let Some(image) = &query.image {
        let card = cards(&manifest, rel, Links::Server, "")
            .into_iter()
            .find(|c| &c.file == image)?;
        let dir = open_job_folder(&state.config.output_dir, rel)?;
        let parameters = dir
            .read_at(&card.file)
            .ok()
            .and_then(|bytes| png_parameters(&bytes));
        return Some(JobPage::Image(ImageView {
            folder: rel.to_string(),
            card,
            parameters,
        }));
    }
    Some(JobPage::Gallery(gallery(
        &manifest,
        rel,
        Links::Server,
        query.q.as_deref().unwrap_or(""),
        query.page.unwrap_or(1),
        state.config.serve.page_size(),
    )))
}

/// The `parameters` text chunk of a PNG (AUTOMATIC1111's settings line).
pub fn png_parameters(bytes: &[u8]) -> Option<String> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .ok()?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return Some(t.text.clone());
    }
    info.utf8_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .and_then(|t| t.get_text().ok())
}

/// One job in the list.
#[derive(Debug, Clone, Serialize)]
pub struct JobRow {
    pub folder: String,
    pub href: String,
    pub job: String,
    pub model: String,
    pub first_prompt: String,
    pub prompts: usize,
    pub images: usize,
    pub date: String,
    pub complete: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobsView {
    pub rows: Vec<JobRow>,
    pub page: usize,
    pub pages: usize,
    pub q: String,
    pub model: String,
    pub date: String,
    pub total: usize,
}

/// Job folders directly under the output root, newest first, filtered and paged. The rows come
/// from the job index ([`super::job_index`]), which reads only manifests that are new or
/// changed; the filter runs over the rows and only the page's rows are built.
pub fn jobs_view(state: &AppState, query: &JobsQuery) -> JobsView {
    let q = query.q.clone().unwrap_or_default().to_lowercase();
    let model = query.model.clone().unwrap_or_default();
    let date = query.date.clone().unwrap_or_default();
    let per_page = state.config.serve.page_size();
    state.jobs.with(&state.config.output_dir, |index| {
        let mut found: Vec<(&str, &Row)> = index
            .rows()
            .filter(|(_, r)| model.is_empty() || r.model == model)
            .filter(|(_, r)| date.is_empty() || day(r.stamp.modified) == date)
            .filter(|(_, r)| r.prompt_contains(&q))
            .collect();
        found.sort_by(|a, b| (b.1.stamp.modified, b.0).cmp(&(a.1.stamp.modified, a.0)));
        let pages = found.len().div_ceil(per_page).max(1);
        let page = query.page.unwrap_or(1).clamp(1, pages);
        JobsView {
            total: found.len(),
            rows: found
                .into_iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .map(|(folder, r)| JobRow {
                    href: format!("/jobs/{}", encode_path(folder)),
                    job: r.job.clone(),
                    model: r.model.clone(),
                    first_prompt: r.first_prompt.clone(),
                    prompts: r.prompts.len(),
                    images: r.images,
                    date: day(r.stamp.modified),
                    complete: r.complete,
                    folder: folder.to_string(),
                })
                .collect(),
            page,
            pages,
            q,
            model,
            date,
        }
    })
}

/// `YYYY-MM-DD` (UTC) of `at`.
fn day(at: std::time::SystemTime) -> String {
    crate::spool::fsops::rfc3339::format(at)
        .chars()
        .take(10)
        .collect()
}
