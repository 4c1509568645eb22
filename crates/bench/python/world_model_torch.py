"""The WorldCompass world model written in PyTorch, for `worldcompass bench`.

Loads the project's safetensors checkpoint, checks that its velocity and
flow-matching loss equal candle's on the same inputs, then times a forward
(loss), a forward+backward and a sampler step (G candidates' velocity from
a cached context of batch 1) with the same thread count. Prints one JSON
object. A reference written independently of the Rust code from the model's
description (crates/model/src/model.rs): adaLN-modulated pre-norm blocks
with RMS norm, attention of the target clip to the cached context keys and
values and to itself, per-frame action and time conditioning.

Usage: python3 world_model_torch.py WEIGHTS INPUTS CONFIG_JSON THREADS REPS
"""

import json
import math
import sys
import time

import torch
from safetensors.torch import load_file

TIME_DIM = 64
NORM_EPS = 1e-6
MIN_T = 0.05


def rms_norm(x):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + NORM_EPS)


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


def linear(w, name, x):
    return torch.nn.functional.linear(x, w[name + ".weight"], w[name + ".bias"])


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = (t[:, None] * 1000.0) * freqs[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class WorldModel:
    def __init__(self, cfg, weights):
        self.cfg = cfg
        self.w = weights
        self.d = cfg["d_model"]
        self.heads = cfg["heads"]
        self.tpf = (cfg["frame_size"] // cfg["patch"]) ** 2
        self.context_slots = 1 + cfg["context_frames"]

    def embed(self, tokens, first_slot):
        b, n, tok = tokens.shape
        frames = n // self.tpf
        x = linear(self.w, "patch_in", tokens.reshape(b, frames, self.tpf, tok))
        slot = self.w["slot_embed"][first_slot:first_slot + frames][:, None, :]
        x = x + self.w["pos_embed"] + slot
        return x.reshape(b, n, self.d)

    def per_token(self, v):
        b, f, k = v.shape
        return v[:, :, None, :].expand(b, f, self.tpf, k).reshape(b, f * self.tpf, k)

    def block(self, i, x, mods, cache):
        name = f"blocks.{i}"
        d = self.d
        m = [mods[..., j * d:(j + 1) * d] for j in range(6)]
        b, n, _ = x.shape
        h = modulate(rms_norm(x), m[0], m[1])
        qkv = linear(self.w, name + ".attn.qkv", h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if cache is None:
            keys, values = k, v
        else:
            ck, cv = cache
            keys = torch.cat([ck.expand(b, -1, -1, -1), k], dim=2)
            values = torch.cat([cv.expand(b, -1, -1, -1), v], dim=2)
        scores = q @ keys.transpose(-1, -2) / math.sqrt(q.shape[-1])
        att = (torch.softmax(scores, dim=-1) @ values).transpose(1, 2).reshape(b, n, d)
        x = x + linear(self.w, name + ".attn.proj", att) * m[2]
        h2 = modulate(rms_norm(x), m[3], m[4])
        mlp = linear(self.w, name + ".mlp.fc2", torch.nn.functional.gelu(linear(self.w, name + ".mlp.fc1", h2), approximate="tanh"))
        return x + mlp * m[5], k, v

    def encode_context(self, context):
        x = self.embed(context, 0)
        c = torch.nn.functional.silu(self.w["context_cond"])
        kv = []
        for i in range(self.cfg["layers"]):
            mods = linear(self.w, f"blocks.{i}.ada", c)
            x, k, v = self.block(i, x, mods, None)
            kv.append((k, v))
        return kv

    def velocity(self, cache, z, t, actions):
        b = z.shape[0]
        a = linear(self.w, "action_embed", actions)
        temb = linear(self.w, "time.fc2", torch.nn.functional.silu(linear(self.w, "time.fc1", timestep_embedding(t, TIME_DIM))))
        cond = torch.nn.functional.silu(a + temb[:, None, :])
        x = self.embed(z, self.context_slots) + self.per_token(a)
        for i in range(self.cfg["layers"]):
            mods = self.per_token(linear(self.w, f"blocks.{i}.ada", cond))
            x = self.block(i, x, mods, cache[i])[0]
        m = self.per_token(linear(self.w, "final.ada", cond))
        x = modulate(rms_norm(x), m[..., :self.d], m[..., self.d:])
        out = linear(self.w, "final.proj", x)
        if self.cfg.get("prediction", "clean") == "velocity":
            return out
        return (z - out) / t.clamp(MIN_T, 1.0).reshape(b, 1, 1)

    def loss(self, context, x, eps, t, actions):
        tt = t.reshape(-1, 1, 1)
        z = x * (1 - tt) + eps * tt
        v = eps - x
        v_hat = self.velocity(self.encode_context(context), z, t, actions)
        w = torch.clamp(4 * tt * tt, max=1.0)
        return ((v_hat - v).pow(2) * w).mean(), v_hat


def median_seconds(reps, f):
    f()
    ts = []
    for _ in range(reps):
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    ts.sort()
    return ts[len(ts) // 2]


def main():
    weights_path, inputs_path, config_json, threads, reps = sys.argv[1:6]
    torch.set_num_threads(int(threads))
    cfg = json.loads(config_json)
    weights = {k: v.float() for k, v in load_file(weights_path).items()}
    inp = load_file(inputs_path)
    model = WorldModel(cfg, weights)
    with torch.no_grad():
        loss, v_hat = model.loss(inp["context"], inp["x"], inp["eps"], inp["t"], inp["actions"])
    diff_v = (v_hat - inp["expected_velocity"]).abs().max().item()
    diff_loss = abs(loss.item() - inp["expected_loss"].item())
    scale_v = inp["expected_velocity"].abs().max().item()
    with torch.no_grad():
        sampler_cache = model.encode_context(inp["sampler_context"])
        sv = model.velocity(sampler_cache, inp["sampler_noise"], inp["sampler_t"], inp["sampler_actions"])
    diff_sv = (sv - inp["expected_sampler_velocity"]).abs().max().item()
    scale_sv = inp["expected_sampler_velocity"].abs().max().item()

    params = {k: v.clone().requires_grad_(True) for k, v in weights.items()}
    trainable = WorldModel(cfg, params)

    def forward():
        with torch.no_grad():
            trainable.loss(inp["context"], inp["x"], inp["eps"], inp["t"], inp["actions"])

    def forward_backward():
        for p in params.values():
            p.grad = None
        trainable.loss(inp["context"], inp["x"], inp["eps"], inp["t"], inp["actions"])[0].backward()

    def sampler_step():
        with torch.no_grad():
            model.velocity(sampler_cache, inp["sampler_noise"], inp["sampler_t"], inp["sampler_actions"])

    reps = int(reps)
    a, b = torch.rand(1024, 1024), torch.rand(1024, 1024)
    matmul_s = median_seconds(reps, lambda: a @ b)
    out = {
        "matmul_gflops": 2 * 1024**3 / matmul_s / 1e9,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "max_abs_diff_velocity": diff_v,
        "max_abs_velocity": scale_v,
        "abs_diff_loss": diff_loss,
        "loss": loss.item(),
        "forward_s": median_seconds(reps, forward),
        "forward_backward_s": median_seconds(reps, forward_backward),
        "max_abs_diff_sampler_velocity": diff_sv,
        "max_abs_sampler_velocity": scale_sv,
        "sampler_step_s": median_seconds(reps, sampler_step),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
