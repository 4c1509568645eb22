//! Matrix-Game 2.0's action module against the fixture script's PyTorch
//! version (`ProjectActionModule` in tests/fixtures/wan/make_fixtures.py:
//! the project's own re-implementation from docs/design/matrix-game-2.md,
//! not Matrix-Game's code, so it checks the port against a second
//! computation of the same reading), and invariants that need no reference.

use crate::support::*;

use candle_core::Tensor;
use wc_wan::{ActionModule, ActionModuleConfig, CausalSpec, Weights};

fn module() -> ActionModule {
    let w = Weights::from_tensors(load("action_module_wan.safetensors"));
    let m = ActionModule::new(&ActionModuleConfig::tiny(), &w, "blocks.0.action_model").unwrap();
    w.finish().unwrap();
    m
}

const GRID: [usize; 3] = [6, 2, 2];

#[test]
fn the_action_module_equals_the_pytorch_version_for_two_windows() {
    let io = load("action_module_io.safetensors");
    let m = module();
    let mut outs = Vec::new();
    for (window, key) in [(6, "out_window6"), (3, "out_window3")] {
        let spec = CausalSpec {
            frames_per_block: 3,
            local_window_frames: window,
            sink_frames: 0,
            first_block_frames: 0,
        };
        let out = m
            .forward(
                &io["x"],
                GRID,
                wc_wan::Actions {
                    keyboard: &io["keyboard"],
                    mouse: &io["mouse"],
                },
                &spec,
            )
            .unwrap();
        let diff = max_abs_diff(&out, &io[key]);
        eprintln!("window {window}: max |diff| {diff:.2e}");
        assert!(diff < 1e-4, "window {window}: {diff}");
        outs.push(out);
    }
    // The window matters: the second block sees the first only with 6 frames.
    assert!(max_abs_diff(&outs[0], &outs[1]) > 1e-3);
}

#[test]
fn each_latent_frame_reads_the_twelve_pixel_steps_before_it() {
    let c = ActionModuleConfig::matrix_game_2();
    assert_eq!(c.window_of(0), vec![0; 12]);
    assert_eq!(c.window_of(1), [vec![0; 8], vec![0, 1, 2, 3]].concat());
    assert_eq!(c.window_of(2), [vec![0; 4], (0..8).collect()].concat());
    assert_eq!(c.window_of(5), (8..20).collect::<Vec<_>>());
}

#[test]
fn later_actions_never_change_an_earlier_block() {
    let io = load("action_module_io.safetensors");
    let m = module();
    let spec = CausalSpec {
        frames_per_block: 3,
        local_window_frames: 6,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let a = m
        .forward(
            &io["x"],
            GRID,
            wc_wan::Actions {
                keyboard: &io["keyboard"],
                mouse: &io["mouse"],
            },
            &spec,
        )
        .unwrap();
    // Pixel steps 12.. are read only by latent frames 4 and 5 (block 1).
    let late = |t: &Tensor, v: f32| {
        Tensor::cat(
            &[
                t.narrow(1, 0, 12).unwrap(),
                t.narrow(1, 12, 9).unwrap().affine(0.0, v as f64).unwrap(),
            ],
            1,
        )
        .unwrap()
    };
    let b = m
        .forward(
            &io["x"],
            GRID,
            wc_wan::Actions {
                keyboard: &late(&io["keyboard"], 1.0),
                mouse: &late(&io["mouse"], -0.1),
            },
            &spec,
        )
        .unwrap();
    let first_block = 3 * 4;
    assert_eq!(
        max_abs_diff(
            &a.narrow(1, 0, first_block).unwrap(),
            &b.narrow(1, 0, first_block).unwrap()
        ),
        0.0
    );
    assert!(
        max_abs_diff(
            &a.narrow(1, first_block, first_block).unwrap(),
            &b.narrow(1, first_block, first_block).unwrap()
        ) > 1e-4
    );
}

#[test]
fn a_stream_of_blocks_through_the_action_cache_equals_the_whole_clip() {
    let io = load("action_module_io.safetensors");
    let m = module();
    // Blocks of 2 latent frames, a window of 4: the third block no longer sees the first.
    let spec = CausalSpec {
        frames_per_block: 2,
        local_window_frames: 4,
        sink_frames: 0,
        first_block_frames: 0,
    };
    let whole = m
        .forward(
            &io["x"],
            GRID,
            wc_wan::Actions {
                keyboard: &io["keyboard"],
                mouse: &io["mouse"],
            },
            &spec,
        )
        .unwrap();
    let mut cache = wc_wan::ActionCache::new();
    let mut parts = Vec::new();
    for i in 0..3 {
        let xb = io["x"].narrow(1, i * 2 * 4, 2 * 4).unwrap();
        // The actions through this block's last latent frame.
        let n = 1 + 4 * (2 * i + 1);
        let (kb, mb) = (
            io["keyboard"].narrow(1, 0, n).unwrap(),
            io["mouse"].narrow(1, 0, n).unwrap(),
        );
        let probe = m
            .forward_cached(
                &xb,
                [2, 2, 2],
                wc_wan::Actions {
                    keyboard: &kb,
                    mouse: &mb,
                },
                &spec,
                &mut cache,
            )
            .unwrap();
        let y = m
            .forward_and_commit(
                &xb,
                [2, 2, 2],
                wc_wan::Actions {
                    keyboard: &kb,
                    mouse: &mb,
                },
                &spec,
                &mut cache,
            )
            .unwrap();
        assert_eq!(max_abs_diff(&probe, &y), 0.0);
        parts.push(y);
    }
    let diff = max_abs_diff(&Tensor::cat(&parts, 1).unwrap(), &whole);
    eprintln!("streamed action blocks against the whole clip: max |diff| {diff:.2e}");
    assert!(diff < 1e-4, "{diff}");
    assert_eq!((cache.next_frame(), cache.frames_held()), (6, 2));
}
