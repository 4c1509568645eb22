//! Line charts over iterations as PNG, drawn with plotters' bitmap backend
//! and an ASCII subset of DejaVu Sans embedded in the binary
//! (`fonts/README.md`): no system fonts, no display. The x axis is the iteration, an integer, and its ticks are
//! whole iterations ([`iteration_ticks`]).

use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

/// An RGB colour.
pub type Rgb = [u8; 3];

/// The font family charts and composed media write in.
pub const FONT: &str = "sans-serif";

/// DejaVu Sans, printable ASCII and a few symbols (11 KB).
const FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans-subset.ttf");

/// One line of a chart: (iteration, value) points, drawn in order.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub color: Rgb,
    pub points: Vec<(i64, f64)>,
}

/// A chart of one or more series over iterations.
#[derive(Debug, Clone)]
pub struct LineChart {
    pub title: String,
    pub x_label: String,
    pub series: Vec<Series>,
}

/// A chart drawn into an RGB buffer, with where its points landed.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub width: u32,
    pub height: u32,
    /// RGB, row-major.
    pub rgb: Vec<u8>,
    /// Per series, the pixel of each finite point.
    pub points_px: Vec<Vec<(i32, i32)>>,
}

/// Errors of drawing a chart.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("drawing a chart: {0}")]
    Draw(String),
    #[error("encoding a chart as PNG: {0}")]
    Png(#[from] wc_world::media::MediaError),
}

fn draw_err(e: impl std::fmt::Display) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// Register the embedded font once per process (plotters keeps a global
/// font table).
pub(crate) fn ensure_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| register_font(FONT, FontStyle::Normal, FONT_BYTES).map_err(|_| "the embedded DejaVu Sans font does not parse".to_string()))
        .clone()
        .map_err(ChartError::Draw)
}

/// Whole-iteration ticks for an axis from `lo` to `hi`: a step of 1, 2 or
/// 5 times a power of ten, the smallest that gives at most `max_ticks`
/// ticks, starting at the first multiple of the step not below `lo`.
pub fn iteration_ticks(lo: i64, hi: i64, max_ticks: usize) -> Vec<i64> {
    let (lo, hi) = (lo.min(hi), lo.max(hi));
    let max_ticks = max_ticks.max(2) as i64;
    let mut step = 1i64;
    'search: for pow in 0..18 {
        for m in [1, 2, 5] {
            step = m * 10i64.pow(pow);
            if (hi - lo) / step < max_ticks {
                break 'search;
            }
        }
    }
    let first = lo.div_euclid(step) * step + if lo.rem_euclid(step) == 0 { 0 } else { step };
    (0..).map(|i| first + i * step).take_while(|&t| t <= hi).collect()
}

/// A number for a value tick label: at most 4 significant characters.
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

impl LineChart {
    /// The iterations and values shown: the data's range, values padded by
    /// 5% (a flat series by 0.5), a single iteration by one on each side.
    fn ranges(&self) -> ((i64, i64), (f64, f64)) {
        let pts = self.series.iter().flat_map(|s| s.points.iter()).filter(|(_, y)| y.is_finite());
        let (mut x0, mut x1, mut y0, mut y1) = (i64::MAX, i64::MIN, f64::INFINITY, f64::NEG_INFINITY);
        for &(x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        if x0 > x1 {
            (x0, x1, y0, y1) = (0, 1, 0.0, 1.0);
        }
        if x0 == x1 {
            (x0, x1) = (x0 - 1, x1 + 1);
        }
        if y1 - y0 < 1e-12 {
            (y0, y1) = (y0 - 0.5, y1 + 0.5);
        }
        let pad = 0.05 * (y1 - y0);
        ((x0, x1), (y0 - pad, y1 + pad))
    }

    /// Draw the chart into an RGB buffer of `width` x `height`.
    pub fn render(&self, width: u32, height: u32) -> Result<Rendered, ChartError> {
        ensure_font()?;
        let ((x0, x1), (y0, y1)) = self.ranges();
        let ticks = iteration_ticks(x0, x1, 12);
        let mut rgb = vec![255u8; (width * height * 3) as usize];
        let mut points_px = Vec::new();
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
            let mut chart = ChartBuilder::on(&root)
                .caption(&self.title, (FONT, 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(56)
                .build_cartesian_2d((x0..x1).with_key_points(ticks), y0..y1)
                .map_err(draw_err)?;
            chart
                .configure_mesh()
                .x_desc(self.x_label.as_str())
                .x_label_formatter(&|x| x.to_string())
                .y_label_formatter(&|y| tick_label(*y))
                .label_style((FONT, 12))
                .light_line_style(RGBColor(235, 235, 235))
                .draw()
                .map_err(draw_err)?;
            for s in &self.series {
                let color = RGBColor(s.color[0], s.color[1], s.color[2]);
                let pts: Vec<(i64, f64)> = s.points.iter().copied().filter(|(_, y)| y.is_finite()).collect();
                chart
                    .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                    .map_err(draw_err)?
                    .label(s.name.as_str())
                    .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], color.filled()));
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(draw_err)?;
                points_px.push(pts.iter().map(|p| chart.backend_coord(p)).collect());
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .label_font((FONT, 12))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .draw()
                .map_err(draw_err)?;
            root.present().map_err(draw_err)?;
        }
        Ok(Rendered { width, height, rgb, points_px })
    }

    /// The chart as PNG bytes.
    pub fn png(&self, width: u32, height: u32) -> Result<Vec<u8>, ChartError> {
        self.render(width, height)?.png()
    }
}

impl Rendered {
    /// The pixel at (x, y).
    pub fn pixel(&self, x: i32, y: i32) -> Rgb {
        let i = (y as usize * self.width as usize + x as usize) * 3;
        [self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]
    }

    /// PNG bytes of the buffer.
    pub fn png(&self) -> Result<Vec<u8>, ChartError> {
        Ok(wc_world::media::rgb_png_bytes(self.width, self.height, &self.rgb)?)
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
            series: vec![Series { name: "a".into(), color: red, points: vec![(0, 0.0), (4, 1.0), (8, 0.5)] }],
        };
        let r = chart.render(320, 200).unwrap();
        let px = &r.points_px[0];
        assert_eq!(px.len(), 3);
        // Each point's marker is drawn at its pixel.
        for &(x, y) in px {
            assert_eq!(r.pixel(x, y), red, "point at ({x}, {y})");
        }
        // Left to right in iteration order; the highest value highest up.
        assert!(px[0].0 < px[1].0 && px[1].0 < px[2].0);
        assert!(px[1].1 < px[2].1 && px[2].1 < px[0].1);
        let (w, h, buf) = decode(&r.png().unwrap());
        assert_eq!((w, h), (320, 200));
        assert_eq!(buf, r.rgb, "the PNG holds the buffer");
        // Text was drawn: dark pixels outside the plotted series.
        assert!(r.rgb.chunks(3).any(|p| p[0] < 80 && p[1] < 80 && p[2] < 80));
    }

    #[test]
    fn iteration_ticks_are_whole_and_round() {
        // 24 iterations (0..=23): every 2nd, not 5.75, 11.5, 17.25.
        assert_eq!(iteration_ticks(0, 23, 12), vec![0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22]);
        assert_eq!(iteration_ticks(0, 5, 12), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(iteration_ticks(3, 120, 12), vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
        assert_eq!(iteration_ticks(-1, 1, 12), vec![-1, 0, 1]);
        for (lo, hi) in [(0, 1), (0, 7), (1, 24), (0, 999), (5, 5)] {
            let t = iteration_ticks(lo, hi, 12);
            assert!(!t.is_empty() && t.len() <= 12, "{lo}..{hi}: {t:?}");
            assert!(t.iter().all(|&x| x >= lo && x <= hi), "{lo}..{hi}: {t:?}");
        }
    }

    #[test]
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(0.123), "0.12");
        assert_eq!(tick_label(-12.34), "-12.3");
        assert_eq!(tick_label(250.0), "250");
    }
}
