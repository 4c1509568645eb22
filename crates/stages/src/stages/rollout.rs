//! The rollout stage: G candidates of clip n per group, sharing the
//! prefix's context.

use super::*;

/// rollout: G candidates of clip n per group from its shared prefix, each
/// from its own noise, with the old policy; at sample level, G whole
/// sequences per group instead (all G advanced one clip at a time).
pub fn rollout<B: Backend>(b: &B, ctx: &RunContext, iter: u64, shard: ShardSpec, dir: &str, pending: &mut PendingCommit) -> Result<usize, StageError> {
    let init = inputs::init_set(ctx)?;
    let ckpt = inputs::checkpoint_set(ctx, iter)?;
    let prefixes = stage_shards(ctx, iter, Stage::Prefix)?;
    pending.add_input(&init);
    pending.add_input(&ckpt);
    prefixes.iter().for_each(|s| pending.add_input(s));
    let old = b.load_policy(&ckpt, iter, Role::Sampler)?;
    let pool = sequence_pool(ctx, &init)?;
    let files = group_files(&prefixes);
    let (g_count, n) = (ctx.cfg.rollout.candidates, ctx.cfg.rollout.clips);
    let clip_shape = b.clip_shape();
    let groups = shard_groups(ctx, &pool, iter, shard);
    let pb = progress(groups.len() * if sample_level(ctx) { n as usize } else { 1 }, "rollout");
    for (g, row) in &groups {
        let (sampled, file_layout, bindings, shape) = if sample_level(ctx) {
            // Candidate j's clip c: noise id (c - 1) * G + j.
            let requests: Vec<SequenceRequest> = (0..g_count)
                .map(|j| SequenceRequest {
                    prompt_id: row.prompt_id,
                    clips: (1..=n)
                        .map(|c| ClipRequest { windows: clip_windows(ctx, row, c), noise_seed: derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, *g, (c - 1) * g_count + j) })
                        .collect(),
                })
                .collect();
            let seqs = b.sequences(&old, &requests, &|| pb.inc(1))?;
            let sampled = crate::backend::Sampled {
                latents: seqs.iter().flat_map(|s| s.latents.iter().copied()).collect(),
                noise: seqs.iter().flat_map(|s| s.noise.iter().copied()).collect(),
            };
            let shape: Vec<usize> = [g_count as usize, n as usize].into_iter().chain(clip_shape.iter().copied()).collect();
            (sampled, tensors::candidate_sequences(), latent_bindings(ctx, &clip_shape).dim("N", n as usize), shape)
        } else {
            let pre = prefix_of(ctx, &clip_shape, &files, iter, *g)?;
            let seeds: Vec<u64> = (0..g_count).map(|j| derive_seed(ctx.cfg.run.seed, iter, SeedDomain::Rollout, *g, j)).collect();
            let target = target_clip(iter, n);
            let prefix_windows: Vec<u8> = (1..target).flat_map(|c| clip_windows(ctx, row, c)).collect();
            let sampled = b.candidates(&old, row.prompt_id, &pre, &prefix_windows, &clip_windows(ctx, row, target), &seeds)?;
            pb.inc(1);
            let shape: Vec<usize> = std::iter::once(g_count as usize).chain(clip_shape.iter().copied()).collect();
            (sampled, tensors::candidate_clips(), latent_bindings(ctx, &clip_shape), shape)
        };
        let mut t = TensorSet::new();
        t.insert("latents".into(), Tensor::from_f32(&shape, &sampled.latents));
        t.insert("noise".into(), Tensor::from_f32(&shape, &sampled.noise));
        write_tensors(ctx, pending, &layout::group_file(dir, *g), &file_layout, &bindings, &t)?;
    }
    pb.finish_and_clear();
    Ok(groups.len())
}
