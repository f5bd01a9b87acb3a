#!/usr/bin/env python3
"""The GPU benchmark in one command: SD 1.5-architecture at 512x512 (batch 1/4/8, 50 steps) and
SDXL-architecture at 1024x1024 (batch 1/2, 20 steps), random weights in float16, rendered by
sdspool over unfused ("plain") and ONNX Runtime-optimised ("opt", onnx/optimize.py --fp16)
graphs, with I/O binding and CUDA graphs on and off (sdspool's `execution.io_binding` and
`execution.cuda.cuda_graph`), against diffusers float16 with PyTorch's scaled-dot-product
attention on the same weights in the same command.

    python3 onnx/gpu/bench_gpu.py --out DIR --sdspool BIN --ort-lib LIB [--arch sd15,sdxl]
    python3 onnx/gpu/bench_gpu.py --dry-run --out DIR --sdspool BIN --ort-lib LIB

onnx/gpu/bench.sh runs it on the device machine (see BENCHMARKS.md). --dry-run does the same on
the CPU with tiny models of the same families (64x64, 3 steps, CPU provider, float32, graphs
optimised with --target cpu): every command line, config file and parser runs, in a couple of
minutes.

For each architecture: the pipeline is built from configs on the device (seeded; weights
scaled by 0.5 to keep float16 activations finite), exported to ONNX in float32 with optimum's
graph names (torch.onnx.export, opset 17), turned into the two float16 folders by
onnx/optimize.py in the background while diffusers is timed, then rendered by `sdspool bench`
once per (graph, binding, CUDA graph, batch). Every result is a JSON line in DIR/results.jsonl;
onnx/gpu/summarize.py turns DIR into the BENCHMARKS.md rows. The per-row `sdspool bench --json`
reports and the optimizer's progress lines go into DIR/reports.tar.gz (the device machine returns
at most 8 files). A time budget (--budget-s) keeps
the command inside the device's limit: rows it cannot reach are written as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a photo of an astronaut riding a horse on mars"


@dataclass(frozen=True)
class Arch:
    name: str
    size: int
    batches: tuple[int, ...]
    steps: int
    template: str  # committed model folder whose tokenizers, scheduler and model_index.json are copied


FULL = {
    "sd15": Arch("sd15", 512, (1, 4, 8), 50, "tiny-sd"),
    "sdxl": Arch("sdxl", 1024, (1, 2), 20, "tiny-sdxl"),
}
DRY = {
    "sd15": Arch("sd15", 64, (1, 2), 3, "tiny-sd"),
    "sdxl": Arch("sdxl", 64, (1,), 3, "tiny-sdxl"),
}
# (graph, execution.io_binding, execution.cuda.cuda_graph); CUDA graphs need bound buffers.
CONFIGS = (("plain", False, False), ("opt", False, False), ("opt", True, False), ("opt", True, True))


class Bench:
    def __init__(self, args):
        self.args = args
        # sdspool reads relative paths in a config against the config's folder: absolute ones here.
        args.ort_lib = str(Path(args.ort_lib).resolve())
        args.sdspool = str(Path(args.sdspool).resolve())
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        # The device returns at most 8 files from $OUT: per-row reports and optimizer logs go
        # here and into one reports.tar.gz at the end; results.jsonl carries what the rows need.
        self.reports = self.work / "reports"
        shutil.rmtree(self.reports, ignore_errors=True)
        self.reports.mkdir()
        self.t0 = time.monotonic()
        self.log = open(self.out / "results.jsonl", "a")

    def emit(self, **kw):
        kw.setdefault("elapsed_s", round(time.monotonic() - self.t0, 1))
        line = json.dumps(kw)
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)


# ---------------------------------------------------------------- models from configs (torch)


def text_config(template: Path, part: str, hidden: int, layers: int, heads: int, inter: int, act: str, proj=None):
    from transformers import CLIPTextConfig

    ids = json.loads((template / part / "config.json").read_text())
    vocab = len(json.loads((template / ("tokenizer_2" if part == "text_encoder_2" else "tokenizer") / "vocab.json").read_text()))
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
              bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"], pad_token_id=ids["pad_token_id"])
    if proj:
        kw["projection_dim"] = proj
    return CLIPTextConfig(**kw)


def build(arch: Arch, dry: bool, template: Path):
    """The torch modules of the architecture (tiny ones with --dry-run), float32, seeded."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    vae_kw = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4)
    if arch.name == "sd15":
        if dry:
            unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
                                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                        cross_attention_dim=32, attention_head_dim=8, sample_size=8)
            vae = AutoencoderKL(**vae_kw, block_out_channels=(32,) * 4, layers_per_block=1, norm_num_groups=32,
                                scaling_factor=0.18215)
            te = CLIPTextModel(text_config(template, "text_encoder", 32, 2, 4, 37, "quick_gelu"))
        else:
            unet = UNet2DConditionModel(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                                        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                                        cross_attention_dim=768, attention_head_dim=8)
            vae = AutoencoderKL(**vae_kw, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                scaling_factor=0.18215)
            te = CLIPTextModel(text_config(template, "text_encoder", 768, 12, 12, 3072, "quick_gelu"))
        parts = {"text_encoder": te}
    else:
        if dry:
            unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                        cross_attention_dim=80, transformer_layers_per_block=(1, 2),
                                        addition_embed_type="text_time", addition_time_embed_dim=8,
                                        projection_class_embeddings_input_dim=8 * 6 + 48, attention_head_dim=(2, 4),
                                        use_linear_projection=True, sample_size=8)
            vae = AutoencoderKL(**vae_kw, block_out_channels=(32,) * 4, layers_per_block=1, norm_num_groups=32,
                                scaling_factor=0.13025, force_upcast=True)
            te = CLIPTextModel(text_config(template, "text_encoder", 32, 3, 4, 37, "quick_gelu"))
            te2 = CLIPTextModelWithProjection(text_config(template, "text_encoder_2", 48, 4, 4, 37, "gelu", proj=48))
        else:
            unet = UNet2DConditionModel(sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280),
                                        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                                        cross_attention_dim=2048, use_linear_projection=True,
                                        addition_embed_type="text_time", addition_time_embed_dim=256,
                                        projection_class_embeddings_input_dim=2816)
            vae = AutoencoderKL(**vae_kw, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                scaling_factor=0.13025, force_upcast=True)
            te = CLIPTextModel(text_config(template, "text_encoder", 768, 12, 12, 3072, "quick_gelu"))
            te2 = CLIPTextModelWithProjection(text_config(template, "text_encoder_2", 1280, 32, 20, 5120, "gelu", proj=1280))
        parts = {"text_encoder": te, "text_encoder_2": te2}
    with torch.no_grad():
        for m in (unet, vae, *parts.values()):
            for p in m.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    return unet.eval(), vae.eval(), {k: v.eval() for k, v in parts.items()}


def export(arch: Arch, unet, vae, encoders, template: Path, folder: Path, device: str):
    """float32 ONNX graphs with optimum's names, plus the configs sdspool reads."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    onnx_kw = dict(opset_version=17, dynamo=False, do_constant_folding=True)
    lat = arch.size // 8
    with torch.no_grad():
        ids = torch.zeros((1, 77), dtype=torch.int64, device=device)
        for name, te in encoders.items():
            (folder / name).mkdir(exist_ok=True)
            n = te.config.num_hidden_layers + 1
            if arch.name == "sd15":
                outputs = ["last_hidden_state", "pooler_output"]

                def fwd(m, input_ids):
                    o = m(input_ids=input_ids)
                    return o.last_hidden_state, o.pooler_output
            elif name == "text_encoder":
                outputs = ["last_hidden_state", "pooler_output"] + [f"hidden_states.{i}" for i in range(n)]

                def fwd(m, input_ids):
                    o = m(input_ids=input_ids, output_hidden_states=True)
                    return (o.last_hidden_state, o.pooler_output, *o.hidden_states)
            else:
                outputs = ["text_embeds", "last_hidden_state"] + [f"hidden_states.{i}" for i in range(n)]

                def fwd(m, input_ids):
                    o = m(input_ids=input_ids, output_hidden_states=True)
                    return (o.text_embeds, o.last_hidden_state, *o.hidden_states)

            wrapper = _Wrap(te, fwd).to(device)
            torch.onnx.export(wrapper, (ids,), str(folder / name / "model.onnx"), input_names=["input_ids"],
                              output_names=outputs,
                              dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                            **{o: {0: "batch"} for o in outputs}}, **onnx_kw)
            te.config.to_json_file(str(folder / name / "config.json"))
        (folder / "unet").mkdir(exist_ok=True)
        x = torch.randn(2, 4, lat, lat, device=device)
        t = torch.tensor(999.0, device=device)
        e = torch.randn(2, 77, unet.config.cross_attention_dim, device=device)
        names, args, dyn = ["sample", "timestep", "encoder_hidden_states"], [x, t, e], {
            "sample": {0: "batch", 2: "h", 3: "w"}, "encoder_hidden_states": {0: "batch", 1: "seq"},
            "out_sample": {0: "batch", 2: "h", 3: "w"}}
        if arch.name == "sdxl":
            pooled = encoders["text_encoder_2"].config.projection_dim
            names += ["text_embeds", "time_ids"]
            args += [torch.randn(2, pooled, device=device), torch.randn(2, 6, device=device)]
            dyn.update({"text_embeds": {0: "batch"}, "time_ids": {0: "batch"}})

            def ufwd(m, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
                cond = {"text_embeds": text_embeds, "time_ids": time_ids}
                return m(sample, timestep, encoder_hidden_states, added_cond_kwargs=cond, return_dict=False)[0]
        else:

            def ufwd(m, sample, timestep, encoder_hidden_states):
                return m(sample, timestep, encoder_hidden_states, return_dict=False)[0]

        torch.onnx.export(_Wrap(unet, ufwd).to(device), tuple(args), str(folder / "unet/model.onnx"),
                          input_names=names, output_names=["out_sample"], dynamic_axes=dyn, **onnx_kw)
        unet.save_config(folder / "unet")
        (folder / "vae_decoder").mkdir(exist_ok=True)
        torch.onnx.export(_Wrap(vae, lambda m, z: m.decode(z, return_dict=False)[0]).to(device),
                          (torch.randn(1, 4, lat, lat, device=device),), str(folder / "vae_decoder/model.onnx"),
                          input_names=["latent_sample"], output_names=["sample"],
                          dynamic_axes={"latent_sample": {0: "batch", 2: "h", 3: "w"},
                                        "sample": {0: "batch", 2: "H", 3: "W"}}, **onnx_kw)
        vae.save_config(folder / "vae_decoder")
    for d in ("tokenizer", "tokenizer_2", "scheduler"):
        if (template / d).is_dir():
            shutil.copytree(template / d, folder / d, dirs_exist_ok=True)
    shutil.copy(template / "model_index.json", folder / "model_index.json")


class _Wrap:
    """A torch module calling fwd(model, *inputs): named outputs for torch.onnx.export."""

    def __new__(cls, model, fwd):
        import torch

        class W(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, *xs):
                return fwd(self.m, *xs)

        return W()


# ---------------------------------------------------------------- diffusers reference


def diffusers_rows(b: Bench, arch: Arch, unet, vae, encoders, folder: Path, device: str, dry: bool):
    """diffusers' pipeline on the same weights (float16 on the GPU, PyTorch SDPA attention):
    median seconds per step after a warm-up, images per second over the whole call."""
    import torch
    from diffusers import EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTokenizer

    dtype = torch.float32 if dry else torch.float16
    unet.set_attn_processor(AttnProcessor2_0())
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    if arch.name == "sd15":
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoders["text_encoder"], tokenizer=tok, unet=unet,
                                       scheduler=PNDMScheduler.from_pretrained(folder / "scheduler"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=encoders["text_encoder"],
                                         text_encoder_2=encoders["text_encoder_2"], tokenizer=tok,
                                         tokenizer_2=CLIPTokenizer.from_pretrained(str(folder / "tokenizer_2")),
                                         unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(folder / "scheduler"))
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for batch in arch.batches:
        kw = dict(num_images_per_prompt=batch, height=arch.size, width=arch.size, output_type="np")
        pipe(PROMPT, num_inference_steps=2, **kw)  # warm-up
        stamps = []

        def cb(p, i, t, k):
            sync()
            stamps.append(time.perf_counter())
            return k

        sync()
        start = time.perf_counter()
        pipe(PROMPT, num_inference_steps=arch.steps, callback_on_step_end=cb, **kw)
        sync()
        total = time.perf_counter() - start
        gaps = sorted(y - x for x, y in zip(stamps, stamps[1:]))
        step = gaps[len(gaps) // 2]
        b.emit(event="row", arch=arch.name, impl="diffusers", attention="sdpa", dtype=str(dtype).split(".")[-1],
               batch=batch, steps=arch.steps, size=arch.size, status="ok", s_per_step=round(step, 5),
               images_per_s=round(batch / total, 4), s_per_image=round(total / batch, 4), total_s=round(total, 3))
    del pipe
    if device == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- sdspool


def config_text(args, model_dir: Path, io_binding: bool | None, cuda_graph: bool, out_dir: Path) -> str:
    """sdspool's config for one row; io_binding None leaves the key out (an sdspool without it)."""
    providers = "[cpu]" if args.dry_run else "[cuda, cpu]"
    binding = "" if io_binding is None else f"  io_binding: {str(io_binding).lower()}\n"
    return (
        "onnxruntime:\n"
        f"  library: {args.ort_lib}\n"
        "execution:\n"
        f"  providers: {providers}\n"
        f"{binding}"
        "  cuda:\n"
        "    conv_algorithm_search: heuristic\n"
        f"    cuda_graph: {str(cuda_graph).lower()}\n"
        f"output_dir: {out_dir}\n"
        f"spool:\n  dir: {out_dir / 'spool'}\n"
        f"default_model: bench\nmodels:\n  bench:\n    path: {model_dir}\n"
    )


def bench_command(args, cfg: Path, arch: Arch, batch: int, json_out: Path) -> list[str]:
    return [args.sdspool, "--config", str(cfg), "bench", "--model", "bench", "--prompts", "1",
            "--candidates", str(batch), "--steps", str(arch.steps), "--size", f"{arch.size}x{arch.size}",
            "--runs", "1", "--warmup", "1", "--no-rerank", "--json", str(json_out)]


def parse_bench(json_path: Path) -> dict:
    """The figures of one `sdspool bench --json` report that the rows carry."""
    r = json.loads(json_path.read_text())
    m = r["mean"]
    calls = m["unet_calls"] or 1
    denoise = m.get("phases", {}).get("denoise")
    return {
        "images_per_s": round(m["images_per_s"], 4),
        "s_per_image": round(m["seconds_per_image"], 4),
        "unet_s_per_call": round(m["unet_s_per_call"], 5),
        "s_per_step": round(denoise / calls, 5) if denoise else None,
        "unet_calls": m["unet_calls"],
        "load_s": r["cold"]["load_s"],
        "provider": r["provider"],
        "onnxruntime": r["onnxruntime_version"],
    }


def sdspool_knows_io_binding(b: Bench) -> bool:
    """Whether this sdspool accepts `execution.io_binding` (a config it rejects names the key)."""
    cfg = b.work / "probe.yaml"
    cfg.write_text(config_text(b.args, REPO / "onnx/models/tiny-sd", False, False, b.work / "probe-out"))
    p = subprocess.run([b.args.sdspool, "--config", str(cfg), "status"], capture_output=True, text=True)
    text = p.stdout + p.stderr
    return not ("io_binding" in text and "unknown field" in text)


def sdspool_rows(b: Bench, arch: Arch, folders: dict[str, Path], knows_binding: bool):
    for graph, io_binding, cuda_graph in CONFIGS:
        for batch in arch.batches:
            row = dict(event="row", arch=arch.name, impl="sdspool", graph=graph, io_binding=io_binding,
                       cuda_graph=cuda_graph, batch=batch, steps=arch.steps, size=arch.size)
            tag = f"{arch.name}-{graph}-bind{int(io_binding)}-graph{int(cuda_graph)}-b{batch}"
            note = {}
            if not knows_binding:
                if io_binding:
                    b.emit(**row, status="skipped", message="this sdspool does not know execution.io_binding")
                    continue
                note = {"note": "this sdspool does not know execution.io_binding: key left out (no binding)"}
            if b.left() < b.args.min_left_s:
                b.emit(**row, status="skipped", message=f"time budget ({b.args.budget_s} s) spent")
                continue
            cfg = b.work / f"{tag}.yaml"
            cfg.write_text(config_text(b.args, folders[graph], io_binding if knows_binding else None, cuda_graph,
                                       b.work / "out"))
            json_out = b.reports / f"{tag}.json"
            cmd = bench_command(b.args, cfg, arch, batch, json_out)
            t0 = time.monotonic()
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(b.left(), 30),
                                   env={**os.environ, "SDSPOOL_LOG": "warn"})
                ok = p.returncode == 0 and json_out.exists()
                err = (p.stderr.strip().splitlines() or [""])[-1][:400]
            except subprocess.TimeoutExpired:
                ok, err = False, "timed out"
            wall = round(time.monotonic() - t0, 1)
            if ok:
                b.emit(**row, status="ok", wall_s=wall, command=" ".join(cmd[1:]), **note, **parse_bench(json_out))
            else:
                b.emit(**row, status="error", wall_s=wall, message=err, **note)


# ---------------------------------------------------------------- one architecture


def optimize_procs(b: Bench, arch: Arch, fp32: Path, dry: bool) -> dict[str, tuple[Path, subprocess.Popen]]:
    """onnx/optimize.py in the background: 'plain' (no fusion) and 'opt', float16 on the GPU."""
    procs = {}
    for graph in ("plain", "opt"):
        dst = b.work / f"{arch.name}-{graph}"
        shutil.rmtree(dst, ignore_errors=True)
        cmd = [sys.executable, str(REPO / "onnx/optimize.py"), str(fp32), str(dst)]
        cmd += ["--target", "cpu"] if dry else ["--target", "cuda", "--fp16"]
        if graph == "plain":
            cmd.append("--no-fusion")
        log = open(b.reports / f"optimize-{arch.name}-{graph}.jsonl", "w")
        procs[graph] = (dst, subprocess.Popen(cmd, stdout=log, stderr=subprocess.DEVNULL), cmd)
    return procs


def run_arch(b: Bench, arch: Arch, knows_binding: bool):
    import torch

    dry = b.args.dry_run
    device = "cpu" if dry else "cuda"
    if dry:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    template = REPO / "onnx/models" / arch.template
    fp32 = b.work / f"{arch.name}-fp32"
    t0 = time.monotonic()
    unet, vae, encoders = build(arch, dry, template)
    for m in (unet, vae, *encoders.values()):
        m.to(device)
    shutil.rmtree(fp32, ignore_errors=True)
    export(arch, unet, vae, encoders, template, fp32, device)
    b.emit(event="stage", arch=arch.name, stage="exported", seconds=round(time.monotonic() - t0, 1),
           unet_params=sum(p.numel() for p in unet.parameters()))
    procs = optimize_procs(b, arch, fp32, dry)
    t0 = time.monotonic()
    diffusers_rows(b, arch, unet, vae, encoders, fp32, device, dry)
    b.emit(event="stage", arch=arch.name, stage="diffusers", seconds=round(time.monotonic() - t0, 1))
    del unet, vae, encoders
    if device == "cuda":
        torch.cuda.empty_cache()
    folders = {}
    for graph, (dst, proc, cmd) in procs.items():
        rc = proc.wait()
        lines = (b.reports / f"optimize-{arch.name}-{graph}.jsonl").read_text().splitlines()
        events = [json.loads(x) for x in lines if x.startswith("{")]
        unet = next((e for e in events if e.get("stage") == "unet" and e.get("state") == "done"), {})
        last = events[-1] if events else {}
        b.emit(event="stage", arch=arch.name, stage=f"optimize-{graph}", rc=rc, command=" ".join(cmd[1:]),
               seconds=last.get("seconds"), unet_fused=unet.get("fused"), message=last.get("message"))
        if rc == 0:
            folders[graph] = dst
    shutil.rmtree(fp32, ignore_errors=True)
    if len(folders) < 2:
        b.emit(event="error", arch=arch.name, message="onnx/optimize.py failed (see optimize-*.jsonl)")
        return
    sdspool_rows(b, arch, folders, knows_binding)


def machine() -> dict:
    info = {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["gpu"] = q.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    for mod in ("torch", "diffusers", "transformers", "onnx", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001  (recorded, not fatal)
            info[mod] = f"unavailable: {e}"
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder for results.jsonl and the reports")
    ap.add_argument("--work", default="/tmp/sdbench", help="scratch folder for the model folders")
    ap.add_argument("--sdspool", required=True, help="the sdspool binary")
    ap.add_argument("--ort-lib", required=True, help="libonnxruntime.so.* for sdspool (GPU build on the device)")
    ap.add_argument("--arch", default="sd15,sdxl", help="comma-separated: sd15, sdxl")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: exercise everything quickly")
    ap.add_argument("--budget-s", type=float, default=440, help="stop starting sdspool runs after this")
    ap.add_argument("--min-left-s", type=float, default=25, help="time an sdspool run needs at least")
    ap.add_argument("--command", default=" ".join(sys.argv), help="the command recorded with the rows")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    b = Bench(args)
    b.emit(event="start", command=args.command, dry_run=args.dry_run, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           machine=machine())
    knows = sdspool_knows_io_binding(b)
    b.emit(event="stage", stage="probe", io_binding_known=knows)
    archs = DRY if args.dry_run else FULL
    for name in [a for a in args.arch.split(",") if a]:
        if name not in archs:
            b.emit(event="error", message=f"--arch {name}: one of {', '.join(archs)}")
            return 2
        try:
            run_arch(b, archs[name], knows)
        except Exception as e:  # noqa: BLE001  (one architecture's failure leaves the other's rows)
            b.emit(event="error", arch=name, message=f"{type(e).__name__}: {e}")
    subprocess.run(["tar", "-czf", str(b.out / "reports.tar.gz"), "-C", str(b.reports.parent), b.reports.name])
    b.emit(event="done", seconds=round(time.monotonic() - b.t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
