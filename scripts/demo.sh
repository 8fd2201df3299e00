#!/usr/bin/env bash
# Set up (if needed), write a few sample photos from scikit-image's bundled data into samples/,
# and upscale them x4 with the bundled default model into out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
cd "$root"
.venv/bin/python - <<'PY'
from pathlib import Path

from PIL import Image
from skimage import data

out = Path("samples")
out.mkdir(exist_ok=True)
# small crops, downscaled, so the x4 result is easy to compare with the photo it came from
for name, box in [("astronaut", (100, 0, 356, 256)), ("coffee", (150, 100, 406, 356)), ("chelsea", (80, 20, 336, 276))]:
    img = Image.fromarray(getattr(data, name)()).crop(box)
    img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(out / f"{name}.png")
# and one as a phone or a web page stores it: JPEG at quality 40
img = Image.fromarray(data.astronaut()).crop((256, 200, 512, 456))
img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(out / "astronaut-jpeg40.jpg", quality=40)
print(f"wrote {len(list(out.iterdir()))} sample images to {out.resolve()} (astronaut-jpeg40.jpg: JPEG at quality 40)")
PY
.venv/bin/hrx upscale samples -o out
echo "results are in $root/out (inputs in $root/samples)"
