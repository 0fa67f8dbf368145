#!/usr/bin/env bash
# One prepared run on a lent GPU machine (Python 3.12 + torch, no nnU-Net). Results go to $OUT.
# PARTS (default "memory objective", about 7 minutes; "compiled" alone, up to 9, as a second call) chooses among:
#   memory    peak CUDA memory on nnU-Net's LA 0.625 mm plans: fake-tensor estimate against measurement
#   memory-beside  the same for nnUNetTrainer and the dual-network trainers (no floors), in the background
#             beside the other parts: "memory-beside compiled" fits one call (about 9 minutes)
#   objective the objective alone at LA 0.625 mm batch size, eager against compiled, with a CUDA profile
#   compiled  AMP + torch.compile step times of CPS and CCE against the two-network floor
#   eager     the same without compile
#   train     a short CCE training through nnUNetv2_train (compile, AMP), killed, resumed with --c,
#             final validation and the stock predictor (done on an H200 in session 1)
#   carry: device_site (site312.tar.xz from ../shared/device/build_nnunet_site.sh, and the plugin wheel)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1  # a part killed by its timeout still leaves what it printed
site=/tmp/s/site312
wheels=(device_site/nnunet_ccesemi-*.whl)
[ -f device_site/site312.tar.xz ] && [ ${#wheels[@]} = 1 ] && [ -f "${wheels[0]}" ] || {
  echo "ERROR: carry device_site/ with site312.tar.xz and exactly one nnunet_ccesemi wheel"; exit 1; }
mkdir -p /tmp/s && tar -xJf device_site/site312.tar.xz -C /tmp/s && python3 -m zipfile -e "${wheels[0]}" "$site" \
  || { echo "ERROR: unpacking device_site failed"; exit 1; }
export PYTHONPATH=$site nnUNet_extTrainer=$site/nnunet_ccesemi/_nnunet_ext
python3 -c "import nnunetv2, blosc2, SimpleITK, nnunet_ccesemi" || { echo "ERROR: the carried site does not import"; exit 1; }
export nnUNet_raw=/tmp/w/raw nnUNet_preprocessed=/tmp/w/pre nnUNet_results=/tmp/w/res nnUNet_n_proc_DA=12
mkdir -p $nnUNet_raw $nnUNet_preprocessed $nnUNet_results
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
entry() { local module=$1 fn=$2; shift 2; python3 -c "import sys; from $module import $fn as m; sys.argv[0]='x'; sys.exit(m())" "$@"; }

PARTS=${PARTS:-memory objective}
part() { [[ " $PARTS " == *" $1 "* ]]; }

memory_rows() {  # ERR_FILE [memory_estimate.py options]
  local err=$1; shift
  echo "== peak CUDA memory on nnU-Net's LA 0.625 mm plans: fake-tensor estimate against measurement =="
  nnUNet_compile=f nnUNet_preprocessed=benchmarks/plans timeout 320 python3 benchmarks/memory_estimate.py -d 602 -c 3d_fullres \
    --measure-cuda "$@" 2>"$err" | grep --line-buffered -v "^20[0-9][0-9]-" || tail -n 20 "$err"
  echo "memory rows done at $(date +%T)"
}
if part memory; then memory_rows "$OUT/memory.err"; fi
if part memory-beside; then
  # The trainers' memory rows (no floors) in the background, while the compiled part plans its dataset and
  # compiles on the CPU: both in one call of the lent machine. They took under 2 minutes on the H200 of
  # 2026-12-04, done before the first compiled row timed its iterations: compare "memory rows done at"
  # with the rows' times. Their output is in memory.txt (and at the end of the log).
  memory_rows "$OUT/memory_beside.err" --no-floor > "$OUT/memory.txt" 2>&1 &
  memory_pid=$!
  trap 'wait $memory_pid; cat "$OUT/memory.txt"' EXIT
fi
if part objective; then
  echo "== the objective alone, 2+2 patches of 96x128x192, 32 feature channels =="
  timeout 120 python3 benchmarks/objective_time.py --shape 4 2 96 128 192 --features 32 --device cuda --profile \
    2>"$OUT/objective.err" || tail -n 20 "$OUT/objective.err"
fi
part compiled || part eager || part train || exit 0

# LA-sized synthetic data: 1.25 mm LA volumes are about 44x72x93 voxels
python3 -c "
from nnunet_ccesemi.data.synthetic import SyntheticSpec, write_synthetic_dataset
write_synthetic_dataset('$nnUNet_raw', 991, 'GpuCheck', SyntheticSpec(n_labeled=8, n_unlabeled=16, n_test=2, shape=(48, 80, 96), spacing=(1.25, 1.25, 1.25)))"
entry nnunetv2.experiment_planning.plan_and_preprocess_entrypoints plan_and_preprocess_entry -d 991 -c 3d_fullres -np 8 > "$OUT/plan.log" 2>&1
entry nnunet_ccesemi.cli.preprocess_unlabeled main -d 991 -c 3d_fullres -np 8 > "$OUT/unlabeled.log" 2>&1
tail -n 2 "$OUT/unlabeled.log"

if part compiled; then
  echo "== step times, AMP + torch.compile (networks and objective; warm-up absorbs compilation), from $(date +%T) =="
  # after the floor, CCE before CPS (COMPILED_TRAINERS): the H200 of 2026-12-04 timed CPS but ran out of time
  # compiling CCE
  timeout 480 python3 benchmarks/step_time.py -d 991 -c 3d_fullres --iterations 30 --warmup 8 --device cuda \
    --trainers ${COMPILED_TRAINERS:-nnUNetTrainerCCE nnUNetTrainerCPS} 2>"$OUT/bench_compiled.err" | grep --line-buffered -v "^20[0-9][0-9]-" \
    || tail -n 20 "$OUT/bench_compiled.err"
fi
if part eager; then
  echo "== step times, AMP, eager =="
  nnUNet_compile=f timeout 240 python3 benchmarks/step_time.py -d 991 -c 3d_fullres --iterations 20 --warmup 5 \
    --device cuda 2>"$OUT/bench.err" | grep --line-buffered -v "^20[0-9][0-9]-" || tail -n 20 "$OUT/bench.err"
fi
part train || exit 0
echo "== nnUNetv2_train nnUNetTrainerCCE_5epochs (compile, AMP): killed after a checkpoint, then --c =="
timeout 150 python3 - <<'PY'
import subprocess, sys, time, os, signal
args = [sys.executable, "-c", "import sys; from nnunetv2.run.run_training import run_training_entry as m; sys.argv[0]='t'; m()",
        "991", "3d_fullres", "all", "-tr", "nnUNetTrainerCCE_5epochs"]
p = subprocess.Popen(args, stdout=open(os.environ.get("OUT", "/tmp/out") + "/train1.log", "w"), stderr=subprocess.STDOUT,
                     start_new_session=True)
ckpt = os.environ["nnUNet_results"] + "/Dataset991_GpuCheck/nnUNetTrainerCCE_5epochs__nnUNetPlans__3d_fullres/fold_all/checkpoint_latest.pth"
import torch
t0 = time.time()
while p.poll() is None and time.time() - t0 < 140:
    if os.path.exists(ckpt) and torch.load(ckpt, weights_only=False, map_location="cpu")["current_epoch"] >= 1:
        break
    time.sleep(1)
if p.poll() is None:
    os.killpg(p.pid, signal.SIGKILL)
p.wait()
print("killed after", round(time.time() - t0), "s; checkpoint epoch", torch.load(ckpt, weights_only=False, map_location="cpu")["current_epoch"])
PY
grep -E "Epoch time|semi-supervised|compile" "$OUT/train1.log" | tail -n 6
timeout 170 bash -c 'entry() { python3 -c "import sys; from $1 import $2 as m; sys.argv[0]=\"x\"; sys.exit(m())" "${@:3}"; }
entry nnunetv2.run.run_training run_training_entry 991 3d_fullres all -tr nnUNetTrainerCCE_5epochs --c > "$OUT/train2.log" 2>&1'
grep -E "Epoch [0-9]|Epoch time|Mean Validation Dice|Error|error" "$OUT/train2.log" | tail -n 14
python3 - <<'PY'
import torch, os
f = os.environ["nnUNet_results"] + "/Dataset991_GpuCheck/nnUNetTrainerCCE_5epochs__nnUNetPlans__3d_fullres/fold_all/checkpoint_final.pth"
if os.path.exists(f):
    c = torch.load(f, weights_only=False, map_location="cpu")
    print("final checkpoint: epoch", c["current_epoch"], "scaler", c["grad_scaler_state"] is not None,
          "keys", sorted(k for k in c if "weights" in k), "first key", next(iter(c["network_weights"])))
PY
echo "== stock predictor =="
timeout 60 bash -c 'python3 -c "import sys; from nnunetv2.inference.predict_from_raw_data import predict_entry_point as m; sys.argv[0]=\"x\"; m()" -i $nnUNet_raw/Dataset991_GpuCheck/imagesTs -o /tmp/w/pred -d 991 -c 3d_fullres -f all -tr nnUNetTrainerCCE_5epochs > "$OUT/predict.log" 2>&1; ls /tmp/w/pred'
