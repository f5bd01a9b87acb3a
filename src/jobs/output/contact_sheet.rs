//! A contact sheet per prompt: the candidates side by side, best first, each with its rank,
//! CLIPScore and seed printed underneath (8x8 bitmap font, no font files needed).

use font8x8::UnicodeFonts as _;
use image::{Rgb, RgbImage};

/// One tile of the sheet.
#[derive(Debug, Clone)]
pub struct Tile<'a> {
    pub image: &'a RgbImage,
    /// Lines printed under the image, e.g. `#1 31.42` and `seed 1234`.
    pub caption: Vec<String>,
}

const GAP: u32 = 8;
const LINE: u32 = 10;
pub(crate) const BACKGROUND: Rgb<u8> = Rgb([24, 24, 24]);
pub(crate) const TEXT: Rgb<u8> = Rgb([235, 235, 235]);

/// Lays the tiles out in rows of at most `columns`, in the given order. Text is drawn at twice
/// the font size when the tiles are wide enough for it.
pub fn render(tiles: &[Tile<'_>], columns: usize) -> RgbImage {
    let columns = columns.clamp(1, tiles.len().max(1)) as u32;
    let rows = (tiles.len() as u32).div_ceil(columns).max(1);
    let tile_w = tiles.iter().map(|t| t.image.width()).max().unwrap_or(64);
    let tile_h = tiles.iter().map(|t| t.image.height()).max().unwrap_or(64);
    let scale = if tile_w >= 200 { 2 } else { 1 };
    // Cells are wide enough for the longest caption line.
    let text_w = tiles
        .iter()
        .flat_map(|t| t.caption.iter())
        .map(|l| l.chars().count() as u32 * 8 * scale)
        .max()
        .unwrap_or(0);
    let tile_w = tile_w.max(text_w);
    let lines = tiles
        .iter()
        .map(|t| t.caption.len() as u32)
        .max()
        .unwrap_or(0);
    let caption_h = lines * LINE * scale + GAP / 2;
    let width = columns * tile_w + (columns + 1) * GAP;
    let height = rows * (tile_h + caption_h) + (rows + 1) * GAP;
    let mut sheet = RgbImage::from_pixel(width, height, BACKGROUND);
    for (i, tile) in tiles.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        let x0 = GAP + col * (tile_w + GAP);
        let y0 = GAP + row * (tile_h + caption_h + GAP);
        image::imageops::overlay(&mut sheet, tile.image, i64::from(x0), i64::from(y0));
        for (l, line) in tile.caption.iter().enumerate() {
            let y = y0 + tile.image.height() + GAP / 2 + l as u32 * LINE * scale;
            draw_text(&mut sheet, x0, y, line, scale, tile_w);
        }
    }
    sheet
}

/// Draws `text` at (x, y), clipped to `max_width` pixels.
pub(crate) fn draw_text(
    img: &mut RgbImage,
    x: u32,
    y: u32,
    text: &str,
    scale: u32,
    max_width: u32,
) {
    let mut cx = 0;
    for ch in text.chars() {
        if cx + 8 * scale > max_width {
            break;
        }
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'));
        if let Some(rows) = glyph {
            for (gy, bits) in rows.iter().enumerate() {
                for gx in 0..8u32 {
                    if bits & (1 << gx) == 0 {
                        continue;
                    }
                    for sy in 0..scale {
                        for sx in 0..scale {
                            let px = x + cx + gx * scale + sx;
                            let py = y + gy as u32 * scale + sy;
                            if px < img.width() && py < img.height() {
                                img.put_pixel(px, py, TEXT);
                            }
                        }
                    }
                }
            }
        }
        cx += 8 * scale;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_placed_in_order_with_captions() {
        let red = RgbImage::from_pixel(64, 64, Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(64, 64, Rgb([0, 0, 255]));
        let tiles = [
            Tile {
                image: &blue,
                caption: vec!["#1 30.00".into()],
            },
            Tile {
                image: &red,
                caption: vec!["#2 10.00".into()],
            },
        ];
        let sheet = render(&tiles, 8);
        assert_eq!(
            sheet.width(),
            2 * 64 + 3 * GAP,
            "captions of 8 characters fit in 64 pixels"
        );
        assert_eq!(
            *sheet.get_pixel(GAP + 5, GAP + 5),
            Rgb([0, 0, 255]),
            "best first"
        );
        assert_eq!(
            *sheet.get_pixel(2 * GAP + 64 + 5, GAP + 5),
            Rgb([255, 0, 0])
        );
        // Some caption pixels are lit under the first tile.
        let lit = (0..64)
            .flat_map(|x| (0..LINE).map(move |y| (x, y)))
            .filter(|(x, y)| *sheet.get_pixel(GAP + x, GAP + 64 + GAP / 2 + y) == TEXT)
            .count();
        assert!(lit > 20, "caption drawn ({lit} pixels)");
    }
}
