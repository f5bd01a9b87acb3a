//! Writing results: atomic files ([`atomic`]), folders under the output root that are never
//! reached through a link ([`folder`]) and PNGs carrying their settings ([`png`]).

pub mod contact_sheet;
pub mod folder;
pub mod grid;
pub mod png;

/// File name of a candidate image: prompt index, candidate index and seed, so a folder listing
/// sorts by prompt and candidate and a file says how to reproduce it.
pub fn image_file_name(prompt: usize, candidate: usize, seed: u64) -> String {
    format!("p{prompt:03}-c{candidate:02}-s{seed}.png")
}
