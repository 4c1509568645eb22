//! Procedural scenes: ground, objects, palette, lighting and a caption, all
//! from one seed.
//!
//! The default world is kept learnable by a small model: a coarse,
//! low-contrast ground checker (1-unit cells), large solid objects at
//! varied depths (so translation shows parallax), smooth sky and fog.

use wc_rl::seeds::SplitMix64;

pub type Rgb = [f32; 3];

/// A solid object standing on the ground.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Axis-aligned box: centre (x, z), half extents, height from the ground.
    Pillar { x: f64, z: f64, half_x: f64, half_z: f64, height: f64 },
    /// A ball resting on the ground.
    Ball { x: f64, z: f64, radius: f64 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub shape: Shape,
    pub color: Rgb,
    pub color_name: &'static str,
}

/// A scene: everything the renderer needs, and its caption.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    pub seed: u64,
    pub theme: &'static str,
    pub ground: [Rgb; 2],
    pub sky_top: Rgb,
    pub sky_horizon: Rgb,
    /// Unit vector toward the sun.
    pub sun: [f64; 3],
    pub sun_strength: f32,
    pub ambient: f32,
    pub fog_density: f64,
    pub objects: Vec<Object>,
    pub caption: String,
}

struct Theme {
    name: &'static str,
    ground: Rgb,
    sky_top: Rgb,
    sky_horizon: Rgb,
    ambient: f32,
}

const THEMES: [Theme; 5] = [
    Theme { name: "grassy meadow", ground: [0.30, 0.52, 0.25], sky_top: [0.35, 0.55, 0.90], sky_horizon: [0.75, 0.85, 0.95], ambient: 0.35 },
    Theme { name: "sandy desert", ground: [0.80, 0.68, 0.45], sky_top: [0.45, 0.65, 0.95], sky_horizon: [0.90, 0.88, 0.80], ambient: 0.40 },
    Theme { name: "snowfield", ground: [0.85, 0.88, 0.92], sky_top: [0.55, 0.65, 0.80], sky_horizon: [0.85, 0.88, 0.92], ambient: 0.45 },
    Theme { name: "dusky plain", ground: [0.45, 0.35, 0.40], sky_top: [0.25, 0.20, 0.45], sky_horizon: [0.95, 0.55, 0.40], ambient: 0.30 },
    Theme { name: "stone courtyard", ground: [0.55, 0.55, 0.52], sky_top: [0.50, 0.60, 0.75], sky_horizon: [0.80, 0.82, 0.85], ambient: 0.38 },
];

const COLORS: [(&str, Rgb); 8] = [
    ("red", [0.80, 0.20, 0.18]),
    ("orange", [0.90, 0.55, 0.15]),
    ("yellow", [0.90, 0.82, 0.20]),
    ("green", [0.20, 0.65, 0.30]),
    ("teal", [0.15, 0.60, 0.60]),
    ("blue", [0.20, 0.35, 0.85]),
    ("purple", [0.55, 0.25, 0.70]),
    ("white", [0.92, 0.92, 0.90]),
];

struct Rng(SplitMix64);

impl Rng {
    fn unit(&mut self) -> f64 {
        (self.0.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    fn index(&mut self, n: usize) -> usize {
        (self.0.next_u64() % n as u64) as usize
    }
}

fn jitter(c: Rgb, rng: &mut Rng, amount: f64) -> Rgb {
    c.map(|v| (v as f64 + rng.range(-amount, amount)).clamp(0.0, 1.0) as f32)
}

impl Scene {
    /// Generate the scene of `seed`.
    pub fn generate(seed: u64) -> Scene {
        let mut rng = Rng(SplitMix64::new(seed ^ 0x5CE7_E5EE_D000_0001));
        let theme = &THEMES[rng.index(THEMES.len())];
        let base = jitter(theme.ground, &mut rng, 0.06);
        // Low-contrast checker: two shades of the ground colour.
        let ground = [base.map(|v| (v * 1.08).min(1.0)), base.map(|v| v * 0.88)];
        let sun_az = rng.range(0.0, std::f64::consts::TAU);
        let sun_el = rng.range(0.5, 1.2);
        let sun = [sun_el.cos() * sun_az.sin(), sun_el.sin(), sun_el.cos() * sun_az.cos()];
        let palette_a = rng.index(COLORS.len());
        let palette_b = (palette_a + 1 + rng.index(COLORS.len() - 1)) % COLORS.len();
        let count = 14 + rng.index(10);
        let mut objects = Vec::with_capacity(count);
        let (mut pillars, mut balls) = (0usize, 0usize);
        for i in 0..count {
            // Around the start, never on it: radius 2.5 .. 14.
            let ang = rng.range(0.0, std::f64::consts::TAU);
            let rad = rng.range(2.5, 14.0);
            let (x, z) = (rad * ang.sin(), rad * ang.cos());
            let (name, color) = COLORS[if i % 2 == 0 { palette_a } else { palette_b }];
            let shape = if rng.unit() < 0.6 {
                pillars += 1;
                Shape::Pillar {
                    x,
                    z,
                    half_x: rng.range(0.3, 0.8),
                    half_z: rng.range(0.3, 0.8),
                    height: rng.range(1.0, 3.5),
                }
            } else {
                balls += 1;
                Shape::Ball { x, z, radius: rng.range(0.4, 1.0) }
            };
            objects.push(Object { shape, color: jitter(color, &mut rng, 0.05), color_name: name });
        }
        let caption = format!(
            "a {} with {} and {} objects ({} pillars, {} balls), lit from the {}",
            theme.name,
            COLORS[palette_a].0,
            COLORS[palette_b].0,
            pillars,
            balls,
            compass(sun_az)
        );
        Scene {
            seed,
            theme: theme.name,
            ground,
            sky_top: jitter(theme.sky_top, &mut rng, 0.04),
            sky_horizon: jitter(theme.sky_horizon, &mut rng, 0.04),
            sun,
            sun_strength: rng.range(0.55, 0.8) as f32,
            ambient: theme.ambient,
            fog_density: rng.range(0.02, 0.05),
            objects,
            caption,
        }
    }
}

fn compass(az: f64) -> &'static str {
    const DIRS: [&str; 8] = ["north", "north-east", "east", "south-east", "south", "south-west", "west", "north-west"];
    DIRS[((az / std::f64::consts::TAU * 8.0).round() as usize) % 8]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenes_are_deterministic_and_vary_by_seed() {
        assert_eq!(Scene::generate(3), Scene::generate(3));
        let captions: std::collections::BTreeSet<String> = (0..20).map(|s| Scene::generate(s).caption).collect();
        assert!(captions.len() >= 18, "captions should differ: {captions:?}");
        let themes: std::collections::BTreeSet<&str> = (0..40).map(|s| Scene::generate(s).theme).collect();
        assert!(themes.len() >= 4);
        for s in 0..20 {
            for o in Scene::generate(s).objects {
                let (x, z) = match o.shape {
                    Shape::Pillar { x, z, .. } | Shape::Ball { x, z, .. } => (x, z),
                };
                assert!(x.hypot(z) >= 2.5, "object on the start point");
            }
        }
    }
}
