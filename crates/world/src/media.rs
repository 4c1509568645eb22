//! Animated GIF and PNG strip writers for frames.

use crate::render::Frame;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("no frames to write")]
    Empty,
    #[error("frames differ in size: {0}x{1} vs {2}x{3}")]
    SizeMismatch(usize, usize, usize, usize),
    #[error("PNG encoding failed: {0}")]
    Png(String),
    #[error("GIF encoding failed: {0}")]
    Gif(String),
}

fn check(frames: &[Frame]) -> Result<(usize, usize), MediaError> {
    let first = frames.first().ok_or(MediaError::Empty)?;
    for f in frames {
        if (f.width, f.height) != (first.width, first.height) {
            return Err(MediaError::SizeMismatch(first.width, first.height, f.width, f.height));
        }
    }
    Ok((first.width, first.height))
}

/// Nearest-neighbour upscale of 8-bit RGB.
fn upscale(rgb: &[u8], w: usize, h: usize, s: usize) -> Vec<u8> {
    let mut out = vec![0u8; w * s * h * s * 3];
    for y in 0..h * s {
        for x in 0..w * s {
            let src = ((y / s) * w + x / s) * 3;
            let dst = (y * w * s + x) * 3;
            out[dst..dst + 3].copy_from_slice(&rgb[src..src + 3]);
        }
    }
    out
}

/// An animated GIF of the frames, each upscaled `scale` times, `delay_cs`
/// hundredths of a second per frame, looping forever.
pub fn gif_bytes(frames: &[Frame], scale: usize, delay_cs: u16) -> Result<Vec<u8>, MediaError> {
    let (w, h) = check(frames)?;
    let s = scale.max(1);
    let (gw, gh) = ((w * s) as u16, (h * s) as u16);
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, gw, gh, &[]).map_err(|e| MediaError::Gif(e.to_string()))?;
        enc.set_repeat(gif::Repeat::Infinite).map_err(|e| MediaError::Gif(e.to_string()))?;
        for f in frames {
            let mut rgb = upscale(&f.to_u8(), w, h, s);
            let mut frame = gif::Frame::from_rgb_speed(gw, gh, &mut rgb, 10);
            frame.delay = delay_cs;
            enc.write_frame(&frame).map_err(|e| MediaError::Gif(e.to_string()))?;
        }
    }
    Ok(out)
}

/// A PNG with the frames side by side (a 1-pixel gap between them, before
/// upscaling), each upscaled `scale` times. Up to `per_row` frames per row.
pub fn png_strip_bytes(frames: &[Frame], scale: usize, per_row: usize) -> Result<Vec<u8>, MediaError> {
    let (w, h) = check(frames)?;
    let per_row = per_row.max(1).min(frames.len());
    let rows = frames.len().div_ceil(per_row);
    let (cw, ch) = (per_row * (w + 1) - 1, rows * (h + 1) - 1);
    let mut canvas = vec![255u8; cw * ch * 3];
    for (i, f) in frames.iter().enumerate() {
        let (ox, oy) = ((i % per_row) * (w + 1), (i / per_row) * (h + 1));
        let px = f.to_u8();
        for y in 0..h {
            let dst = ((oy + y) * cw + ox) * 3;
            canvas[dst..dst + w * 3].copy_from_slice(&px[y * w * 3..(y + 1) * w * 3]);
        }
    }
    let s = scale.max(1);
    rgb_png_bytes((cw * s) as u32, (ch * s) as u32, &upscale(&canvas, cw, ch, s))
}

/// A PNG of an 8-bit RGB buffer of `width` x `height`, row-major.
pub fn rgb_png_bytes(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| MediaError::Png(e.to_string()))?;
        wr.write_image_data(rgb).map_err(|e| MediaError::Png(e.to_string()))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: f32) -> Frame {
        Frame { width: 4, height: 3, rgb: vec![v; 36] }
    }

    #[test]
    fn png_decodes_with_the_expected_size_and_pixels() {
        let bytes = png_strip_bytes(&[frame(0.0), frame(1.0)], 2, 8).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (2 * 9, 2 * 3));
        assert_eq!(&buf[0..3], &[0, 0, 0]); // first frame black
        let right = (info.width as usize - 1) * 3;
        assert_eq!(&buf[right..right + 3], &[255, 255, 255]);
    }

    #[test]
    fn gif_decodes_with_all_frames() {
        let bytes = gif_bytes(&[frame(0.2), frame(0.8), frame(0.5)], 3, 10).unwrap();
        let mut dec = gif::DecodeOptions::new().read_info(std::io::Cursor::new(bytes)).unwrap();
        assert_eq!((dec.width(), dec.height()), (12, 9));
        let mut n = 0;
        while dec.read_next_frame().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(matches!(gif_bytes(&[], 1, 1), Err(MediaError::Empty)));
    }
}
