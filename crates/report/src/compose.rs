//! Side-by-side videos: several frame sequences of the same prompt and
//! actions (two checkpoints, the ground truth) in columns, each frame
//! upscaled, with a header naming the columns and the window's action
//! written under it (as the paper's Figures 3 and 4).

use wc_world::Frame;

use crate::chart::Canvas;

/// Compose `columns` (each a list of u8 RGB HWC frames of `size` x `size`,
/// all the same length) into one frame per time step. `labels[t]` is
/// written under frame t; `headers` name the columns.
pub fn side_by_side(columns: &[Vec<Vec<u8>>], size: usize, scale: usize, headers: &[&str], labels: &[String]) -> Vec<Frame> {
    let steps = columns.iter().map(|c| c.len()).min().unwrap_or(0);
    let cell = size * scale;
    let gap = 4;
    let (top, bottom) = (14, 14);
    let width = columns.len() * cell + (columns.len() + 1) * gap;
    let height = top + cell + bottom;
    (0..steps)
        .map(|t| {
            let mut c = Canvas::new(width, height);
            for (k, col) in columns.iter().enumerate() {
                let x0 = gap + k * (cell + gap);
                if let Some(h) = headers.get(k) {
                    c.text(x0 as isize, 3, h, 1, [30, 30, 30]);
                }
                let f = &col[t];
                for y in 0..cell {
                    for x in 0..cell {
                        let i = ((y / scale) * size + x / scale) * 3;
                        c.set((x0 + x) as isize, (top + y) as isize, [f[i], f[i + 1], f[i + 2]]);
                    }
                }
            }
            if let Some(l) = labels.get(t) {
                c.text(gap as isize, (top + cell + 4) as isize, l, 1, [30, 30, 30]);
            }
            Frame::from_u8(width, height, &c.rgb)
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
        let out = side_by_side(&[red, blue], 2, 8, &["A", "B"], &["FORWARD".to_string()]);
        assert_eq!(out.len(), 1);
        let f = &out[0];
        assert_eq!((f.width, f.height), (2 * 16 + 3 * 4, 14 + 16 + 14));
        let px = |x: usize, y: usize| &f.rgb[(y * f.width + x) * 3..(y * f.width + x) * 3 + 3];
        assert_eq!(px(4 + 8, 14 + 8), &[1.0, 0.0, 0.0], "left column is the first sequence");
        assert_eq!(px(4 + 16 + 4 + 8, 14 + 8), &[0.0, 0.0, 1.0], "right column is the second");
        // The label is written under the frames.
        assert!((0..f.width).any(|x| (14 + 16 + 4..f.height).any(|y| px(x, y)[0] < 0.5)));
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
