//! Side-by-side videos: several frame sequences of the same prompt and
//! actions (two checkpoints, the ground truth) in columns, each frame
//! upscaled, with a header naming the columns and the window's action
//! written under it (as the paper's Figures 3 and 4), in the charts' font.

use plotters::prelude::*;
use wc_world::Frame;

use crate::chart::{ensure_font, ChartError, FONT};

/// Compose `columns` (each a list of u8 RGB HWC frames of `size` x `size`,
/// all the same length) into one frame per time step, each frame upscaled
/// `scale` times. `labels[t]` is written under frame t; `headers` name the
/// columns.
pub fn side_by_side(columns: &[Vec<Vec<u8>>], size: usize, scale: usize, headers: &[&str], labels: &[String]) -> Result<Vec<Frame>, ChartError> {
    ensure_font()?;
    let steps = columns.iter().map(|c| c.len()).min().unwrap_or(0);
    let cell = size * scale;
    let gap = 4;
    let (top, bottom) = (16, 16);
    let width = columns.len() * cell + (columns.len() + 1) * gap;
    let height = top + cell + bottom;
    let ink = RGBColor(30, 30, 30);
    (0..steps)
        .map(|t| {
            let mut rgb = vec![255u8; width * height * 3];
            for (k, col) in columns.iter().enumerate() {
                let x0 = gap + k * (cell + gap);
                let f = &col[t];
                for y in 0..cell {
                    for x in 0..cell {
                        let src = ((y / scale) * size + x / scale) * 3;
                        let dst = ((top + y) * width + x0 + x) * 3;
                        rgb[dst..dst + 3].copy_from_slice(&f[src..src + 3]);
                    }
                }
            }
            {
                let root = BitMapBackend::with_buffer(&mut rgb, (width as u32, height as u32)).into_drawing_area();
                let style = TextStyle::from((FONT, 12).into_font()).color(&ink);
                let err = |e: DrawingAreaErrorKind<_>| ChartError::Draw(e.to_string());
                for (k, h) in headers.iter().enumerate().take(columns.len()) {
                    root.draw_text(h, &style, ((gap + k * (cell + gap)) as i32, 2)).map_err(err)?;
                }
                if let Some(l) = labels.get(t) {
                    root.draw_text(l, &style, (gap as i32, (top + cell + 2) as i32)).map_err(err)?;
                }
                root.present().map_err(err)?;
            }
            Ok(Frame::from_u8(width, height, &rgb))
        })
        .collect()
}

/// u8 RGB HWC frames of `size` x `size` as [`Frame`]s.
pub fn frames(rgb: &[Vec<u8>], size: usize) -> Vec<Frame> {
    rgb.iter().map(|f| Frame::from_u8(size, size, f)).collect()
}

/// Two sequences of u8 RGB HWC frames of `size` x `size`, frame t of
/// `left` beside frame t of `right`, with no border: frames `2 size` wide.
pub fn beside(left: &[Vec<u8>], right: &[Vec<u8>], size: usize) -> Vec<Frame> {
    let row = size * 3;
    left.iter()
        .zip(right)
        .map(|(l, r)| {
            let mut rgb = Vec::with_capacity(2 * l.len());
            for y in 0..size {
                rgb.extend_from_slice(&l[y * row..(y + 1) * row]);
                rgb.extend_from_slice(&r[y * row..(y + 1) * row]);
            }
            Frame::from_u8(2 * size, size, &rgb)
        })
        .collect()
}

/// The label under each of `frames` frames of a sequence: "prompt" under
/// the first frame, then the action of the window each frame belongs to
/// (4 frames per window).
pub fn window_labels(actions: &[wc_world::ActionMask], frames: usize) -> Vec<String> {
    (0..frames).map(|t| if t == 0 { "prompt".to_string() } else { actions[(t - 1) / 4].to_string() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_placed_side_by_side_and_upscaled() {
        let red = vec![vec![255u8, 0, 0].repeat(4)]; // one 2x2 red frame
        let blue = vec![vec![0u8, 0, 255].repeat(4)];
        let out = side_by_side(&[red, blue], 2, 8, &["A", "B"], &["FORWARD".to_string()]).unwrap();
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!((f.width, f.height), (2 * 16 + 3 * 4, 16 + 16 + 16));
        let px = |x: usize, y: usize| &f.rgb[(y * f.width + x) * 3..(y * f.width + x) * 3 + 3];
        assert_eq!(px(4 + 8, 16 + 8), &[1.0, 0.0, 0.0], "left column is the first sequence");
        assert_eq!(px(4 + 16 + 4 + 8, 16 + 8), &[0.0, 0.0, 1.0], "right column is the second");
        // The headers are written above the frames, the label under them.
        assert!((0..f.width).any(|x| (0..16).any(|y| px(x, y)[0] < 0.5)), "a header");
        assert!((0..f.width).any(|x| (16 + 16..f.height).any(|y| px(x, y)[0] < 0.5)), "the label");
    }

    #[test]
    fn beside_puts_each_row_of_the_left_frame_before_the_right_ones() {
        // 2x2 frames: left pixels 10, 20, 30, 40 (grey), right 50..80.
        let grey = |v: &[u8]| v.iter().flat_map(|&g| [g, g, g]).collect::<Vec<u8>>();
        let out = beside(&[grey(&[10, 20, 30, 40])], &[grey(&[50, 60, 70, 80])], 2);
        assert_eq!((out[0].width, out[0].height), (4, 2));
        let reds: Vec<u8> = out[0].to_u8().chunks(3).map(|p| p[0]).collect();
        assert_eq!(reds, [10, 20, 50, 60, 30, 40, 70, 80]);
    }

    #[test]
    fn window_labels_name_the_prompt_then_each_windows_action_four_times() {
        let acts = [wc_world::ActionMask::parse("forward").unwrap(), wc_world::ActionMask::parse("turn_left").unwrap()];
        let labels = window_labels(&acts, 9);
        assert_eq!(labels[0], "prompt");
        assert_eq!(labels[1..5], vec![acts[0].to_string(); 4][..]);
        assert_eq!(labels[5..9], vec![acts[1].to_string(); 4][..]);
    }
}
