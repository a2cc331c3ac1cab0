#!/usr/bin/env bash
# One-call GPU benchmark: the backbone (ours vs transformers vs timm) and the VGGT Aggregator, in bfloat16 with the
# flash / memory-efficient SDPA backends forced, written to OUT_DIR as JSON (+ logs and the printed tables).
#
# Usage:  benchmarks/gpu.sh [OUT_DIR]          (default OUT_DIR: results/gpu-<UTC timestamp>)
#
# Steps ($STEPS, in this order; each under its own `timeout`; a failed or timed-out step is recorded and the others
# still run; exit status 1 if any step failed, 2 if no CUDA device is visible):
#   backbone_eager   : ViT-S/16, ViT-B/16, ViT-L/16 at 224 and 512, batch $BATCH, bfloat16 autocast, with peak memory
#   backbone_compile : ViT-L/16 at $COMPILE_RES (torch.compile, one graph per shape: about a minute of compilation
#                      per implementation and shape, hence only the large model)
#   backbone_memory  : peak memory of one ViT-L/16 forward at 1024x1024, batch 1, bfloat16 and float32
#   aggregator       : benchmarks/bench_aggregator.py, depth 24, width 1024, 518x518 frames, frames
#                      2 4 8 16 32 64 100 200, bfloat16 modules and inputs (its flags: --frames S..., --dtype,
#                      --json on stdout). Its SDPA backends are forced by disabling the math and cuDNN backends
#                      globally before it runs (it has no --sdpa flag).
# Then OUT_DIR/report.json combines the environment (nvidia-smi, versions) and every step's JSON. The backbone
# steps rewrite their JSON after every table, so a step cut by its timeout keeps what it measured.
#
# Sizing: no GPU was available when this was written. The default per-step timeouts add up to 590 s so that the
# whole script fits one 10-minute call; they are estimates for an H100/H200. If a step times out, rerun it alone in
# a second call, e.g. `STEPS=backbone_compile benchmarks/gpu.sh OUT_DIR` (report.json is rebuilt from every JSON
# present in OUT_DIR). Environment overrides:
#   PYTHON (python), DEVICE (cuda; "cpu" with SMOKE=1 only checks the plumbing), SMOKE=1 (tiny settings),
#   STEPS ("backbone_eager backbone_compile backbone_memory aggregator"), BATCH (32), REPEATS (10),
#   COMPILE_RES (224), FRAMES ("2 4 8 16 32 64 100 200"), AGG_PATCH_EMBED (dinov2_vitl14_reg), AGG_IMG (518),
#   AGG_PATCH (14), T_EAGER (120), T_COMPILE (210), T_MEMORY (60), T_AGGREGATOR (200) seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${1:-results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-python}"
DEVICE="${DEVICE:-cuda}"
SMOKE="${SMOKE:-0}"
BATCH="${BATCH:-32}"
REPEATS="${REPEATS:-10}"
FRAMES="${FRAMES:-2 4 8 16 32 64 100 200}"
AGG_PATCH_EMBED="${AGG_PATCH_EMBED:-dinov2_vitl14_reg}"
AGG_IMG="${AGG_IMG:-518}"
AGG_PATCH="${AGG_PATCH:-14}"
AGG_DEPTH=24
AGG_DIM=1024
STEPS="${STEPS:-backbone_eager backbone_compile backbone_memory aggregator}"
COMPILE_RES="${COMPILE_RES:-224}"
SDPA="flash,efficient"
RES="224,512"
MEM_RES=1024
MODELS="vits16,vitb16,vitl16"
if [[ "$SMOKE" == "1" ]]; then  # plumbing check on any machine: tiny sizes, few repeats, generous timeouts
  BATCH=1 REPEATS=1 FRAMES="1 2" AGG_PATCH_EMBED=conv AGG_IMG=56 AGG_DEPTH=2 AGG_DIM=64 RES=64 MEM_RES=64
  COMPILE_RES=64 MODELS="vits16"
  : "${T_EAGER:=600}" "${T_COMPILE:=600}" "${T_MEMORY:=600}" "${T_AGGREGATOR:=600}"
fi
T_EAGER="${T_EAGER:-120}" T_COMPILE="${T_COMPILE:-210}" T_MEMORY="${T_MEMORY:-60}" T_AGGREGATOR="${T_AGGREGATOR:-200}"
[[ "$DEVICE" == "cpu" ]] && SDPA="default"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

log() { printf '[%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" | tee -a "$OUT/log.txt"; }
FAILED=()
wanted() { [[ " $STEPS " == *" $1 "* ]]; }
run_step() {  # run_step NAME TIMEOUT CMD... : stdout -> OUT/NAME.out, stderr -> OUT/NAME.err
  local name="$1" limit="$2"; shift 2
  log "start $name (timeout ${limit} s): $*"
  local start=$SECONDS rc=0
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err" || rc=$?
  log "end   $name: rc=$rc after $((SECONDS - start)) s"
  if [[ $rc -ne 0 ]]; then
    FAILED+=("$name")
    tail -n 20 "$OUT/$name.err" | sed 's/^/    /' | tee -a "$OUT/log.txt"
  fi
  return 0
}

log "output directory: $OUT"
if [[ "$DEVICE" == "cuda" ]]; then
  if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    log "no CUDA device visible to torch; nothing run (DEVICE=cpu SMOKE=1 checks the plumbing)"
    exit 2
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1 || true
fi
"$PYTHON" - "$OUT/env.json" <<'EOF'
import json, platform, sys, torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
for mod in ("timm", "transformers"):
    try:
        env[mod] = __import__(mod).__version__
    except ImportError:
        env[mod] = None
json.dump(env, open(sys.argv[1], "w"), indent=2)
EOF
log "environment: $(tr -d '\n' <"$OUT/env.json")"

BACKBONE=("$PYTHON" benchmarks/bench_backbone.py --device "$DEVICE" --sdpa "$SDPA" --repeats "$REPEATS" --warmup 3)
if wanted backbone_eager; then
  run_step backbone_eager "$T_EAGER" "${BACKBONE[@]}" --models "$MODELS" --resolutions "$RES" --batch "$BATCH" \
    --modes eager --dtypes bfloat16 --json "$OUT/backbone_eager.json"
fi
if wanted backbone_compile; then
  run_step backbone_compile "$T_COMPILE" "${BACKBONE[@]}" --models vitl16 --resolutions "$COMPILE_RES" \
    --batch "$BATCH" --modes compile --dtypes bfloat16 --memory none --json "$OUT/backbone_compile.json"
fi
if wanted backbone_memory; then
  run_step backbone_memory "$T_MEMORY" "${BACKBONE[@]}" --models vitl16 --resolutions "$MEM_RES" --batch 1 \
    --dtypes bfloat16,float32 --memory-only --json "$OUT/backbone_memory.json"
fi
if wanted aggregator; then
  # shellcheck disable=SC2086  # FRAMES is a space-separated list on purpose
  run_step aggregator "$T_AGGREGATOR" "$PYTHON" - --frames $FRAMES --depth "$AGG_DEPTH" --embed-dim "$AGG_DIM" \
    --img-size "$AGG_IMG" --patch-size "$AGG_PATCH" --patch-embed "$AGG_PATCH_EMBED" --device "$DEVICE" \
    --dtype bfloat16 --json <<'EOF'
import runpy, sys, torch
if torch.cuda.is_available():  # force the flash / memory-efficient SDPA kernels for the whole run
    torch.backends.cuda.enable_math_sdp(False)
    torch.backends.cuda.enable_cudnn_sdp(False)
sys.argv = ["benchmarks/bench_aggregator.py", *sys.argv[1:]]
runpy.run_path("benchmarks/bench_aggregator.py", run_name="__main__")
EOF
  cp "$OUT/aggregator.out" "$OUT/aggregator.json" 2>/dev/null || true
fi

"$PYTHON" - "$OUT" "${FAILED[@]+"${FAILED[@]}"}" <<'EOF'
import json, pathlib, sys
out, failed = pathlib.Path(sys.argv[1]), sys.argv[2:]
report = {"environment": json.loads((out / "env.json").read_text()), "failed_steps": failed, "steps": {}}
for name in ("backbone_eager", "backbone_compile", "backbone_memory", "aggregator"):
    path = out / f"{name}.json"
    try:
        report["steps"][name] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        report["steps"][name] = {"error": f"{type(exc).__name__}: {exc}"}
(out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
EOF
log "report: $OUT/report.json (tables: $OUT/*.out)"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  log "failed steps: ${FAILED[*]}"
  exit 1
fi
log "all steps passed"
