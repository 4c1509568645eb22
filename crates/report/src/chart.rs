//! Line charts as PNG, drawn pixel by pixel: axes with tick labels, one
//! polyline with markers per series, a legend and a title, in the bitmap
//! font of [`crate::font`]. No system fonts, no display.

use crate::font::{glyph, ADVANCE, HEIGHT};

/// An RGB colour.
pub type Rgb = [u8; 3];

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: Rgb,
    pub points: Vec<(f64, f64)>,
}

/// A chart of one or more series over a shared x axis.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// An RGB canvas.
pub struct Canvas {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
}

impl Canvas {
    pub fn new(width: usize, height: usize) -> Self {
        Canvas { width, height, rgb: vec![255; width * height * 3] }
    }

    pub fn pixel(&self, x: usize, y: usize) -> Rgb {
        let i = (y * self.width + x) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    pub fn set(&mut self, x: isize, y: isize, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    pub fn rect(&mut self, x0: isize, y0: isize, w: isize, h: isize, c: Rgb) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.set(x, y, c);
            }
        }
    }

    /// A line of thickness ~2 (Bresenham, doubled).
    pub fn line(&mut self, (x0, y0): (isize, isize), (x1, y1): (isize, isize), c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x + 1, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text at (x, y) (top-left), glyphs scaled by `scale`.
    pub fn text(&mut self, x: isize, y: isize, s: &str, scale: usize, c: Rgb) {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (r, row) in g.iter().enumerate() {
                for col in 0..5 {
                    if row & (0x10 >> col) != 0 {
                        let px = x + ((i * ADVANCE + col) * scale) as isize;
                        self.rect(px, y + (r * scale) as isize, scale as isize, scale as isize, c);
                    }
                }
            }
        }
    }

    pub fn text_width(s: &str, scale: usize) -> usize {
        s.chars().count() * ADVANCE * scale
    }

    /// PNG bytes of the canvas.
    pub fn png(&self) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut w = enc.write_header().expect("in-memory PNG header");
            w.write_image_data(&self.rgb).expect("in-memory PNG data");
        }
        out
    }
}

/// A number for a tick label: at most 4 significant characters.
pub fn tick_label(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Plot area margins: left, right, top, bottom.
const MARGIN: (usize, usize, usize, usize) = (64, 16, 40, 56);

/// Where a chart's plot area is and how data maps into it.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub x0: f64,
    pub x1: f64,
    pub y0: f64,
    pub y1: f64,
    pub left: usize,
    pub top: usize,
    pub w: usize,
    pub h: usize,
}

impl Frame {
    pub fn to_px(&self, x: f64, y: f64) -> (isize, isize) {
        let fx = if self.x1 > self.x0 { (x - self.x0) / (self.x1 - self.x0) } else { 0.5 };
        let fy = if self.y1 > self.y0 { (y - self.y0) / (self.y1 - self.y0) } else { 0.5 };
        ((self.left as f64 + fx * self.w as f64).round() as isize, (self.top as f64 + (1.0 - fy) * self.h as f64).round() as isize)
    }
}

impl LineChart {
    /// The data range, padded by 5% (a flat series gets +-0.5).
    pub fn frame(&self, width: usize, height: usize) -> Frame {
        let pts = self.series.iter().flat_map(|s| s.points.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
        for (x, y) in pts.filter(|(x, y)| x.is_finite() && y.is_finite()) {
            (x0, x1, y0, y1) = (x0.min(*x), x1.max(*x), y0.min(*y), y1.max(*y));
        }
        if !x0.is_finite() {
            (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
        }
        if y1 - y0 < 1e-12 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let pad = 0.05 * (y1 - y0);
        let (l, r, t, b) = MARGIN;
        Frame { x0, x1, y0: y0 - pad, y1: y1 + pad, left: l, top: t, w: width - l - r, h: height - t - b }
    }

    /// Render to a canvas.
    pub fn render(&self, width: usize, height: usize) -> Canvas {
        let mut c = Canvas::new(width, height);
        let f = self.frame(width, height);
        let (ink, grid) = ([30, 30, 30], [225, 225, 225]);
        c.text(f.left as isize, 12, &self.title, 2, ink);
        // Grid, ticks and labels: 5 on each axis.
        for i in 0..=4 {
            let fy = i as f64 / 4.0;
            let y = f.y0 + fy * (f.y1 - f.y0);
            let (_, py) = f.to_px(f.x0, y);
            c.rect(f.left as isize, py, f.w as isize, 1, grid);
            let label = tick_label(y);
            c.text(f.left as isize - 6 - Canvas::text_width(&label, 1) as isize, py - 3, &label, 1, ink);
            let x = f.x0 + fy * (f.x1 - f.x0);
            let (px, _) = f.to_px(x, f.y0);
            c.rect(px, (f.top + f.h) as isize, 1, 5, ink);
            let label = tick_label(x);
            c.text(px - Canvas::text_width(&label, 1) as isize / 2, (f.top + f.h + 8) as isize, &label, 1, ink);
        }
        c.rect(f.left as isize, f.top as isize, 1, f.h as isize + 1, ink);
        c.rect(f.left as isize, (f.top + f.h) as isize, f.w as isize + 1, 1, ink);
        c.text((f.left + f.w / 2) as isize - Canvas::text_width(&self.x_label, 1) as isize / 2, (f.top + f.h + 22) as isize, &self.x_label, 1, ink);
        // Series and legend.
        let mut lx = f.left as isize;
        for s in &self.series {
            let pts: Vec<(isize, isize)> = s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|(x, y)| f.to_px(*x, *y)).collect();
            for w in pts.windows(2) {
                c.line(w[0], w[1], s.color);
            }
            for p in &pts {
                c.rect(p.0 - 2, p.1 - 2, 5, 5, s.color);
            }
            let ly = (height - 14) as isize;
            c.rect(lx, ly, 14, 7, s.color);
            c.text(lx + 18, ly, &s.name, 1, ink);
            lx += 18 + Canvas::text_width(&s.name, 1) as isize + 20;
        }
        let _ = HEIGHT;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png_bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        (info.width as usize, info.height as usize, buf)
    }

    #[test]
    fn points_land_where_the_axes_say_and_the_png_decodes() {
        let red = [200, 10, 10];
        let chart = LineChart {
            title: "t".into(),
            x_label: "iteration".into(),
            series: vec![Series { name: "a".into(), color: red, points: vec![(0.0, 0.0), (4.0, 1.0), (8.0, 0.5)] }],
        };
        let canvas = chart.render(320, 200);
        let f = chart.frame(320, 200);
        // Each data point is drawn (its marker) at its mapped position.
        for (x, y) in [(0.0, 0.0), (4.0, 1.0), (8.0, 0.5)] {
            let (px, py) = f.to_px(x, y);
            assert_eq!(canvas.pixel(px as usize, py as usize), red, "point ({x}, {y})");
        }
        // The highest point is above the lowest, and inside the plot area.
        let (top, bottom) = (f.to_px(4.0, 1.0), f.to_px(0.0, 0.0));
        assert!(top.1 < bottom.1 && top.1 > f.top as isize && bottom.1 < (f.top + f.h) as isize);
        let (w, h, buf) = decode(&canvas.png());
        assert_eq!((w, h), (320, 200));
        assert_eq!(buf, canvas.rgb, "the PNG holds the canvas");
        // The title was drawn: dark pixels in the title band.
        assert!((0..320).any(|x| (12..26).any(|y| canvas.pixel(x, y) == [30, 30, 30])));
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(0.123), "0.12");
        assert_eq!(tick_label(-12.34), "-12.3");
        assert_eq!(tick_label(250.0), "250");
    }
}
