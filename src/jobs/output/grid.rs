//! The grid of a sweep, like AUTOMATIC1111's X/Y plot: one cell per combination of the swept
//! values, the values of the inner axes as column headings on top and those of the outer axes as
//! row headings on the left (8x8 bitmap font, no font files needed).
//!
//! With `k` axes, the inner `ceil(k / 2)` go across and the rest down, so two axes make a plain
//! X/Y plot and a prompt matrix of two optional parts a 2 x 2 grid with the first part across,
//! as AUTOMATIC1111 draws it.

use image::{Rgb, RgbImage};

use super::contact_sheet::{BACKGROUND, draw_text};

const GAP: u32 = 8;
/// Label lines are wrapped at this many characters at most.
const MAX_LABEL_CHARS: usize = 28;
/// Grids larger than this many pixels have their cells scaled down.
pub const MAX_GRID_PIXELS: u64 = 64 * 1024 * 1024;

/// One cell: its position and image.
#[derive(Debug, Clone)]
pub struct Cell<'a> {
    /// Index of the value on each axis (outermost first).
    pub coords: Vec<usize>,
    pub image: &'a RgbImage,
}

/// An axis: its values' labels in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Axis {
    pub labels: Vec<String>,
}

/// Which axes go across (the inner ones) and which down: (across, down), as indices into
/// `axes`.
pub fn split_axes(count: usize) -> (Vec<usize>, Vec<usize>) {
    let across = count.div_ceil(2);
    let down = count - across;
    ((down..count).collect(), (0..down).collect())
}

/// The column (with the across axes) or row (with the down axes) of a cell at `coords`:
/// mixed-radix over `which`, the first the slowest.
pub fn position(coords: &[usize], which: &[usize], axes: &[Axis]) -> usize {
    which
        .iter()
        .fold(0, |acc, &a| acc * axes[a].labels.len() + coords[a])
}

/// Words of `text` wrapped into lines of at most `width` characters (longer words are cut).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: String = word.to_string();
        loop {
            let len = line.chars().count();
            let wlen = word.chars().count();
            if len == 0 && wlen > width {
                let cut: String = word.chars().take(width).collect();
                lines.push(cut);
                word = word.chars().skip(width).collect();
                continue;
            }
            if len > 0 && len + 1 + wlen > width {
                lines.push(std::mem::take(&mut line));
                continue;
            }
            if len > 0 {
                line.push(' ');
            }
            line.push_str(&word);
            break;
        }
    }
    if !line.is_empty() || lines.is_empty() {
        lines.push(line);
    }
    lines
}

/// The heading of column (or row) `index` over the axes `which`: each axis's label, wrapped
/// to `chars` characters.
fn heading(axes: &[Axis], which: &[usize], index: usize, chars: usize) -> Vec<String> {
    let mut rest = index;
    let mut parts = vec![String::new(); which.len()];
    for (k, &a) in which.iter().enumerate().rev() {
        let n = axes[a].labels.len();
        parts[k] = axes[a].labels[rest % n].clone();
        rest /= n;
    }
    parts.iter().flat_map(|p| wrap(p, chars)).collect()
}

/// Draws the grid. Cells missing from `cells` stay empty.
pub fn render(axes: &[Axis], cells: &[Cell<'_>]) -> RgbImage {
    render_within(axes, cells, MAX_GRID_PIXELS)
}

/// [`render`], shrinking the cells when they would cover more than `max_pixels`.
pub fn render_within(axes: &[Axis], cells: &[Cell<'_>], max_pixels: u64) -> RgbImage {
    let (across, down) = split_axes(axes.len());
    let columns: usize = across.iter().map(|&a| axes[a].labels.len()).product();
    let rows: usize = down.iter().map(|&a| axes[a].labels.len()).product();
    let img_w = cells.iter().map(|c| c.image.width()).max().unwrap_or(64);
    let img_h = cells.iter().map(|c| c.image.height()).max().unwrap_or(64);
    // Very large sweeps: scale the cells down to keep the grid within MAX_GRID_PIXELS.
    let area = (columns.max(1) * rows.max(1)) as u64 * u64::from(img_w) * u64::from(img_h);
    let shrink = if area > max_pixels {
        (max_pixels as f64 / area as f64).sqrt()
    } else {
        1.0
    };
    let cell_img_w = ((f64::from(img_w) * shrink) as u32).max(8);
    let cell_img_h = ((f64::from(img_h) * shrink) as u32).max(8);
    let scale = if cell_img_w >= 200 { 2 } else { 1 };
    let char_w = 8 * scale;
    let line_h = 10 * scale;

    // Column headings: each across axis's label, wrapped to the cell's width (cells widen to
    // fit at least a dozen characters).
    let longest = |a: usize| {
        axes[a]
            .labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(0)
    };
    let head_chars = across
        .iter()
        .map(|&a| longest(a))
        .max()
        .unwrap_or(0)
        .min(12);
    let cell_w = cell_img_w.max(head_chars as u32 * char_w);
    let cell_chars = (cell_w / char_w) as usize;
    let column_heading = |c: usize| heading(axes, &across, c, cell_chars.min(MAX_LABEL_CHARS));
    let row_chars = down
        .iter()
        .map(|&a| longest(a))
        .max()
        .unwrap_or(0)
        .min(MAX_LABEL_CHARS);
    let row_heading = |r: usize| heading(axes, &down, r, row_chars.max(1));
    let head_lines = (0..columns)
        .map(|c| column_heading(c).len())
        .max()
        .unwrap_or(0) as u32;
    let row_lines = (0..rows).map(|r| row_heading(r).len()).max().unwrap_or(0) as u32;
    let cell_h = cell_img_h.max(row_lines * line_h);
    let left = if down.is_empty() {
        0
    } else {
        row_chars as u32 * char_w + GAP
    };
    let top = if across.is_empty() {
        0
    } else {
        head_lines * line_h + GAP / 2
    };
    let width = GAP + left + columns as u32 * (cell_w + GAP);
    let height = GAP + top + rows as u32 * (cell_h + GAP);
    let mut grid = RgbImage::from_pixel(width, height, BACKGROUND);
    for c in 0..columns {
        let x0 = GAP + left + c as u32 * (cell_w + GAP);
        for (l, line) in column_heading(c).iter().enumerate() {
            draw_text(&mut grid, x0, GAP + l as u32 * line_h, line, scale, cell_w);
        }
    }
    for r in 0..rows {
        let y0 = GAP + top + r as u32 * (cell_h + GAP);
        for (l, line) in row_heading(r).iter().enumerate() {
            draw_text(&mut grid, GAP, y0 + l as u32 * line_h, line, scale, left);
        }
    }
    for cell in cells {
        let (c, r) = (
            position(&cell.coords, &across, axes),
            position(&cell.coords, &down, axes),
        );
        let scaled;
        let image = if shrink < 1.0 {
            let w = ((f64::from(cell.image.width()) * shrink) as u32).max(1);
            let h = ((f64::from(cell.image.height()) * shrink) as u32).max(1);
            scaled =
                image::imageops::resize(cell.image, w, h, image::imageops::FilterType::Triangle);
            &scaled
        } else {
            cell.image
        };
        let x = GAP + left + c as u32 * (cell_w + GAP) + (cell_w - image.width()) / 2;
        let y = GAP + top + r as u32 * (cell_h + GAP) + (cell_h - image.height()) / 2;
        image::imageops::overlay(&mut grid, image, i64::from(x), i64::from(y));
    }
    grid
}

/// Whether a pixel was drawn as text (for tests).
pub fn is_text(p: &Rgb<u8>) -> bool {
    *p == super::contact_sheet::TEXT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(c))
    }

    #[test]
    fn axes_split_inner_across() {
        assert_eq!(split_axes(1), (vec![0], vec![]));
        assert_eq!(split_axes(2), (vec![1], vec![0]));
        assert_eq!(split_axes(3), (vec![1, 2], vec![0]));
        assert_eq!(split_axes(4), (vec![2, 3], vec![0, 1]));
    }

    #[test]
    fn wrapping() {
        assert_eq!(wrap("+in the snow", 8), ["+in the", "snow"]);
        assert_eq!(wrap("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), [""]);
    }

    #[test]
    fn an_x_y_plot_has_a_cell_per_combination_and_labels_on_both_axes() {
        // Axis 0 (down): steps 10 / 20; axis 1 (across): CFG 5 / 7.5.
        let axes = vec![
            Axis {
                labels: vec!["Steps: 10".into(), "Steps: 20".into()],
            },
            Axis {
                labels: vec!["CFG: 5".into(), "CFG: 7.5".into()],
            },
        ];
        let colors = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]];
        let images: Vec<RgbImage> = colors.iter().map(|c| solid(64, 64, *c)).collect();
        let cells: Vec<Cell<'_>> = (0..4)
            .map(|i| Cell {
                coords: vec![i / 2, i % 2],
                image: &images[i],
            })
            .collect();
        let g = render(&axes, &cells);
        // Column headings fit the 64-pixel cells (8 characters); rows are headed by 9.
        let left = 9 * 8 + GAP;
        let top = 10 + GAP / 2;
        let (cw, ch) = (64, 64);
        assert_eq!(g.width(), GAP + left + 2 * (cw + GAP));
        assert_eq!(g.height(), GAP + top + 2 * (ch + GAP));
        for (i, c) in colors.iter().enumerate() {
            let (row, col) = ((i / 2) as u32, (i % 2) as u32);
            let x = GAP + left + col * (cw + GAP) + (cw - 64) / 2 + 32;
            let y = GAP + top + row * (ch + GAP) + 32;
            assert_eq!(*g.get_pixel(x, y), Rgb(*c), "cell {i}");
        }
        // Headings are drawn above the columns and left of the rows.
        let lit = |x0: u32, y0: u32, w: u32, h: u32| {
            (x0..x0 + w)
                .flat_map(|x| (y0..y0 + h).map(move |y| (x, y)))
                .filter(|(x, y)| is_text(g.get_pixel(*x, *y)))
                .count()
        };
        assert!(lit(GAP + left, GAP, cw, 8) > 20, "column heading");
        assert!(
            lit(GAP + left + cw + GAP, GAP, cw, 8) > 20,
            "second column heading"
        );
        assert!(lit(GAP, GAP + top, left - GAP, 8) > 20, "row heading");
        assert!(
            lit(GAP, GAP + top + ch + GAP, left - GAP, 8) > 20,
            "second row heading"
        );
        assert_eq!(lit(GAP, GAP, left - GAP, top - GAP / 2), 0, "corner empty");
    }

    #[test]
    fn one_axis_is_one_row_and_big_grids_shrink() {
        let axes = vec![Axis {
            labels: (0..3).map(|i| format!("Steps: {i}")).collect(),
        }];
        let img = solid(32, 48, [9, 9, 9]);
        let cells: Vec<Cell<'_>> = (0..3)
            .map(|i| Cell {
                coords: vec![i],
                image: &img,
            })
            .collect();
        let g = render(&axes, &cells);
        assert_eq!(g.height(), GAP + 10 + GAP / 2 + 48 + GAP);
        assert_eq!(g.width(), GAP + 3 * (8 * 8 + GAP));

        let big = solid(256, 256, [1, 2, 3]);
        let axes = vec![Axis {
            labels: (0..16).map(|i| i.to_string()).collect(),
        }];
        let cells: Vec<Cell<'_>> = (0..16)
            .map(|i| Cell {
                coords: vec![i],
                image: &big,
            })
            .collect();
        // 16 cells of 256 x 256 within a quarter of their area: cells of 128 x 128.
        let g = render_within(&axes, &cells, 16 * 128 * 128);
        assert_eq!(g.width(), GAP + 16 * (128 + GAP));
        assert_eq!(
            *g.get_pixel(GAP + 64, GAP + 10 + GAP / 2 + 64),
            Rgb([1, 2, 3])
        );
    }
}
