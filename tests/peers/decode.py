"""Decodes every barcode in the images given, with zxing-cpp (an independent decoder):
prints one line per symbol, "FORMAT<TAB>TEXT", for the label tests."""
import sys

import zxingcpp
from PIL import Image

for path in sys.argv[1:]:
    for barcode in zxingcpp.read_barcodes(Image.open(path)):
        print(f"{barcode.format.name}\t{barcode.text}")
