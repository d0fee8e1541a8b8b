#!/usr/bin/env bash
# Builds the seed corpus of every fuzz target under fuzz/corpus/<target>/ (gitignored; libFuzzer adds the inputs
# it finds interesting there) from ../shared and the small hand-made seeds in fuzz/seeds/. Idempotent: existing
# corpus files are kept. Usage: fuzz/make_corpus.sh [CORPUS_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${VITQ_SHARED_DIR:-../shared}
OUT=${1:-fuzz/corpus}
SEEDS=fuzz/seeds
mkdir -p "$OUT"/{safetensors,config,image,labels,plan,onnx}

# 8-byte little-endian integer
le64() {
  local n=$1 s="" i
  for i in 0 1 2 3 4 5 6 7; do s+=$(printf '\\x%02x' $(((n >> (8 * i)) & 255))); done
  printf "$s"
}
# safetensors file: le64(len(header)) header data
st() {
  local out=$1 header=$2 nbytes=$3
  { le64 ${#header}; printf '%s' "$header"; head -c "$nbytes" /dev/zero | tr '\0' '\077'; } > "$out"
}

# --- safetensors: small valid files of every dtype, plus the headers of real checkpoints (truncated) ---
d=$OUT/safetensors
st $d/f32.st '{"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}' 16
st $d/mixed.st '{"__metadata__":{"format":"pt"},"a":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[1,2],"data_offsets":[6,10]},"n":{"dtype":"I64","shape":[],"data_offsets":[10,18]}}' 18
st $d/scalar_empty.st '{"s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,5],"data_offsets":[4,4]}}' 4
st $d/unsupported.st '{"u":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"d":{"dtype":"F64","shape":[1],"data_offsets":[4,12]}}' 12
for m in mobilevitv2_050 efficientformer_l1-w24 swin_tiny_patch4_window7_224-w32; do
  f=$SHARED/models/$m/model.safetensors
  [ -f "$f" ] && head -c 65536 "$f" > "$d/$m.truncated.st"
done

# --- config: the shared models' config.json and small hand-made variants ---
for f in "$SHARED"/models/*/config.json; do
  [ -f "$f" ] && cp "$f" "$OUT/config/$(basename "$(dirname "$f")").json"
done
cp $SEEDS/config/*.json "$OUT/config/"

# --- image: 6 parameter bytes (resize size, filter, crop) + a PNG or JPEG file ---
prefix() { printf '\x30\x20\x03\x18\x10\x57'; }
for f in $SEEDS/image/*.png; do { prefix; cat "$f"; } > "$OUT/image/$(basename "$f")"; done
n=0
# (sed, not head: head leaves early, and sort, still writing, dies of SIGPIPE, which pipefail makes this script's
# exit status — CI lost a run to it on a loaded machine)
for f in $(find "$SHARED/data/imagenet" -name '*.JPEG' -size -24k 2>/dev/null | sort | sed -n 1,6p); do
  { prefix; cat "$f"; } > "$OUT/image/$(basename "$f")"; n=$((n + 1))
done
if [ "$n" -gt 0 ]; then  # a truncated JPEG (the decoder must reject or pad it)
  f=$(find "$SHARED/data/imagenet" -name '*.JPEG' -size -24k | sort | sed -n 1p)
  { prefix; head -c 2000 "$f"; } > "$OUT/image/truncated.jpg"
fi

# --- labels: the shared labels.txt files (heads) and hand-made edge cases ---
for s in val1000 calib1000; do
  f=$SHARED/data/imagenet/$s/labels.txt
  [ -f "$f" ] && head -40 "$f" > "$OUT/labels/$s.txt"
done
cp $SEEDS/labels/*.txt "$OUT/labels/"

# --- plan: small plans cut from `vitq quantize` output for DeiT-Tiny (minmax, fqvit, AdaRound codes, bias) ---
cp $SEEDS/plan/*.json "$OUT/plan/"

# --- onnx: tiny hand-written models (text protobuf, encoded with protoc) ---
if command -v protoc >/dev/null && [ -f /usr/include/onnx/onnx.proto ]; then
  for f in $SEEDS/onnx/*.txtpb; do
    protoc --proto_path=/usr/include --encode=onnx.ModelProto onnx/onnx.proto < "$f" > "$OUT/onnx/$(basename "${f%.txtpb}").onnx"
  done
else
  echo "make_corpus: protoc or /usr/include/onnx/onnx.proto missing: no ONNX seeds" >&2
fi

for t in safetensors config image labels plan onnx; do
  echo "corpus $t: $(find "$OUT/$t" -type f | wc -l) files, $(du -sh "$OUT/$t" | cut -f1)"
done
