"""GPU benchmark on the device machine: a full-size SD 1.5 architecture with random weights in
float16, exported to ONNX here, rendered by sdspool (CUDA provider) and by PyTorch diffusers on
the same card. Writes JSON lines of results into $OUT."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, "/tmp/site")
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel, PNDMScheduler
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

OUT = Path(os.environ["OUT"])
REPO = Path(sys.argv[1])
M = Path("/tmp/sd15-fp16")
log = open(OUT / "bench.jsonl", "a")
def emit(**kw):
    print(json.dumps(kw), flush=True); log.write(json.dumps(kw) + "\n"); log.flush()

torch.manual_seed(0)
t0 = time.time()
unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    cross_attention_dim=768, attention_head_dim=8).to("cuda", torch.float16).eval()
vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, latent_channels=4, sample_size=512, scaling_factor=0.18215).to("cuda", torch.float16).eval()
text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    eos_token_id=49407, pad_token_id=49407, bos_token_id=49406)).to("cuda", torch.float16).eval()
# Small random weights keep fp16 activations finite (these are timing runs, not pictures).
with torch.no_grad():
    for m in (unet, vae, text):
        for p in m.parameters():
            if p.dim() > 1:
                p.mul_(0.5)
emit(stage="built", params_unet=sum(p.numel() for p in unet.parameters()), seconds=round(time.time() - t0, 1))

if not (M / "unet" / "model.onnx").exists():
    t0 = time.time()
    for d in ("text_encoder", "unet", "vae_decoder", "tokenizer", "scheduler"):
        (M / d).mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        ids = torch.full((2, 77), 49407, dtype=torch.int64, device="cuda")
        class TE(torch.nn.Module):
            def __init__(s, m): super().__init__(); s.m = m
            def forward(s, input_ids): return s.m(input_ids=input_ids).last_hidden_state
        torch.onnx.export(TE(text), (ids,), M / "text_encoder/model.onnx", input_names=["input_ids"],
            output_names=["last_hidden_state"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "last_hidden_state": {0: "batch", 1: "seq"}},
            opset_version=17, dynamo=False)
        class U(torch.nn.Module):
            def __init__(s, m): super().__init__(); s.m = m
            def forward(s, sample, timestep, encoder_hidden_states):
                return s.m(sample, timestep, encoder_hidden_states, return_dict=False)[0]
        x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
        t = torch.tensor(999.0, device="cuda", dtype=torch.float32)
        e = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
        torch.onnx.export(U(unet), (x, t, e), M / "unet/model.onnx", input_names=["sample", "timestep", "encoder_hidden_states"],
            output_names=["out_sample"], dynamic_axes={"sample": {0: "batch", 2: "h", 3: "w"}, "encoder_hidden_states": {0: "batch", 1: "seq"}, "out_sample": {0: "batch", 2: "h", 3: "w"}},
            opset_version=17, dynamo=False)
        class D(torch.nn.Module):
            def __init__(s, m): super().__init__(); s.m = m
            def forward(s, latent_sample): return s.m.decode(latent_sample, return_dict=False)[0]
        torch.onnx.export(D(vae), (torch.randn(1, 4, 64, 64, device="cuda", dtype=torch.float16),), M / "vae_decoder/model.onnx",
            input_names=["latent_sample"], output_names=["sample"], dynamic_axes={"latent_sample": {0: "batch", 2: "h", 3: "w"}, "sample": {0: "batch", 2: "H", 3: "W"}},
            opset_version=17, dynamo=False)
    (M / "vae_decoder/config.json").write_text(json.dumps({"scaling_factor": 0.18215}))
    (M / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.39.0"}))
    shutil.copy(REPO / "onnx/models/tiny-sd/scheduler/scheduler_config.json", M / "scheduler/")
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(REPO / "tests/data/clip-vocab" / f, M / "tokenizer/")
    for f in ("special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(REPO / "tests/golden/tokenizer/sd1" / f, M / "tokenizer/")
    emit(stage="exported", seconds=round(time.time() - t0, 1), unet_bytes=sum(f.stat().st_size for f in (M / "unet").iterdir()))

# The text encoder runs in float32 (transformers' CLIP in float16 exports LayerNorms with mixed
# types); its output is converted to float16 for the UNet by sdspool as by diffusers' fp16 exports.
if not (M / "text_encoder" / "fp32").exists():
    import copy
    with torch.no_grad():
        ids = torch.full((2, 77), 49407, dtype=torch.int64, device="cuda")
        class TE32(torch.nn.Module):
            def __init__(s, m): super().__init__(); s.m = m
            def forward(s, input_ids): return s.m(input_ids=input_ids).last_hidden_state
        torch.onnx.export(TE32(copy.deepcopy(text).float()), (ids,), M / "text_encoder/model.onnx", input_names=["input_ids"],
            output_names=["last_hidden_state"], dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "last_hidden_state": {0: "batch", 1: "seq"}},
            opset_version=17, dynamo=False)
    (M / "text_encoder" / "fp32").write_text("")
    emit(stage="text encoder exported in float32")

STEPS = 20
PROMPT = "a photo of an astronaut riding a horse on mars"
results = {}
# PyTorch diffusers fp16, same weights, same scheduler and steps.
tok = CLIPTokenizer.from_pretrained(str(M / "tokenizer"))
pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
    scheduler=PNDMScheduler.from_pretrained(M / "scheduler"), safety_checker=None, feature_extractor=None,
    requires_safety_checker=False).to("cuda")
pipe.set_progress_bar_config(disable=True)
for batch in (1, 4, 8):
    pipe(PROMPT, num_inference_steps=3, num_images_per_prompt=batch, height=512, width=512)  # warm-up
    times = []
    def cb(p, i, t, kw):
        torch.cuda.synchronize(); times.append(time.perf_counter()); return kw
    torch.cuda.synchronize(); start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=STEPS, num_images_per_prompt=batch, height=512, width=512,
         callback_on_step_end=cb, output_type="np")
    torch.cuda.synchronize(); total = time.perf_counter() - start
    steps = [b - a for a, b in zip(times, times[1:])]
    step = sorted(steps)[len(steps) // 2]
    emit(impl="diffusers-pytorch-fp16", batch=batch, unet_calls=len(times), seconds_per_step=round(step, 5),
         it_per_s=round(1 / step, 2), images_per_s=round(batch / total, 3), total_seconds=round(total, 3))
del pipe
torch.cuda.empty_cache()
