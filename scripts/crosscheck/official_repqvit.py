#!/usr/bin/python3
"""Cross-check by hand (not part of vitq, its build or its tests): runs the official RepQ-ViT code, unchanged, on
the shared DeiT-Tiny with the 32 calib1000 images vitq draws with seed 0, and reports what `vitq compare` reports
on val1000: top-1, its change from FP32, top-1 agreement with FP32 and KL(FP32 || quantized).

Set-up (Debian 12): apt-get install python3-torch python3-torchvision; the official code (github zkkli/RepQ-ViT,
its classification/ folder) and timm v0.9.16 (github huggingface/pytorch-image-models, `git archive v0.9.16
timm`) unpacked somewhere. Then, from the repository root:
    /usr/bin/python3 scripts/crosscheck/official_repqvit.py --repq DIR/classification --timm DIR_ABOVE_timm --bits 6
About 11 minutes per width on 2 cores.

What is replaced, and nothing else: the official `build_dataset` (it reads an ImageNet folder; here the 32 images
and val1000, with timm's eval transform for this model: bicubic resize to 248, centre crop 224), `timm.create_model`
(pretrained weights come from ../shared instead of the internet; timm 0.9's Identity q_norm, k_norm and
Mlp.norm are removed from the quantized model, see build_model), and `validate` (to compare with FP32 logits).
One fix is needed to run at all: the official per-channel search returns None for a constant channel (every
candidate's step is 0 and its score NaN), and this model's LayerNorms have two channels with gamma = 0; such a
channel gets the range [min(c, 0), max(c, 0)] instead. The run prints how many channels took it.
"""
import argparse
import json
import os
import struct
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--repq", required=True, help="the official code's classification/ folder")
ap.add_argument("--timm", required=True, help="the folder holding timm v0.9.16's timm/ package")
ap.add_argument("--bits", type=int, required=True, help="weight and activation width")
ap.add_argument("--shared", default="../shared")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--calib-size", type=int, default=32)
opt = ap.parse_args()
sys.path[:0] = [opt.timm, opt.repq]

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

import timm
import test_quant  # the official script; its main() is what runs
from quant.quantizer import UniformQuantizer

torch.set_num_threads(2)
MODEL = os.path.join(opt.shared, "models/deit_tiny_patch16_224/model.safetensors")
DATA = os.path.join(opt.shared, "data/imagenet")


def read_labels(folder):
    out = []
    for line in open(os.path.join(folder, "labels.txt")):
        line = line.rstrip("\r\n")
        if not line or line.startswith("#"):
            continue
        f, c = line.rsplit(None, 1)
        out.append((os.path.join(folder, f.rstrip()), int(c)))
    return out


class MT64:
    """std::mt19937_64, to draw the same calibration images as vitq's sample_subset."""

    def __init__(self, seed):
        self.mt = [0] * 312
        self.mt[0] = seed & 0xFFFFFFFFFFFFFFFF
        for i in range(1, 312):
            self.mt[i] = (6364136223846793005 * (self.mt[i - 1] ^ (self.mt[i - 1] >> 62)) + i) & 0xFFFFFFFFFFFFFFFF
        self.i = 312

    def __call__(self):
        if self.i >= 312:
            for k in range(312):
                y = (self.mt[k] & 0xFFFFFFFF80000000) | (self.mt[(k + 1) % 312] & 0x7FFFFFFF)
                self.mt[k] = self.mt[(k + 156) % 312] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
            self.i = 0
        x = self.mt[self.i]
        self.i += 1
        x ^= (x >> 29) & 0x5555555555555555
        x ^= (x << 17) & 0x71D67FFFEDA60000
        x ^= (x << 37) & 0xFFF7EEE000000000
        x ^= x >> 43
        return x & 0xFFFFFFFFFFFFFFFF


def draw(samples, n, seed):
    idx, rng = list(range(len(samples))), MT64(seed)
    for i in range(n):
        j = i + rng() % (len(idx) - i)
        idx[i], idx[j] = idx[j], idx[i]
    return [samples[k] for k in idx[:n]]


tf = T.Compose([T.Resize(248, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


def batches(samples, size):
    for s in range(0, len(samples), size):
        part = samples[s:s + size]
        yield (torch.stack([tf(Image.open(f).convert("RGB")) for f, _ in part]), torch.tensor([c for _, c in part]))


def load_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    head, out = json.loads(raw[8:8 + n]), {}
    for k, v in head.items():
        if k == "__metadata__":
            continue
        assert v["dtype"] == "F32", (k, v["dtype"])
        s, e = v["data_offsets"]
        out[k] = torch.from_numpy(np.frombuffer(raw[8 + n + s:8 + n + e], dtype=np.float32).copy()).reshape(v["shape"])
    return out


_create = timm.create_model


def create_model(name, pretrained=False, **kw):
    m = _create(name, pretrained=False, **kw)
    m.load_state_dict(load_safetensors(MODEL), strict=True)
    return m


timm.create_model = create_model

constant_channels = []
_init = UniformQuantizer.init_quantization_scale


def init_quantization_scale(self, x, channel_wise=False):
    d, z = _init(self, x, channel_wise)
    if d is None:  # a constant channel: see the module's docstring
        lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
        hi = max(hi, lo + 1e-8)
        d = torch.tensor((hi - lo) / (2 ** self.n_bits - 1))
        z = torch.round(torch.tensor(-lo) / d)
        constant_channels.append(tuple(x.shape))
    return d, z


UniformQuantizer.init_quantization_scale = init_quantization_scale

calib = draw(read_labels(os.path.join(DATA, "calib1000")), opt.calib_size, opt.seed)
val = read_labels(os.path.join(DATA, "val1000"))
fp_model = create_model("deit_tiny_patch16_224").eval()
fp_logits = []
with torch.no_grad():
    for x, _ in batches(val, 100):
        fp_logits.append(fp_model(x))
fp_logits = torch.cat(fp_logits)
started = {}


def build_dataset(args):
    started["t"] = time.time()
    return list(batches(calib, len(calib))), None


def validate(args, val_loader, model, criterion, device):
    seconds = time.time() - started["t"]
    logits = []
    with torch.no_grad():
        for x, _ in batches(val, 100):
            logits.append(model(x))
    q = torch.cat(logits)
    y = torch.tensor([c for _, c in val])
    lp, lq = torch.log_softmax(fp_logits.double(), 1), torch.log_softmax(q.double(), 1)
    n = len(val)
    fp_top1 = 100.0 * (fp_logits.argmax(1) == y).sum().item() / n
    top1 = 100.0 * (q.argmax(1) == y).sum().item() / n
    agree = 100.0 * (q.argmax(1) == fp_logits.argmax(1)).sum().item() / n
    kl = (lp.exp() * (lp - lq)).sum().item() / n
    print(f"official RepQ-ViT W{opt.bits}A{opt.bits}: top-1 {top1:.2f} ({top1 - fp_top1:+.2f} from FP32 {fp_top1:.2f}), "
          f"agreement {agree:.2f}%, KL {kl:.4f} on {n} images; calibration {seconds:.1f} s (the official main up to "
          f"validation: loading the images, building the model, both passes and the reparameterisation); "
          f"constant channels given a range: {len(constant_channels)}", flush=True)
    return 0.0, top1, 0.0


_build_model = test_quant.build_model


def build_model(name):
    # timm 0.9 added Identity modules named q_norm / k_norm (Attention) and norm (Mlp); the official
    # reparameterisation loop takes every module named *norm* for a LayerNorm, so they are removed from the model it
    # quantizes, as in the timm the code was written for (the official attention forward, which build_model
    # installs, never calls them; Mlp gets the forward without its Identity)
    m = _build_model(name)
    for blk in m.blocks:
        for parent, names in ((blk.attn, ("q_norm", "k_norm")), (blk.mlp, ("norm",))):
            for n in names:
                if hasattr(parent, n):
                    assert isinstance(getattr(parent, n), torch.nn.Identity)
                    delattr(parent, n)
        mlp = blk.mlp
        mlp.forward = lambda x, mlp=mlp: mlp.drop2(mlp.fc2(mlp.drop1(mlp.act(mlp.fc1(x)))))
    return m


test_quant.build_model = build_model
test_quant.build_dataset = build_dataset
test_quant.validate = validate
test_quant.args = test_quant.get_args_parser().parse_args(
    ["--model", "deit_tiny", "--device", "cpu", "--seed", str(opt.seed), "--calib-batchsize", str(opt.calib_size),
     "--w_bits", str(opt.bits), "--a_bits", str(opt.bits)])
test_quant.main()
