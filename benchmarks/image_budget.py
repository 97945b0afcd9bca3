"""What one large photo costs a worker process: the measure behind FACEPIPE_MAX_IMAGE_PIXELS.

    .venv/bin/python benchmarks/image_budget.py                       # 12, 48 and 120 MP, JPEG and PNG (~5 min)
    .venv/bin/python benchmarks/image_budget.py --megapixels 120 --formats jpg --min-face-size 32,160

Each photo is a grey canvas of N megapixels, 6:5 (12,000 x 10,000 at 120 MP), with four copies
of ../shared/faces/images/img1.jpg pasted in a row (faces of 666 px, smaller where they would not
fit), written once to a temporary folder. Each is digested by `faces_in_chunk` (read, decode,
detect, align, embed with the dlib profile), alone in a fresh process that has loaded the models
first, as a worker has; its peak RSS (VmHWM, Linux) before and after the photo is printed, with
the time.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACE = REPO.parent / "shared" / "faces" / "images" / "img1.jpg"

CHILD = """
import json, sys, time
from facepipe.engine.faces import faces_in_chunk
from facepipe.engine.planning import ImageTask
from facepipe.engine.profiles import load_profile

def peak_mb():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) / 1024

load_profile("dlib")
before = peak_mb()
start = time.perf_counter()
image = faces_in_chunk([ImageTask(sys.argv[1])], "dlib", 0.5, min_face_size=int(sys.argv[2])).images[0]
print(json.dumps({"error": image.error, "faces": len(image.faces), "seconds": time.perf_counter() - start,
                  "models_mb": before, "peak_mb": peak_mb()}))
"""


def make_photo(folder: Path, megapixels: int, fmt: str) -> Path:
    from PIL import Image

    height = int((megapixels * 1e6 / 1.2) ** 0.5)
    width = int(megapixels * 1e6 / height)
    canvas = Image.new("RGB", (width, height), (120, 120, 120))
    face: Image.Image = Image.open(FACE)
    if 4 * (face.width + 100) > width:  # four side by side, scaled down to fit
        face = face.resize(((width - 400) // 4, (width - 400) // 4 * face.height // face.width))
    for i in range(4):
        canvas.paste(face, (i * (face.width + 100), (height - face.height) // 2))
    path = folder / f"{megapixels}mp.{fmt}"
    canvas.save(path, quality=90) if fmt == "jpg" else canvas.save(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megapixels", default="12,48,120")
    parser.add_argument("--formats", default="jpg,png")
    parser.add_argument("--min-face-size", default="32", help="the default preset's 32; 160 is portraits")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for megapixels in map(int, args.megapixels.split(",")):
            for fmt in args.formats.split(","):
                path = make_photo(Path(folder), megapixels, fmt)
                for size in args.min_face_size.split(","):
                    run = subprocess.run(
                        [sys.executable, "-c", CHILD, str(path), size],
                        capture_output=True,
                        text=True,
                        check=True,
                        cwd=REPO,
                    )
                    measured = json.loads(run.stdout)
                    rows.append((megapixels, fmt, size, measured))
                    print(
                        json.dumps({"megapixels": megapixels, "format": fmt, "min_face_size": size, **measured}),
                        file=sys.stderr,
                    )
    print("| photo | min_face_size | faces | time | peak RSS of the process | of which the photo |")
    print("|---|---|---|---|---|---|")
    for megapixels, fmt, size, m in rows:
        print(
            f"| {megapixels} MP {fmt.upper()} | {size} | {m['faces']} | {m['seconds']:.1f} s | {m['peak_mb']:.0f} MB "
            f"| {m['peak_mb'] - m['models_mb']:.0f} MB |"
        )


if __name__ == "__main__":
    main()
