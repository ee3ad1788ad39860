# sklearn's 8x8 digits as 16x16 grey PNGs in class folders: train/ (first 1,437) and val/ (last 360).
# python docs/make_digits_folder.py [FOLDER]   (default: digits-folder in the current folder)
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

d = load_digits()
root = Path(sys.argv[1] if len(sys.argv) > 1 else "digits-folder")
for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
    part = "train" if i < 1437 else "val"
    folder = root / part / str(label)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (img * (255 / 16)).astype(np.uint8)
    Image.fromarray(pixels, mode="L").resize((16, 16), Image.BILINEAR).save(folder / f"{i:04d}.png")
print(sum(1 for _ in root.rglob("*.png")), "images written to", root)
